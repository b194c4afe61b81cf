"""Every response from a mirror is read within a bound (issue 20, "Inputs without a bound").

A mirror whose index page never ends was read whole (2.8 GB, then "no reachable kernel", exit 0),
and a .deb announcing 2 GB was written (600 MB of it) before its hash was checked. Each answer is
now capped by what its format can hold (cache.SMALL for index pages, CHECKSUMS and status files,
cache.PACKAGE for packages) and by a total time, through one helper (cache.bounded_body), and
refused with one line, leaving nothing written.

The mirrors here are local HTTP servers on 127.0.0.1 (tests/localhttp.py) that answer with an
endless body, an announced size far over the cap, or a body dripped slower than any per-read
timeout notices. A mirror that is not http(s) (file://) is refused in words, not "InvalidSchema".
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator.adapters import cache
from orchestrator.core.errors import KbisectError, SourceUnreachable
from tests.localhttp import serve_handler
from tests.mainline_mirror import Build, Release, abi, placeholder_debs, write_release, write_top

REPO = Path(__file__).resolve().parent.parent
STAMP = "202006082127"
ROW = b'<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="v9.9/">v9.9/</a></td></tr>\n'


class Hostile(http.server.SimpleHTTPRequestHandler):
    """Serves a mirror tree, except what the server's `mode` makes hostile:
    "endless-index": the top index page never ends (no Content-Length, rows forever);
    "huge-deb": every .deb announces 2 GiB and sends zeros until the client goes;
    "endless-deb": every .deb sends zeros forever with no Content-Length;
    "drip-deb": every .deb sends one byte each 50 ms."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        mode = self.server.mode
        deb = self.path.endswith(".deb")
        if mode == "endless-index" and self.path.rstrip("/").endswith("mainline"):
            self._forever(ROW, length=None)
        elif mode == "huge-deb" and deb:
            self._forever(b"\0" * 65536, length=2 << 30)
        elif mode == "endless-deb" and deb:
            self._forever(b"\0" * 65536, length=None)
        elif mode == "drip-deb" and deb:
            self._forever(b"\0", length=None, pause=0.05)
        else:
            super().do_GET()

    def _forever(self, piece: bytes, length: int | None, pause: float = 0.0) -> None:
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.server.started.append(time.monotonic())
        try:
            while True:
                self.wfile.write(piece)
                if pause:
                    self.wfile.flush()
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what this is for
            pass


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A mainline mirror with one good per-arch release, v5.7.2, of placeholder packages."""
    www = tmp_path_factory.mktemp("bounded-mirror")
    root = www / "mainline"
    release = Release("v5.7.2", [Build(STAMP, placeholder_debs(abi(5, 7, 2, None), STAMP))])
    write_release(root, release)
    write_top(root, [release])
    return www


def serve(tree: Path, mode: str):
    return serve_handler(partial(Hostile, directory=str(tree)), "mainline/", mode=mode, started=[])


def kbisect(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBISECT_")}
    env.update(KBISECT_HOME=str(home), KBISECT_RESULTS=str(home / "results"), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("kbisect: error:")]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# ------------------------------------------------------------------------------ through the CLI


def test_endless_index_page_is_refused_in_one_line(tree, tmp_path):
    """Before: the page was read until memory ran out (the CLI's timeout here)."""
    with serve(tree, "endless-index") as url:
        began = time.monotonic()
        proc = kbisect(tmp_path / "home", "kernels", "list", "--mirror", url)
        took = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(errors(proc)) == 1 and "more than the 8 MiB" in errors(proc)[0], proc.stderr[-2000:]
    assert took < 30


def test_deb_announcing_two_gib_is_refused_before_a_byte_is_written(tree, tmp_path):
    """Before: the body was written to the download's .part file until the hash check (600 MB)."""
    home = tmp_path / "home"
    with serve(tree, "huge-deb") as url:
        proc = kbisect(home, "kernels", "fetch", "mainline:5.7.2", "--mirror", url)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = errors(proc)
    assert "announces 2048 MiB, more than the 512 MiB" in line
    downloads = home / "downloads"
    assert not downloads.exists() or files_under(downloads) == []
    assert not (home / "kernels" / "mainline" / "5.7.2").exists()


def test_file_url_mirror_says_only_http_is_supported(tmp_path):
    """Before: "cannot reach file:///…: InvalidSchema"."""
    proc = kbisect(tmp_path / "home", "kernels", "list", "--mirror", f"file://{tmp_path}/mainline/")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = errors(proc)
    assert "only http(s) mirrors are supported" in line and "InvalidSchema" not in line


# ------------------------------------------------------------------------------ the helper itself


def _deb_url(base: str) -> str:
    name = next(n for n in placeholder_debs(abi(5, 7, 2, None), STAMP) if n.startswith("linux-image"))
    return f"{base}v5.7.2/amd64/{name}"


def test_endless_package_stops_at_the_cap_and_leaves_nothing(tree, tmp_path):
    """No Content-Length and no end: refused when the body passes the cap (1 MiB here, 512 MiB
    for real), the .part file removed."""
    dest = tmp_path / "dl" / "x.deb"
    bound = cache.Bound(1 << 20, 60.0, "a package")
    with serve(tree, "endless-deb") as url:
        with pytest.raises(SourceUnreachable, match="sent more than the 1 MiB kbisect reads for a package"):
            cache.download(_deb_url(url), dest, "0" * 64, bound=bound)
    assert files_under(dest.parent) == []


def test_dripping_package_stops_at_the_time_limit(tree, tmp_path):
    """A byte every 50 ms never trips the 60 s per-read timeout; the total time limit does."""
    dest = tmp_path / "dl" / "x.deb"
    bound = cache.Bound(512 << 20, 1.0, "a package")
    with serve(tree, "drip-deb") as url:
        began = time.monotonic()
        with pytest.raises(SourceUnreachable, match="took longer than the 1 s kbisect allows"):
            cache.download(_deb_url(url), dest, "0" * 64, bound=bound)
        took = time.monotonic() - began
    assert took < 5
    assert files_under(dest.parent) == []


def test_a_package_within_the_bound_still_downloads(tree, tmp_path):
    """The caps refuse only what exceeds them: the real placeholder package arrives verified."""
    data = next(d for n, d in placeholder_debs(abi(5, 7, 2, None), STAMP).items() if n.startswith("linux-image"))
    dest = tmp_path / "dl" / "x.deb"
    with serve(tree, "none") as url:
        got = cache.download(_deb_url(url), dest, hashlib.sha256(data).hexdigest(),
                             bound=cache.Bound(len(data), 60.0, "a package"))
        assert got.read_bytes() == data
        assert cache.http_get_text(f"{url}v5.7.2/amd64/status") == "0\n"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/mainline/", "nowhere/"])
def test_non_http_urls_are_refused_in_words(url):
    with pytest.raises(KbisectError, match=r"only http\(s\) mirrors are supported"):
        cache.http_get_text(url)
