"""Local kernels: a directory of builds the user made or collected.

`--mirror DIR` (or $KBISECT_LOCAL_DIR, default $KBISECT_HOME/local) holds one
subdirectory per kernel; the subdirectory's name is the version in `local:NAME`. Each is
either a set of .debs (linux-image…, linux-modules…) or an installed-style tree: `vmlinuz`
(or `boot/vmlinuz-*`, `arch/x86/boot/bzImage`) plus `lib/modules/<kver>/` (or
`usr/lib/modules/<kver>/`). No checksums are published for local files, so the SHA-256 of
each .deb is recorded in kernel.json instead, to tell later which bytes were tested.

A local directory is rebuilt in place (`git bisect run kbisect run --kernel local:build`), so its
name says nothing about its bytes: every fetch computes the directory's content id (the .debs'
hashes, or vmlinuz and the modules manifest) and serves the cached copy only when it has that id;
otherwise the directory is a new kernel and is unpacked again. A directory that is gone or no
longer holds a kernel is unavailable, never answered by an earlier build's copy.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from orchestrator.adapters import cache, config, unpack
from orchestrator.core.errors import KbisectError, UnavailableError
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources import KernelEntry, KernelFile, Source


def _natural(text: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", text))


class LocalSource(Source):
    name = "local"

    def __init__(self, mirror: str | None = None) -> None:
        super().__init__(mirror)
        where = mirror or os.environ.get("KBISECT_LOCAL_DIR")
        self.root = Path(where).expanduser() if where else config.subdir("local")

    def _describe(self, path: Path) -> tuple[str, list[Path], Path | None, Path | None, str | None]:
        """(kind, debs, vmlinuz, modules dir, why-not) for one candidate directory."""
        debs = sorted(p for p in path.glob("*.deb") if p.is_file())
        if debs:
            if not any(p.name.startswith("linux-image-") for p in debs):
                return "debs", debs, None, None, "no linux-image-*.deb among the packages"
            return "debs", debs, None, None, None
        vmlinuz = next((p for p in [path / "vmlinuz", *sorted(path.glob("boot/vmlinuz-*")),
                                    path / "arch/x86/boot/bzImage"] if p.is_file()), None)
        if vmlinuz is None:
            return "tree", [], None, None, "neither .debs nor a vmlinuz"
        module_dirs = sorted(d for base in ("lib/modules", "usr/lib/modules")
                             for d in (path / base).glob("*") if d.is_dir())
        if len(module_dirs) > 1:
            return "tree", [], vmlinuz, None, f"several module trees ({', '.join(d.name for d in module_dirs)})"
        return "tree", [], vmlinuz, (module_dirs[0] if module_dirs else None), None

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        if not self.root.is_dir():
            raise KbisectError(f"local kernel directory {self.root} does not exist (pass --mirror DIR)")
        entries = []
        for path in sorted(self.root.iterdir(), key=lambda p: _natural(p.name)):
            if not path.is_dir() or path.name.startswith("."):
                continue
            if lo and _natural(path.name) < _natural(lo) or hi and _natural(path.name) > _natural(hi):
                continue
            kind, debs, vmlinuz, modules, why = self._describe(path)
            files = [KernelFile(name=p.name, url=p.resolve().as_uri(), sha256=None, size=p.stat().st_size)
                     for p in (debs or ([vmlinuz] if vmlinuz else []))]
            entries.append(KernelEntry(self.name, path.name, why is None, why, files, _natural(path.name),
                                       {"kind": kind, "path": str(path)}))
        return entries

    def fetch(self, version: str) -> UnpackedKernel:
        """The cached copy of local:VERSION if the directory still holds the same bytes, else a new one."""
        target = self.target(version)
        path = self.root / version
        if not path.is_dir():
            raise UnavailableError(f"local:{version}: no directory {path}")
        kind, debs, vmlinuz, modules, why = self._describe(path)
        if why:
            raise UnavailableError(f"local:{version}: {why}")
        spec = f"local:{version}"
        if kind == "debs":
            sums = {p.name: cache.sha256_file(p) for p in debs}
            return unpack.unpack_debs(debs, target, spec, {"path": str(path), "sha256": sums})
        assert vmlinuz is not None
        kver = modules.name if modules else _kver_from_name(vmlinuz) or version
        staging = {"vmlinuz": vmlinuz, "modules": modules}
        return _adopt(path, staging, target, spec, kver, unpack.tree_content_id(vmlinuz, modules))


def _kver_from_name(vmlinuz: Path) -> str | None:
    return vmlinuz.name[len("vmlinuz-"):] if vmlinuz.name.startswith("vmlinuz-") else None


def _adopt(path: Path, staging: dict, target: Path, spec: str, kver: str, current: str) -> UnpackedKernel:
    """Lay out an installed-style tree through unpack.adopt_tree (which expects vmlinuz + modules/);
    `current` is the tree's content id now, so a cached copy of other bytes is replaced."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        view = Path(tmp)
        os.symlink(staging["vmlinuz"].resolve(), view / "vmlinuz")
        if staging["modules"] is not None:
            os.symlink(staging["modules"].resolve(), view / "modules")
        for name, candidates in (("config", ["config", f"boot/config-{kver}", ".config"]),
                                 ("System.map", ["System.map", f"boot/System.map-{kver}"])):
            found = next((path / c for c in candidates if (path / c).is_file()), None)
            if found is not None:
                os.symlink(found.resolve(), view / name)
        return unpack.adopt_tree(view, target, spec, kver, {"path": str(path)}, expect=current)
