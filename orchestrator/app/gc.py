"""`kbisect gc`: remove what killed kbisect processes left behind, and say what was removed.

A process stopped by SIGTERM or Ctrl-C cleans up in its `finally` clauses; one killed with
SIGKILL (or by the OOM killer, or a power cut) cannot. Everything it can leave is named here,
each kind with the writer that makes it, and each removed only when its owner is provably gone:
its pid (in the name) is not alive, or the lock it works under is free, and no live process
(an orphaned child: unzstd, mmdebstrap, apt) still has a file open or its cwd inside it.

| leftover | written by |
|---|---|
| this home's domains, `runs/<id>/` (overlays, consoles) | adapters/guest/vm.py (owner home, pid and pid namespace in the domain's <metadata>, and state.json; another home's domains are never touched) |
| `downloads/<source>/.NAME.PID.part` | adapters/cache.py `download` |
| `downloads/debian/.apt-PID/` | adapters/sources/debian.py `_download` |
| `kernels/<source>/.DEB.PID.data.tar` | adapters/unpack.py `open_data` (zstd scratch) |
| `kernels/<source>/<name>.partial/`, `<name>/` without kernel.json | adapters/unpack.py `_staged` (under `<name>.lock`) |
| `kernels/<source>/.<name>.tmp-PID/`, `.<name>.old-PID/` | adapters/variants/steps.py `workspace`, `swap_in` |
| `variants/.<name>.work-XXXX/` | adapters/variants/steps.py `workspace` (under `variants/locks/<name>.lock`) |
| `variants/downloads/.dl-XXXX/` | adapters/variants/packages.py `download` (under that directory's locks) |
| `images/*.build-PID/`, `bootfiles/*.build-PID/` | adapters/guest/image.py, bootfiles.py |
| `local/.<name>.tmp-PID/`, `builds/src/.<package>.tmp-PID/` | app/build.py `_build_into`, adapters/builds/trees.py `_unpack_source` |
| `.NAME.PID.TID.tmp` anywhere in the home or results | adapters/fsutil.py `atomic_write` |

Not leftovers, so kept: `builds/reverts/revert-SHA.patch`, a revert check's patch (app/bisect.py
`revert_patch`): named by its commit, rewritten by the next check of it, and named by the build
record of the reverted kernel. It never goes to a temporary directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.adapters import config
from orchestrator.adapters.fsutil import (APT_WORK, ATOMIC_TMP, DASH_PID, DATA_TAR, PART, in_use, lock_held,
                                          owner_pid, reap_dead, reap_unlocked, remove_path)
from orchestrator.adapters.kernel import MANIFEST

VARIANT_STAGING = re.compile(r"^\.(.+)\.(?:tmp|old)-(\d+)$")
VARIANT_WORK = re.compile(r"^\.(.+)\.work-[^/]+$")
# directories a walk for atomic_write's temp files never enters: other kinds' staging (removed
# whole, or still at work), and trees that hold no atomic writes (a kernel's modules, apt's cache)
_NOT_WALKED = re.compile(r"(\.partial|\.build-\d+|\.(tmp|old)-\d+|\.work-.+|^\.apt-\d+|^\.dl-.+)$|"
                         r"^(modules|tree|lists|cache|runs)$")


def _pid(pattern: re.Pattern[str]) -> Callable[[str], int | None]:
    return lambda name: owner_pid(name, pattern)


def _children(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _source_dirs(root: Path) -> list[Path]:
    return [d for d in _children(root) if d.is_dir() and not d.is_symlink()]


def _walk(top: Path, depth: int) -> Iterator[Path]:
    """Files down to `depth` directories below `top`, never into mounts or the pruned trees."""
    if not top.is_dir():
        return
    for entry in _children(top):
        if entry.is_symlink():
            continue
        if entry.is_file():
            yield entry
        elif entry.is_dir() and depth > 0 and not _NOT_WALKED.search(entry.name) and not os.path.ismount(entry):
            yield from _walk(entry, depth - 1)


@dataclass
class Leftovers:
    """The file-system part of gc for one $KBISECT_HOME (and results directory); no libvirt."""

    home: Path = field(default_factory=config.home)
    results: Path | None = None

    def collect(self) -> list[str]:
        found: list[str] = []
        for label, paths in (
            ("killed download", self.downloads()),
            ("killed apt download", self.apt_dirs()),
            ("killed unpack's scratch file", self.unpack_scratch()),
            ("killed unpack's staging", self.unpack_staging()),
            ("half-written kernel (no kernel.json)", self.unfinished_kernels()),
            ("killed variant build's staging", self.variant_staging()),
            ("killed variant build's workspace", self.variant_work()),
            ("killed variant package download", self.variant_downloads()),
            ("killed kernel build's staging", self.build_staging()),
            ("killed atomic write", self.atomic_tmp()),
        ):
            found += [f"{label} {p}" for p in paths]
        return found

    # -- each kind: the paths removed -------------------------------------------------------
    def downloads(self) -> list[Path]:
        paths = [p for d in _source_dirs(self.home / "downloads") for p in _children(d) if PART.match(p.name)]
        return reap_dead(paths, _pid(PART))

    def apt_dirs(self) -> list[Path]:
        paths = [p for d in _source_dirs(self.home / "downloads") for p in _children(d) if APT_WORK.match(p.name)]
        return reap_dead(paths, _pid(APT_WORK))

    def unpack_scratch(self) -> list[Path]:
        paths = [p for d in _source_dirs(self.home / "kernels") for p in _children(d) if DATA_TAR.match(p.name)]
        return reap_dead(paths, _pid(DATA_TAR))

    def unpack_staging(self) -> list[Path]:
        paths = [p for d in _source_dirs(self.home / "kernels") for p in _children(d)
                 if p.name.endswith(".partial") and p.is_dir()]
        return reap_unlocked(paths, lambda p: p.with_name(p.name.removesuffix(".partial") + ".lock"))

    def unfinished_kernels(self) -> list[Path]:
        """`<name>/` without its manifest: an unpack killed between the rename and kernel.json
        (unpack_debs writes it last). Readers already treat it as absent; gc frees the space."""
        paths = [p for d in _source_dirs(self.home / "kernels") for p in _children(d)
                 if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                 and not p.name.endswith(".partial") and not (p / MANIFEST).exists()]
        return reap_unlocked(paths, self._kernel_lock)

    def _kernel_lock(self, path: Path) -> Path:
        """A variant (`<version>+<name>`) is built under the variants' lock; an unpack under its own."""
        if "+" in path.name:
            return self.home / "variants" / "locks" / f"{path.name}.lock"
        return path.with_name(path.name + ".lock")

    def variant_staging(self) -> list[Path]:
        paths = [p for d in _source_dirs(self.home / "kernels") for p in _children(d) if VARIANT_STAGING.match(p.name)]
        return reap_dead(paths, lambda name: int(VARIANT_STAGING.match(name).group(2)))

    def build_staging(self) -> list[Path]:
        """A kernel build's install staging, and a Debian source's unpack staging (pid in the name)."""
        dirs = (self.home / "local", self.home / "builds" / "src")
        paths = [p for d in dirs for p in _children(d) if VARIANT_STAGING.match(p.name) and p.is_dir()]
        return reap_dead(paths, lambda name: int(VARIANT_STAGING.match(name).group(2)))

    def variant_work(self) -> list[Path]:
        paths = [p for p in _children(self.home / "variants") if VARIANT_WORK.match(p.name)]
        locks = self.home / "variants" / "locks"
        return reap_unlocked(paths, lambda p: locks / f"{VARIANT_WORK.match(p.name).group(1)}.lock")

    def variant_downloads(self) -> list[Path]:
        """`.dl-XXXX/` carries no pid (mkdtemp): removed only while no download there holds a lock."""
        directory = self.home / "variants" / "downloads"
        paths = [p for p in _children(directory) if p.name.startswith(".dl-") and p.is_dir()]
        if not paths or any(lock_held(lock) for lock in directory.glob("*.lock")):
            return []
        removed = [p for p in paths if not in_use(p)]
        for p in removed:
            remove_path(p)
        return removed

    def atomic_tmp(self) -> list[Path]:
        paths = [p for p in _walk(self.home, 3) if ATOMIC_TMP.match(p.name)]
        if self.results is not None:
            paths += [p for p in _walk(self.results, 2) if ATOMIC_TMP.match(p.name)]
        return reap_dead(paths, _pid(ATOMIC_TMP))


def collect(uri: str | None = None, domains: Callable[[str | None], list[str]] | None = None,
            builds: Callable[[], list[Path]] | None = None, leftovers: Leftovers | None = None) -> list[str]:
    """Everything `kbisect gc` removes, as one description per item (the CLI prints them).

    `domains` (libvirt: dead owners' domains and run directories) and `builds` (image and boot-file
    builds) default to the guest runtime's own collectors; tests pass fakes."""
    if domains is None or builds is None:
        from orchestrator.adapters.guest import bootfiles, image, vm

        domains = domains or vm.gc
        builds = builds or (lambda: image.gc_builds() + bootfiles.gc_builds())
    removed = list(domains(uri))
    removed += [f"build {p}" for p in builds()]
    removed += (leftovers or Leftovers(results=config.results_dir())).collect()
    return removed
