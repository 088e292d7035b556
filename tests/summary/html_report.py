"""Read a report.html back as a reader sees it: its tables (by id or heading order), links and images."""

from __future__ import annotations

from html.parser import HTMLParser


class ReportParser(HTMLParser):
    """Tables as lists of rows of cell texts (header row first), every <a href> and every <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []  # {"id": ..., "rows": [[cell, ...], ...]}
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self.tables.append({"id": attrs.get("id", ""), "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html)
    return parser


def table(parser: ReportParser, id: str) -> list[dict[str, str]]:
    """The table with this id as one {header: cell} dict per body row."""
    [found] = [t for t in parser.tables if t["id"] == id]
    headers, *rows = found["rows"]
    return [dict(zip(headers, row)) for row in rows]
