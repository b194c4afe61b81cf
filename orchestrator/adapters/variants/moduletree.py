"""A variant's modules tree: the base kernel's, shared by hard links, with rebuilt modules swapped in.

vmlinuz is never rebuilt; only `.ko` files change, so the rest of the tree costs no space, and
depmod runs on the result so module dependencies match the rebuilt modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from orchestrator.adapters.fsutil import run_tool
from orchestrator.core.errors import KbisectError

MODULE_EXTS = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
# Files depmod writes; they are regenerated for the variant instead of being shared with the base.
DEPMOD_OUTPUTS = {
    "modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
    "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
    "modules.devname", "modules.weakdep",
}
# How each compression the base may use is reproduced (same tools and options as Debian's packaging).
_COMPRESSORS = {
    ".ko.xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-f"],
    ".ko.zst": ["zstd", "-q", "-f", "--rm", "-T0"],
    ".ko.gz": ["gzip", "-9nf"],
}


def find_shipped_module(modules: Path, directory: str, module: str) -> Path | None:
    """The base kernel's copy of `<directory>/<module>.ko*`, in any compression."""
    for ext in MODULE_EXTS:
        for cand in (modules / "kernel" / directory / f"{module}{ext}", modules / "updates" / directory / f"{module}{ext}"):
            if cand.exists():
                return cand
    return None


def compress_like(ko: Path, like: Path) -> Path:
    """Compress a freshly built module the way the base ships its modules (xz/zstd/gzip/none)."""
    if like.name.endswith(".ko"):
        return ko
    for ext, cmd in _COMPRESSORS.items():
        if like.name.endswith(ext):
            run_tool([*cmd, str(ko)], f"compressing {ko.name}")
            return ko.with_name(ko.name + ext[3:])
    raise KbisectError(f"unknown module compression for {like}")


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows one, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_entry(full: Path, out: Path) -> bool:
    """Symlinks as symlinks, files as links; True when a file (not a symlink) was placed."""
    if full.is_symlink():
        os.symlink(os.readlink(full), out)
        return False
    link_or_copy(full, out)
    return True


def copy_tree_hardlinked(src: Path, dst: Path, skip: Callable[[str], bool]) -> int:
    """Copy a modules tree sharing unchanged files with the base by hard links (cheap: the
    cloud tree is ~90 MB, generic ~380 MB). Symlinks are copied as symlinks. Returns file count."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out_dir = dst if rel_dir == "." else dst / rel_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in list(dirnames):
            if (Path(dirpath) / name).is_symlink():
                _copy_entry(Path(dirpath) / name, out_dir / name)
                dirnames.remove(name)
        for name in filenames:
            if not skip(name if rel_dir == "." else f"{rel_dir}/{name}"):
                count += _copy_entry(Path(dirpath) / name, out_dir / name)
    return count


def modinfo_field(ko: Path, name: str) -> str:
    return run_tool(["modinfo", "-F", name, str(ko)], f"modinfo {ko.name}").stdout.strip()


def modversions(ko: Path) -> dict[str, str]:
    """{symbol: CRC} a module expects from the kernel (empty without CONFIG_MODVERSIONS)."""
    proc = subprocess.run(["modprobe", "--dump-modversions", str(ko)], capture_output=True, text=True)
    result = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[1]] = parts[0]
    return result


def run_depmod(modules: Path, kver: str, system_map: Path | None) -> None:
    """depmod -b over a throw-away root whose lib/modules/<kver> points at the variant's tree."""
    with tempfile.TemporaryDirectory(prefix="kbisect-depmod-") as tmp:
        for sub in ("lib/modules", "usr/lib/modules"):
            d = Path(tmp) / sub
            d.mkdir(parents=True)
            os.symlink(modules.resolve(), d / kver)
        cmd = ["depmod", "-b", tmp]
        if system_map is not None:
            cmd += ["-F", str(system_map)]
        run_tool(cmd + [kver], "depmod")
    if not (modules / "modules.dep").exists():
        raise KbisectError(f"depmod wrote no modules.dep into {modules}")
