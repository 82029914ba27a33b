"""The documentation's relative links and #anchors resolve: every [text](target) and ![alt](target) in
README.md, CONTRIBUTING.md, SECURITY.md and docs/*.md names a file that exists and, after '#', a heading of
that file (GitHub's anchors: lowercase, punctuation dropped but for '-' and '_', spaces to '-', a repeated
heading gets -1, -2, ...). Links to http(s) and mailto are not followed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)[^)]*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(path: Path) -> str:
    """The file's text without fenced code blocks (their '#' lines and brackets are not markdown)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(path)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(INLINE_CODE.sub("", prose(path)))


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"(https?|mailto):", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return broken


def test_slugs_follow_github():
    assert slug("Cost of a no-op `dvc repro`") == "cost-of-a-no-op-dvc-repro"
    assert slug("2026-11-27 — autoguidance, at N = 1,000") == "2026-11-27--autoguidance-at-n--1000"
    assert slug("Profile `mnist-cond` (classifier-free guidance)") == "profile-mnist-cond-classifier-free-guidance"


def test_a_repeated_heading_gets_a_number(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Runs\n\n```\n# not a heading\n```\n\n## Runs\n\n## Runs\n", encoding="utf-8")
    assert anchors(page) == {"runs", "runs-1", "runs-2"}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []
