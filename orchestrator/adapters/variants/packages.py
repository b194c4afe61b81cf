"""The Debian packages a variant build needs (headers, kbuild, source), through the Debian source's apt.

The apt client is the one `orchestrator.adapters.sources.debian` uses for kernels: its private
sources list reaches bullseye..sid and the security suites, so the headers and source of any
kernel that source can fetch are reachable too. Downloads are kept under
`$KBISECT_HOME/variants/downloads/` (one .deb per package version, written atomically).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Protocol

from orchestrator.adapters import cache, config
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources.debian import Apt
from orchestrator.adapters.progress import StepLog
from orchestrator.adapters.fsutil import run_tool
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import DebianPackageVersion

_PACKAGE_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?-\S+$")


@dataclass(frozen=True)
class Downloaded:
    package: str
    version: str
    path: Path
    size: int


class PackageFetcher(Protocol):
    """What the build needs from a package archive (a fake in tests)."""

    def pick(self, package: str, wanted: str) -> str: ...

    def download(self, package: str, version: str, progress: StepLog) -> Downloaded: ...

    def depends(self, deb: Downloaded) -> list[str]: ...


def nearest_version(wanted: str, available: Iterable[str]) -> str | None:
    """The available version closest to `wanted` on the same X.Y line: exact, else the nearest
    upstream sublevel, preferring newer on a tie (a newer kbuild of the same line was measured to work)."""
    line = ".".join(wanted.split(".")[:2])
    candidates = [v for v in set(available) if ".".join(v.split(".")[:2]) == line]
    if not candidates:
        return None
    if wanted in candidates:
        return wanted

    def sublevel(v: str) -> int:
        m = re.match(r"^\d+\.\d+\.(\d+)", v)
        return int(m.group(1)) if m else 0

    w = sublevel(wanted)
    newest_first = sorted(candidates, key=DebianPackageVersion, reverse=True)
    return min(newest_first, key=lambda v: (abs(sublevel(v) - w), sublevel(v) < w))


def depends_names(depends: str) -> list[str]:
    """Package names of a Depends field, first alternative of each item, versions dropped."""
    names = []
    for item in depends.split(","):
        alt = item.split("|")[0].strip()
        if alt:
            names.append(re.split(r"[\s(:]", alt, maxsplit=1)[0])
    return names


def kernel_version_string(vmlinuz: Path) -> str | None:
    """The bzImage's embedded version string ("6.1.0-54-cloud-amd64 (...) #1 SMP ... Debian 6.1.190-1 (...)").

    Read from the x86 boot header's kernel_version pointer, so the package version is known even
    for a kernel unpacked by another source that recorded nothing about it.
    """
    try:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    if off >= len(head):
        return None
    return head[off : off + 256].split(b"\0", 1)[0].decode("ascii", "replace") or None


def debian_package_version(base: UnpackedKernel) -> str:
    """The Debian package version (6.1.190-1) the base kernel came from."""
    value = base.package_version
    if isinstance(value, str) and _PACKAGE_VERSION_RE.match(value):
        return value
    m = re.search(r"Debian (\d+\.\d+(?:\.\d+)?-\S+)", kernel_version_string(base.vmlinuz) or "")
    if m:
        return m.group(1)
    raise KbisectError(f"cannot tell which Debian package {base.spec} came from "
                       "(no package version recorded, none in vmlinuz)")


def _size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


class DebianPackages:
    """Versions and downloads of Debian packages, through the Debian kernel source's apt client."""

    def __init__(self, apt: Apt | None = None, downloads: Path | None = None) -> None:
        self._apt = apt
        self._downloads = downloads
        self._updated = False

    @cached_property
    def apt(self) -> Apt:
        """Made on first use: serving a cached variant needs no apt at all."""
        apt = self._apt or Apt()
        if not self._updated:
            apt.ensure_updated()  # at most daily; the lists are what `versions` reads
            self._updated = True
        return apt

    @cached_property
    def downloads(self) -> Path:
        path = self._downloads or config.subdir("variants") / "downloads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def versions(self, package: str) -> list[str]:
        """The versions of `package` apt can download, oldest first."""
        found = {r["Version"] for r in self.apt.show([package]) if r.get("Package") == package}
        return sorted(found, key=DebianPackageVersion)

    def pick(self, package: str, wanted: str) -> str:
        """Exact version when the archive has it; else (same X.Y line) the nearest, recorded by the caller."""
        versions = self.versions(package)
        if not versions:
            raise KbisectError(f"no version of {package} is downloadable "
                                   "(apt-get update, or its suite is not configured)")
        choice = nearest_version(wanted, versions)
        if choice is None:
            raise KbisectError(f"no {package} of the {'.'.join(wanted.split('.')[:2])} line is downloadable "
                                   f"(have {', '.join(versions)})")
        return choice

    def download(self, package: str, version: str, progress: StepLog) -> Downloaded:
        """One package version into the downloads cache, once: apt writes into a private temporary
        directory renamed into place, so an interrupted download never leaves a truncated .deb."""
        safe_version = version.replace(":", "%3a")
        with cache.locked(self.downloads / f".{package}_{safe_version}"):
            found = sorted(self.downloads.glob(f"{package}_{safe_version}_*.deb"))
            if found:
                return Downloaded(package, version, found[0], found[0].stat().st_size)
            tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=self.downloads))
            try:
                os.chmod(tmp, 0o755)  # apt's sandbox user writes here when kbisect is not root
                deb = self._fetch(package, version, tmp, progress)
                final = self.downloads / deb.name
                os.replace(deb, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        size = final.stat().st_size
        progress.note(f"{package} {version}: {size / 1e6:.1f} MB")
        return Downloaded(package, version, final, size)

    def _fetch(self, package: str, version: str, into: Path, progress: StepLog) -> Path:
        """`apt-get download`, the step showing the megabytes arriving. apt runs in this thread
        (Apt._run): a SIGTERM stops it at once and the caller's `finally` removes `into`; in a
        worker thread the stop waited for the download to end (issue 20)."""
        with progress.step(f"downloading {package} {version}") as step:
            return self.apt.download(package, version, into,
                                     tick=lambda: step.update(f"{_size_of(into) / 1e6:.0f} MB"))

    def depends(self, deb: Downloaded) -> list[str]:
        field = run_tool(["dpkg-deb", "-f", str(deb.path), "Depends"], f"reading {deb.path.name}").stdout
        return depends_names(field.strip())
