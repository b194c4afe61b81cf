"""A generated mainline mirror for the differential tests, in the real formats, served on 127.0.0.1.

Only what a listing reads is meaningful; the .deb files are tiny placeholders because replayed
verdicts never boot them. The layout follows the build date, as on the real service
(../shared/real-layouts.md): flat (`BUILT`, debs at the top) before the switch of June 2020,
per-arch (`amd64/status`) after it, which is why v5.7 and v5.6.17 are flat but 5.7.2 and
every 5.8-rc are per-arch. The formats themselves are written by tests/mainline_mirror.py.
"""

from __future__ import annotations

import http.server
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

from orchestrator.core.versions import KernelVersion, parse_version
from tests.localhttp import serve_handler
from tests.mainline_mirror import Build, Release, abi, placeholder_debs, write_release, write_top


def _per_arch(v: KernelVersion) -> bool:
    """Built after the June 2020 switch? (5.4.49+, 5.6.18+, 5.7.2+, 5.8-rc1+; real-layouts.md)."""
    if v.base == KernelVersion(5, 4):
        return v.patch >= 49
    if v.base == KernelVersion(5, 6):
        return v.patch >= 18
    if v.base == KernelVersion(5, 7):
        return v.patch >= 2
    return v >= KernelVersion(5, 8, 0, 1)


def build_mirror(root: Path, versions: list[str], unavailable: set[str] = frozenset()) -> Path:
    """Write the mirror tree under root; `unavailable` versions get a failed build (exit code 2)."""
    root.mkdir(parents=True, exist_ok=True)
    releases = []
    for i, label in enumerate(versions):
        v = parse_version(label)
        stamp = f"2020{(i % 12) + 1:02d}{(i % 28) + 1:02d}1200"
        failed = label in unavailable
        single = v < KernelVersion(4, 18)  # one linux-image package carrying the modules
        debs = {} if failed else placeholder_debs(abi(v.major, v.minor, v.patch, v.rc), stamp, single)
        layout = "per-arch" if _per_arch(v) else "flat"
        release = Release(f"v{v}", [Build(stamp, debs, rc=2 if failed else 0, layout=layout)])
        write_release(root, release)
        releases.append(release)
    write_top(root, releases)
    return root


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (an ephemeral port); yields the base URL."""
    with serve_handler(partial(_Quiet, directory=str(root))) as url:
        yield url
