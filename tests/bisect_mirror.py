"""A minimal generated mainline mirror (kernel.ubuntu.com/mainline layout) served on 127.0.0.1.

Used by the differential tests when the sources engineer's mirror builder is not importable.
Only what a listing reads is generated: the top index, per-version CHECKSUMS and BUILT (old
layout, up to 5.6.17 and 5.7-rc7) or amd64/CHECKSUMS and amd64/status (new layout); the .deb
files are tiny placeholders because replayed verdicts never boot them.
"""

from __future__ import annotations

import hashlib
import json
import http.server
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

from orchestrator.versions import KernelVersion, parse_version


def _new_layout(v: KernelVersion) -> bool:
    return v >= KernelVersion(5, 7, 2) if v.base == KernelVersion(5, 7) else v >= KernelVersion(5, 8, 0, 1)


def _pkg(v: KernelVersion, stamp: str) -> tuple[str, str]:
    """(abi, package version) as Ubuntu's mainline builds name them."""
    abi = f"{v.major}.{v.minor}.{v.patch}-{v.major:02d}{v.minor:02d}{v.patch:02d}"
    abi += f"rc{v.rc}" if v.rc is not None else ""
    return abi, f"{abi}.{stamp}"


def build_mirror(root: Path, versions: list[str], unavailable: set[str] = frozenset()) -> Path:
    """Write the mirror tree under root; `unavailable` versions get a failed build status."""
    root.mkdir(parents=True, exist_ok=True)
    links = []
    for i, label in enumerate(versions):
        v = parse_version(label)
        d = f"v{v}"
        links.append(f'<a href="{d}/">{d}/</a>')
        stamp = f"2020{(i % 12) + 1:02d}{(i % 28) + 1:02d}1200"
        abi, pkgver = _pkg(v, stamp)
        old_style = v < KernelVersion(4, 18)
        image = (f"linux-image-{abi}-generic_{pkgver}_amd64.deb" if old_style
                 else f"linux-image-unsigned-{abi}-generic_{pkgver}_amd64.deb")
        debs = [image] + ([] if old_style else [f"linux-modules-{abi}-generic_{pkgver}_amd64.deb"])
        failed = label in unavailable
        new = _new_layout(v)
        where = root / d / "amd64" if new else root / d
        where.mkdir(parents=True, exist_ok=True)
        sums = []
        if not failed:
            for deb in debs:
                data = f"placeholder {deb}\n".encode()
                (where / deb).write_bytes(data)
                sums.append((hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest(), deb))
        checksums = "# Checksums-Sha1:\n" + "".join(f"{s1}  {n}\n" for s1, _, n in sums)
        checksums += "# Checksums-Sha256:\n" + "".join(f"{s2}  {n}\n" for _, s2, n in sums)
        (where / "CHECKSUMS").write_text(checksums)
        if new:
            status = (f"Test amd64/build failed (rc=2, on=amd64, time=0:05:01, log=amd64/log)\n" if failed else
                      f"Test amd64/build succeeded (rc=0, on=amd64, time=0:11:17, log=amd64/log)\n")
            (where / "status").write_text(status)
        else:
            built = ("Build for amd64 failed (see BUILD.LOG.amd64):\n" if failed else
                     "Build for amd64 succeeded (see BUILD.LOG.amd64):\n" + "".join(f"  {n}\n" for n in debs))
            (where / "BUILT").write_text(built)
        sub = root / d
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in sub.iterdir())
        (sub / "index.html").write_text(_index(entries))
        if new:
            entries = sorted(p.name for p in where.iterdir())
            (where / "index.html").write_text(_index(entries))
    (root / "index.html").write_text("<html><body><pre>\n" + "\n".join(links) + "\n</pre></body></html>\n")
    return root


def _index(names: list[str]) -> str:
    return "<html><body><pre>\n" + "\n".join(f'<a href="{n}">{n}</a>' for n in names if n != "index.html") \
        + "\n</pre></body></html>\n"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (an ephemeral port); yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _FakeLaunchpad(http.server.BaseHTTPRequestHandler):
    """Just enough of Launchpad's getPublishedSources for listing one series' uploads."""

    uploads: dict[str, list[str]] = {}  # series -> versions

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        base = f"http://127.0.0.1:{self.server.server_address[1]}/api/1.0/ubuntu/"
        if parts.path == "/api/1.0/ubuntu/+archive/primary" and query.get("ws.op") == "getPublishedSources":
            series = query.get("distro_series", "").removeprefix(base)
            rows = [{"source_package_name": "linux", "source_package_version": v, "pocket": "Updates",
                     "status": "Published"} for v in self.uploads.get(series, [])]
            body = json.dumps({"start": 0, "total_size": len(rows), "entries": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b"{}"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve_launchpad(uploads: dict[str, list[str]]) -> Iterator[str]:
    """A fake Launchpad on 127.0.0.1 listing `uploads` per series; yields the base URL."""
    handler = type("FakeLaunchpad", (_FakeLaunchpad,), {"uploads": uploads})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
