"""The report's index: sections (heading, text, bullet items, images, tables, files) as Markdown and HTML."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.output import markdown

STYLE = (
    "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:12px}"
    "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style>"
)


@dataclass
class Section:
    """One part of the index: a heading, paragraphs, bullet items, images (with files) and tables."""

    title: str
    text: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (png name, caption)
    files: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)


def write_index(sections: list[Section], out: Path) -> None:
    """``index.md`` and ``index.html`` from the sections."""
    md = ["# Pruning report", ""]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Pruning report</title>",
        STYLE,
        "</head><body><h1>Pruning report</h1>",
    ]
    for s in sections:
        md += [f"## {s.title}", ""]
        page.append(f"<h2>{html.escape(s.title)}</h2>")
        for t in s.text:
            md += [t, ""]
            page.append(f"<p>{_inline(t)}</p>")
        if s.items:
            md += [f"- {i}" for i in s.items] + [""]
            page.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in s.items) + "</ul>")
        for png, caption in s.images:
            md += [f"![{caption}]({png})", ""]
            page.append(f"<p><img src='{html.escape(png)}' alt='{html.escape(caption)}'></p>")
        for table in s.tables:
            md += [markdown(table), ""]
            page.append(table.to_html(index=False, escape=True, border=0))
        if s.files:
            md += ["Files: " + ", ".join(f"[{f}]({f})" for f in s.files), ""]
            page.append(
                "<p>Files: " + ", ".join(f"<a href='{html.escape(f)}'>{html.escape(f)}</a>" for f in s.files) + "</p>"
            )
    page.append("</body></html>")
    (out / "index.md").write_text("\n".join(md))
    (out / "index.html").write_text("\n".join(page))


def _inline(text: str) -> str:
    """Escaped HTML of a line of Markdown with **bold** and `code`."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
