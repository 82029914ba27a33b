"""The report as one self-contained HTML page, from its markdown."""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path
from xml.etree.ElementTree import Element

from markdown import Markdown
from markdown.treeprocessors import Treeprocessor

from ddpm.errors import DataError


def embedded_image(base: Path, src: str) -> str:
    """The figure at `src` (relative to `base`) as a data: URI. Only a file under `base` once symlinks are
    resolved: a path that leaves it (`..`, an absolute path, a link to /proc/self/environ) would put that file
    into a page that is mailed and uploaded to MLflow."""
    root = base.resolve()
    path = (root / src).resolve()
    if "://" in src or src.startswith("data:") or not path.is_relative_to(root) or not path.is_file():
        raise DataError(f"report image {src!r} is not a file under {base}: write the figure before the report "
                        "(the report embeds every image)")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


class _EmbedImages(Treeprocessor):
    def __init__(self, md: Markdown, base: Path):
        super().__init__(md)
        self.base = base

    def run(self, root: Element) -> None:
        for image in root.iter("img"):
            image.set("src", embedded_image(self.base, image.get("src", "")))


def _renderer(base: Path) -> Markdown:
    """Markdown with tables and fenced code that writes raw HTML and <http://...> autolinks as text: the report's
    own markdown has neither, so any that appears came from a value (ddpm.report.escape writes values so that
    none can, and this holds where a value was not written through it)."""
    md = Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")
    for pattern in ("html", "autolink", "automail"):
        md.inlinePatterns.deregister(pattern)
    md.treeprocessors.register(_EmbedImages(md, base), "embed_images", 5)  # after the inline patterns made the <img>s
    return md


def render_html(markdown_text: str, base_dir: str | Path, title: str = "DDPM run report") -> str:
    """The same report as one standalone HTML page: every image inlined as a data: URI, no external
    stylesheet, script or font, so that it opens as a mail attachment and in MLflow's artifact view."""
    body = _renderer(Path(base_dir)).convert(markdown_text)
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem}"
             "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:1rem;overflow:auto}"
             # the grid is one pixel per pixel: shown larger, its pixels kept sharp
             'img[alt="samples"]{width:min(100%,30rem);image-rendering:pixelated}')
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n{body}\n</body></html>\n")
