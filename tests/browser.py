"""Headless Chromium for the report tests: the DOM after rendering (`--dump-dom`) and screenshots.

Debian's `chromium` (installed by setup.sh) started as the issue says: `--headless --no-sandbox
--disable-gpu` with an empty `--user-data-dir` per call, so no profile, extension or earlier
state reaches the page. A missing browser is a failure in CI and a skip elsewhere that names the
checked fact (`which chromium` failing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import in_ci

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]


def chromium() -> str:
    """The chromium binary, or fail (CI) / skip (elsewhere) naming why."""
    path = shutil.which("chromium")
    if path is None:
        why = "`which chromium` failed: Debian's chromium package is not installed (./setup.sh installs it)"
        (pytest.fail if in_ci() else pytest.skip)(why)
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="kbisect-chromium-") as profile:
        proc = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def dump_dom(page: Path) -> str:
    """The page's DOM as Chromium serialises it after loading and rendering it."""
    return _run(["--dump-dom", Path(page).resolve().as_uri()]).stdout


def screenshot(page: Path, png: Path, size: str = "1280,2000") -> Path:
    """A PNG of the page at `size`, kept at `png` and copied to $KBISECT_TEST_ARTEFACTS when set."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={png}", f"--window-size={size}", Path(page).resolve().as_uri()])
    assert png.is_file() and png.stat().st_size > 10_000, f"no screenshot at {png}"
    kept = [png]
    if os.environ.get("KBISECT_TEST_ARTEFACTS"):
        extra = Path(os.environ["KBISECT_TEST_ARTEFACTS"])
        extra.mkdir(parents=True, exist_ok=True)
        kept.append(Path(shutil.copy2(png, extra / png.name)))
    print("screenshot:", *kept)
    return png


class Elements(HTMLParser):
    """Every element of a DOM dump as (tag, attributes), and the text of each element with an id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text_of: dict[str, str] = {}
        self._open: list[tuple[str, str | None, list[str]]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        if tag not in ("br", "meta", "img", "input", "link", "circle", "line"):
            self._open.append((tag, a.get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, ident, parts = self._open.pop()
            if ident:
                self.text_of[ident] = " ".join("".join(parts).split())
            if self._open:
                self._open[-1][2].extend(parts)
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)

    def with_class(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and cls in a.get("class", "").split()]

    def hrefs(self) -> list[str]:
        return [a["href"] for _, a in self.elements if "href" in a]
