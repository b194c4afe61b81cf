"""Only the part of a kernel's source that a module rebuild needs, streamed out of linux-source-X.Y.

The 140 MB source tarball inside the .deb is read as a stream and never written to disk.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.adapters.progress import Step, StepLog
from orchestrator.core.errors import KbisectError

_TARBALL_RE = re.compile(r"^\.?/?usr/src/linux-source-[^/]+\.tar\.(xz|gz|bz2)$")
_BUILD_INPUTS = (".c", ".h", ".S")


@dataclass(frozen=True)
class Wanted:
    """The touched files, and the directories whose build inputs come along.

    For each touched directory (not recursively): its Makefile/Kbuild, C/assembler sources and
    local headers, since a composite module needs its sibling objects and quoted includes.
    """

    files: frozenset[str]
    directories: frozenset[str]

    def keeps(self, rel: str) -> bool:
        path = PurePosixPath(rel)
        return rel in self.files or (
            str(path.parent) in self.directories
            and (path.name in ("Makefile", "Kbuild") or path.name.endswith(_BUILD_INPUTS))
        )


def _extract_inner(inner: tarfile.TarFile, wanted: Wanted, dest: Path, step: Step) -> tuple[str, list[str]]:
    """Copy the wanted members of the source tarball under `dest`; (top directory, paths copied)."""
    top, extracted = "", []
    for seen, member in enumerate(inner, 1):
        if seen % 5000 == 0:
            step.update(f"{seen} entries scanned")
        parts = member.name.lstrip("./").split("/", 1)
        if len(parts) != 2:
            continue
        top, rel = parts
        if not member.isfile() or not wanted.keeps(rel):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = inner.extractfile(member)
        if src is None:  # a regular file always has data; tarfile types it as optional
            continue
        with open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        extracted.append(rel)
    return top, extracted


def extract_source_files(source_deb: Path, directories: set[str], files: set[str], dest: Path,
                         progress: StepLog) -> tuple[str, list[str]]:
    """Extract `files` and the build inputs of `directories` from a linux-source .deb into `dest`.

    Returns (top directory name inside the tarball, extracted paths relative to the tree).
    """
    dest.mkdir(parents=True, exist_ok=True)
    wanted = Wanted(frozenset(files), frozenset(directories))
    top, extracted = "", []
    deb_proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(source_deb)], stdout=subprocess.PIPE)
    try:
        with progress.step(f"extracting {len(files)} patched file(s) from {source_deb.name}") as step, \
                tarfile.open(fileobj=deb_proc.stdout, mode="r|") as outer:
            for member in outer:
                inner_file = outer.extractfile(member) if _TARBALL_RE.match(member.name) else None
                if inner_file is None:
                    continue
                with tarfile.open(fileobj=inner_file, mode=f"r|{member.name.rsplit('.', 1)[1]}") as inner:
                    top, extracted = _extract_inner(inner, wanted, dest, step)
                break
    finally:
        if deb_proc.stdout:
            deb_proc.stdout.close()
        deb_proc.wait()
    if not top:
        raise KbisectError(f"{source_deb.name} holds no linux-source tarball")
    return top, extracted
