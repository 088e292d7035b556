"""report.html: one self-contained page, table first, then the figures with captions.

Images are embedded as data URIs and the page has no script and no external
resource, so it opens from disk (file://) with no server and no network, and can
be mailed or archived as a single file.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from gnr650.summary.tables import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
p.meta { color: #555; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } .text { text-align: left; }
tr.failed td { background: #fde8e8; color: #8a1c1c; }
tr.warned td { background: #fff4d6; color: #6b4a00; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9rem; margin-top: 0.3rem; }
"""
TEXT_COLUMNS = {"Model", "Status"}


@dataclass
class FigureEntry:
    """A written figure: its file name in the multirun directory, caption and PNG bytes."""

    name: str
    caption: str
    png: bytes


def html_table(table: Table) -> str:
    """Numbers right-aligned, the label and status columns left-aligned, failed and warned rows marked."""
    align = [' class="text"' if h in TEXT_COLUMNS else "" for h in table.headers]
    head = "".join(f"<th{a}>{html.escape(h)}</th>" for a, h in zip(align, table.headers))
    rows = []
    warned = table.warned or [False] * len(table.rows)
    for cells, failed, warning in zip(table.rows, table.failed, warned):
        tds = "".join(f"<td{a}>{html.escape(c)}</td>" for a, c in zip(align, cells))
        mark = ' class="failed"' if failed else ' class="warned"' if warning else ""
        rows.append(f"<tr{mark}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figure(fig: FigureEntry) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure id="{html.escape(fig.name)}"><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(fig.caption)}"><figcaption>{html.escape(fig.caption)}</figcaption></figure>'
    )


def render(
    title: str,
    meta: list[str],
    tables: list[tuple[str, Table]],
    figures: list[FigureEntry],
    sections: list[tuple[str, list[str], list[tuple[str, Table]], list[FigureEntry]]] = (),
) -> str:
    """The page; ``sections``: (heading, statements, tables, figures) after the figures (e.g. "What changed")."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="meta">{html.escape(line)}</p>' for line in meta]
    for heading, table in tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", html_table(table)]
    if figures:
        parts.append("<h2>Figures</h2>")
    parts += [_figure(fig) for fig in figures]
    for heading, lines, section_tables, section_figures in sections:
        parts.append(f'<section id="{html.escape(heading.lower().replace(" ", "-"))}"><h2>{html.escape(heading)}</h2>')
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>" if lines else "")
        for sub, table in section_tables:
            parts += [f"<h3>{html.escape(sub)}</h3>", html_table(table)]
        parts += [_figure(fig) for fig in section_figures]
        parts.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{STYLE}</style></head>'
        f"<body>{''.join(parts)}</body></html>\n"
    )
