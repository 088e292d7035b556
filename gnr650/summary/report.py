"""report.html and summary.md from one document: what was run, a table of contents, then the sections.

The page is self-contained: figures are embedded as downscaled, palette-quantised data URIs (each linking to its
full-resolution PNG beside the page) and there is no external resource (the attention explorer's script and data
are inline), so it opens from disk (file://) with no server and no network. summary.md is its markdown twin: the
same header, sections, tables (long ones in full) and figures (linked by file name).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field

from PIL import Image

from gnr650.summary.tables import MISSING, Table, markdown

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1140px; padding: 0 1rem; color: #222;
  line-height: 1.45; }
h1 { font-size: 1.45rem; margin-bottom: 0.5rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
  border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; } h3 { font-size: 1rem; margin-top: 1.4rem; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; font-size: 0.9rem;
  background: #f7f7f7; padding: 0.7rem 1rem; border: 1px solid #e3e3e3; }
dl.header dt { font-weight: 600; color: #444; } dl.header dd { margin: 0; }
nav.toc ol { columns: 2; font-size: 0.9rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:not(.text) { white-space: nowrap; } .text { text-align: left; }
tr.failed td { background: #fde8e8; color: #8a1c1c; }
tr.warned td { background: #fff4d6; color: #6b4a00; }
details { margin: 0.6rem 0; } summary { cursor: pointer; color: #1a4d8f; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; margin-top: 0.3rem; }
ul.links { columns: 2; font-size: 0.9rem; }
"""
EMBED_WIDTH = 1100  # px: the page's content width; wider figures are downscaled for embedding
EMBED_COLOURS = 128  # palette size of embedded figures: plots and heatmaps stay legible, the bytes shrink ~3x
NUMERIC = re.compile(r"^[-+−]?[\d.,]+")


@dataclass
class FigureEntry:
    """A written figure: its path relative to the report, caption and full-resolution PNG bytes."""

    name: str
    caption: str
    png: bytes


@dataclass
class Paragraphs:
    """Statements: a bullet list (``bullets``) or plain paragraphs."""

    lines: list[str]
    bullets: bool = True


@dataclass
class TableBlock:
    """A table under an optional heading; ``collapsed``: inside a closed <details> in the page."""

    table: Table
    heading: str = ""
    collapsed: bool = False
    id: str = ""


@dataclass
class Links:
    """A list of (text, relative href) links after an introductory sentence."""

    intro: str
    links: list[tuple[str, str]]


@dataclass
class RawHtml:
    """A fragment that carries its own markup and script (the attention explorer); ``markdown``: what summary.md
    says in its place."""

    html: str
    markdown: str


@dataclass
class Section:
    """A top-level section: its heading (also its table-of-contents entry and anchor) and its blocks."""

    heading: str
    blocks: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return slug(self.heading)


