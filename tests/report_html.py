"""The bisect report (report.html) read as a document with html.parser, the way a reader relies
on it: the title, the summary table's answer, the probes table (one row per probe, its verdict as
text and as the row's class), the console excerpts, the headings, and every link."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class Document(HTMLParser):
    """The parts of report.html a reader relies on: the title, the tables (rows of cells, each
    cell its tag, attributes and text), every element id, and every link."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.tables: list[list[dict]] = []  # each row: {"attrs": {...}, "cells": [(tag, attrs, text)]}
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.headings: list[tuple[str, int]] = []  # (text, index into `blocks`)
        self.blocks: list[str] = []  # <pre> texts, in order
        self._stack: list[str] = []
        self._text: list[str] | None = None
        self._cell: tuple[str, dict] | None = None
        self._heading: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if key in a:
                self.links.append(a[key])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append({"attrs": a, "cells": []})
        elif tag in ("td", "th") and self.tables and self.tables[-1]:
            self._cell, self._text = (tag, a), []
        elif tag in ("pre", "title"):
            self._text = []
        elif tag in ("h1", "h2"):
            self._heading = []
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._text or []).split())
            self.tables[-1][-1]["cells"].append((self._cell[0], self._cell[1], text))
            self._cell, self._text = None, None
        elif tag == "pre" and self._text is not None:
            self.blocks.append("".join(self._text))
            if self._cell is None:
                self._text = None
        elif tag == "title" and self._text is not None:
            self.title, self._text = "".join(self._text).strip(), None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append((" ".join("".join(self._heading).split()), len(self.blocks)))
            self._heading = None
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)
        if self._heading is not None:
            self._heading.append(data)

    def table_with(self, *header: str) -> list[dict]:
        """The table whose first row's header cells start with `header`."""
        for t in self.tables:
            if t and [c[2] for c in t[0]["cells"]][: len(header)] == list(header):
                return t
        raise AssertionError(f"no table with header {header}")


def summary(doc: Document) -> dict[str, str]:
    """The report's first table: each row's header and value."""
    return {row["cells"][0][2]: row["cells"][1][2] for row in doc.tables[0] if len(row["cells"]) == 2}


def probe_rows(doc: Document) -> list[tuple[str, str, str, str]]:
    """(row class, kernel, phase, verdict) of each probe row, in order; the excerpt rows after a
    probe (one wide cell holding a <pre>) are not probes."""
    rows = doc.table_with("#", "kernel", "phase", "verdict")[1:]
    return [(r["attrs"].get("class", ""), r["cells"][1][2], r["cells"][2][2], r["cells"][3][2])
            for r in rows if len(r["cells"]) >= 8]


def assert_links_resolve(doc: Document, report: Path) -> None:
    """Every href/src leads somewhere: a fragment to an element of the page, a relative path to a
    file beside the report; nothing points off the machine."""
    for link in doc.links:
        assert not link.startswith(("http:", "https:", "//")), f"report links off the machine: {link}"
        target, _, fragment = link.partition("#")
        if target:
            assert (report.parent / target).exists(), f"dangling link {link} in {report}"
        elif fragment:
            assert fragment in doc.ids, f"link {link} names no element of the page"
