"""Reads the report back, as a person sees it: its tables (markdown or HTML) and the numbers in its text."""

import html as html_lib
import re
from html.parser import HTMLParser

# A number as prose shows it: not part of a word, an identifier (x_0, sha256, v1) or a longer number.
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")


class _Tables(HTMLParser):
    """<table> rows as lists of cells, each cell written back as markdown (`code`, [text](href))."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None
        self.href = ""

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif self.cell is not None and tag == "code":
            self.cell.append("`")
        elif self.cell is not None and tag == "a":
            self.cell.append("[")
            self.href = dict(attrs)["href"]
        elif self.cell is not None and tag == "strong":
            self.cell.append("**")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None
        elif self.cell is not None and tag == "code":
            self.cell.append("`")
        elif self.cell is not None and tag == "a":
            self.cell.append(f"]({self.href})")
        elif self.cell is not None and tag == "strong":
            self.cell.append("**")

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(re.fullmatch(r"-+", c) for c in cells):
                continue
            if current is None:
                current = []
                tables.append(current)
            current.append(cells)
        else:
            current = None
    return tables


def report_tables(text: str, *, html: bool) -> dict[str, list[list[str]]]:
    """The report's tables by their first column's heading ("metric", "sampler", ...), header row dropped."""
    tables = _markdown_tables(text) if not html else _parsed(text)
    return {table[0][0]: table[1:] for table in tables}


def _parsed(text: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(text)
    return parser.tables


def numbers_outside_code(text: str, *, html: bool) -> list[str]:
    """Every number the page shows as text, leaving out code (hashes, ids, timestamps) and link targets."""
    if html:
        text = re.sub(r"<code>.*?</code>", " ", text, flags=re.S)
        text = re.sub(r"<style>.*?</style>", " ", text, flags=re.S)
        text = html_lib.unescape(re.sub(r"<[^>]+>", " ", text))
    else:
        text = re.sub(r"`[^`]*`", " ", text)
        text = re.sub(r"\]\([^)]*\)", "]", text)
    return NUMBER.findall(text)