@dataclass
class Document:
    """A report: its title, the header rows saying what was run, the sections in order."""

    title: str
    header: list[tuple[str, str]]
    sections: list[Section]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def embedded_png(png: bytes, max_width: int = EMBED_WIDTH) -> bytes:
    """A lighter copy of a figure for the page: at most ``max_width`` px wide and palette-quantised."""
    image = Image.open(io.BytesIO(png)).convert("RGB")  # matplotlib draws on an opaque white face
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(EMBED_COLOURS, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _numeric_columns(table: Table) -> list[bool]:
    """Columns whose every shown value starts like a number: right-aligned; the rest left-aligned."""
    columns = list(zip(*table.rows)) if table.rows else [()] * len(table.headers)
    return [bool(values) and all(NUMERIC.match(v) or v == MISSING for v in values) for values in columns]


def _cell_html(text: str, href: str | None) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>' if href else html.escape(text)


def html_table(table: Table, id: str = "") -> str:
    """Numbers right-aligned, text left-aligned, failed and warned rows marked, linked cells as links."""
    align = ["" if numeric else ' class="text"' for numeric in _numeric_columns(table)]
    head = "".join(f"<th{a}>{html.escape(h)}</th>" for a, h in zip(align, table.headers))
    rows = []
    warned = table.warned or [False] * len(table.rows)
    for r, (cells, failed, warning) in enumerate(zip(table.rows, table.failed, warned)):
        tds = "".join(
            f"<td{a}>{_cell_html(c, table.links.get(i, [None] * len(table.rows))[r])}</td>"
            for i, (a, c) in enumerate(zip(align, cells))
        )
        mark = ' class="failed"' if failed else ' class="warned"' if warning else ""
        rows.append(f"<tr{mark}>{tds}</tr>")
    ident = f' id="{html.escape(id)}"' if id else ""
    return (
        f'<div class="table-wrap"><table{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _figure_html(fig: FigureEntry) -> str:
    data = base64.b64encode(embedded_png(fig.png)).decode("ascii")
    name, caption = html.escape(fig.name), html.escape(fig.caption)
    return (
        f'<figure id="{slug(fig.name)}"><a href="{name}"><img src="data:image/png;base64,{data}" alt="{caption}"></a>'
        f'<figcaption>{caption} <a href="{name}">Full resolution</a>.</figcaption></figure>'
    )


def _block_html(block) -> str:
    if isinstance(block, FigureEntry):
        return _figure_html(block)
    if isinstance(block, Paragraphs):
        if block.bullets:
            return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in block.lines) + "</ul>"
        return "".join(f"<p>{html.escape(line)}</p>" for line in block.lines)
    if isinstance(block, RawHtml):
        return block.html
    if isinstance(block, Links):
        items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>' for text, href in block.links)
        return f'<p>{html.escape(block.intro)}</p><ul class="links">{items}</ul>'
    table = html_table(block.table, block.id)
    if block.collapsed:
        rows = len(block.table.rows)
        return f"<details><summary>{html.escape(block.heading)} ({rows} rows)</summary>{table}</details>"
    return (f"<h3>{html.escape(block.heading)}</h3>" if block.heading else "") + table


def render_html(doc: Document) -> str:
    """The page: title, header, table of contents, sections."""
    title = html.escape(doc.title)
    header = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in doc.header)
    toc = "".join(f'<li><a href="#{s.id}">{html.escape(s.heading)}</a></li>' for s in doc.sections)
    body = [
        f"<h1>{title}</h1>",
        f'<dl class="header">{header}</dl>',
        f'<nav class="toc"><h2>Contents</h2><ol>{toc}</ol></nav>',
    ]
    for section in doc.sections:
        blocks = "".join(_block_html(b) for b in section.blocks)
        body.append(f'<section id="{section.id}"><h2>{html.escape(section.heading)}</h2>{blocks}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{title}</title><style>{STYLE}</style></head>'
        f"<body>{''.join(body)}</body></html>\n"
    )


def _block_markdown(block) -> str:
    if isinstance(block, FigureEntry):
        return f"![{block.caption}]({block.name})"
    if isinstance(block, Paragraphs):
        return "\n".join(f"- {line}" for line in block.lines) if block.bullets else "\n\n".join(block.lines)
    if isinstance(block, RawHtml):
        return block.markdown
    if isinstance(block, Links):
        return block.intro + "\n" + "\n".join(f"- [{text}]({href})" for text, href in block.links)
    table = block.table
    if table.links:  # link cells as markdown links
        rows = [
            [
                f"[{c}]({table.links[i][r]})" if table.links.get(i, [None] * len(table.rows))[r] else c
                for i, c in enumerate(cells)
            ]
            for r, cells in enumerate(table.rows)
        ]
        table = Table(table.headers, rows, table.failed, table.warned)
    return (f"### {block.heading}\n\n" if block.heading else "") + markdown(table)


def render_markdown(doc: Document) -> str:
    """summary.md: the page's twin (long tables in full, figures by file name)."""
    parts = [f"# {doc.title}", "\n".join(f"- **{k}**: {v}" for k, v in doc.header)]
    for section in doc.sections:
        parts.append(f"## {section.heading}")
        parts += [_block_markdown(b) for b in section.blocks]
    return "\n\n".join(p for p in parts if p) + "\n"
