"""Values as markdown that shows them literally, for the report's text.

Any value the report does not make itself can be hostile: a registry user writes a model version's tags, and
the champion gate's decision quotes them; folder names become class names. Written through these helpers a
value opens no HTML element, link, image, code span, table cell or block, both in the markdown that
ddpm.report.html renders and in a CommonMark/GFM viewer of report.md.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

# Python-Markdown uses STX/ETX around placeholders of the HTML it has set aside; other control characters show
# nothing. Tab is kept: it is whitespace.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Backslash-escaped: what opens a link or image ([ ]), a code span (`), a table cell (|), and the backslash itself.
# `!` needs no escape once `[` has one; `*` and `_` only make emphasis, and `_` is in most identifiers.
_MARKDOWN_SIGNIFICANT = re.compile(r"([\\`\[\]|])")
# a pipe splits a GFM table cell even inside a code span; line breaks as str.splitlines knows them
_NOT_IN_A_CODE_SPAN = re.compile(r"[`|\x00-\x1f\x7f\x85\u2028\u2029]")


def md_text(value: Any) -> str:
    """`value` as inline markdown text: on one line (a line break could start a heading or a raw HTML block),
    `&` and `<` as entities (they open HTML and autolinks), and the rest of what markdown reads backslash-escaped."""
    one_line = " ".join(_CONTROL.sub("", str(value)).splitlines())
    return _MARKDOWN_SIGNIFICANT.sub(r"\\\1", one_line.replace("&", "&amp;").replace("<", "&lt;"))


def md_code(value: Any) -> str:
    """`value` as a code span (hashes, ids, URIs), or as md_text where a code span could not hold it literally."""
    text = str(value)
    if not text.strip() or _NOT_IN_A_CODE_SPAN.search(text):
        return md_text(text)
    return f"`{text}`"


def md_link(label: str, url: str | None) -> str:
    """A link with markdown `label` to an http(s) `url`, percent-encoded where the URL could end the link or
    its attribute; `label` alone for anything else (a javascript: or data: URL is never a link)."""
    if not url or not re.match(r"https?://", url):
        return label
    return f"[{label}]({quote(url, safe=':/?#@!$&+,;=%-._~*')})"
