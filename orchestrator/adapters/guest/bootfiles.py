"""Per-kernel boot artefacts: a read-only modules disk and a tiny initramfs, cached per kernel.

Distribution kernel packages ship neither modules.dep nor an initramfs we could trust to find
our disks, and virtio_pci/virtio_blk (and ext4 on generic flavours) are often modules. So for
each kernel we:

- copy (hard-link) its modules tree, run `depmod -b` on it and pack it into a journal-less ext4
  image the guest mounts read-only at /lib/modules (so `modprobe veth` works in the guest);
- build a ~1 MB busybox initramfs holding only the modules that mounting the root needs, already
  decompressed on the host (old busybox insmod cannot read .ko.zst/.ko.xz), and an /init that
  mounts the root overlay and the modules disk and switch_roots.

Artefacts are cached under `$KBISECT_HOME/bootfiles/<key>/`, where the key hashes the content
that decides them (vmlinuz bytes, every module's bytes, the initramfs init, this builder's version).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.adapters import config
from orchestrator.adapters.cache import locked
from orchestrator.adapters.fsutil import atomic_write, reap_dead_owners, run_tool
from orchestrator.adapters.cache import sha256_file
from orchestrator.core.errors import BootFailure, InstallationError
from orchestrator.adapters.kernel import UnpackedKernel

BUILD_VERSION = "1"
INITRAMFS_INIT = config.REPO_ROOT / "images" / "initramfs-init"
# What mounting the root needs when it is not built in. crc32c backs ext4's metadata checksums;
# the qemu64 CPU has no SSE4.2, so the generic implementation must be there.
ROOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


@dataclass
class BootFiles:
    """What a domain needs besides the root image: kernel, initramfs, modules disk."""

    kernel: UnpackedKernel
    vmlinuz: Path
    initrd: Path
    modules_disk: Path
    key: str
    seconds: float = 0.0  # time spent preparing (0 when cached)


def _modules_digest(mods: Path) -> str:
    """Hash every module's bytes, remembered per stat signature.

    A rebuilt module of the same size (a patched variant) must not share a modules disk with its
    base, so the listing alone is not enough; but reading ~400 MB of modules before every probe
    is. The content digest is memoised under a hash of (path, size, mtime, inode) for each file:
    any rewrite changes that signature and forces a fresh read.
    """
    entries: list[tuple[str, str]] = []
    sig = hashlib.sha256()
    for root, dirs, files in os.walk(mods):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            st = os.stat(p)
            rel = os.path.relpath(p, mods)
            entries.append((rel, p))
            sig.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    memo = config.subdir("bootfiles") / "digests" / sig.hexdigest()
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    h = hashlib.sha256()
    for rel, p in entries:
        h.update(f"{rel}\0{sha256_file(Path(p))}\n".encode())
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(memo, digest)
    return digest


def cache_key(kernel: UnpackedKernel) -> str:
    """Content key: the kernel image, every module's bytes and the builder's inputs."""
    h = hashlib.sha256()
    h.update(f"v={BUILD_VERSION}\nkver={kernel.kver}\n".encode())
    if not kernel.vmlinuz.is_file():
        raise BootFailure(f"{kernel.spec}: no vmlinuz at {kernel.vmlinuz}")
    h.update(sha256_file(kernel.vmlinuz).encode())
    if kernel.modules.is_dir():
        h.update(_modules_digest(kernel.modules).encode())
    h.update(INITRAMFS_INIT.read_bytes())
    return h.hexdigest()[:20]


def ensure(kernel: UnpackedKernel) -> BootFiles:
    """The boot artefacts of `kernel`, built once under a lock and then reused."""

    t0 = time.monotonic()
    key = cache_key(kernel)
    base = config.subdir("bootfiles")
    final = base / key
    with locked(base / key):
        if not (final / "meta.json").exists():
            _build(kernel, key, final)
    bf = BootFiles(
        kernel=kernel,
        vmlinuz=final / "vmlinuz",
        initrd=final / "initrd.img",
        modules_disk=final / "modules.ext4",
        key=key,
    )
    bf.seconds = round(time.monotonic() - t0, 3)
    return bf


def _build(kernel: UnpackedKernel, key: str, final: Path) -> None:
    work = final.parent / f"{key}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        kver = kernel.kver
        modroot = work / "base" / "lib" / "modules"
        tree = modroot / kver
        modroot.mkdir(parents=True)
        if kernel.modules.is_dir():
            _link_tree(kernel.modules, tree)
        else:
            tree.mkdir()
        run_tool(["depmod", "-b", str(work / "base"), kver], "depmod", InstallationError)

        # The modules disk: journal-less (read-only, shared by concurrent VMs), sized to fit.
        used = sum(
            os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tree) for f in fs
        )
        size_mb = int(used * 1.15 / 2**20) + 32
        disk = work / "modules.ext4"
        mkfs = ["mkfs.ext4", "-q", "-F", "-L", "kbisect-mods", "-b", "4096", "-m", "0"]
        try:
            run_tool(mkfs + ["-O", "^has_journal,^orphan_file", "-d", str(modroot), str(disk), f"{size_mb}M"], "mkfs.ext4", InstallationError)
        except InstallationError:  # older e2fsprogs do not know orphan_file
            run_tool(mkfs + ["-O", "^has_journal", "-d", str(modroot), str(disk), f"{size_mb}M"], "mkfs.ext4", InstallationError)

        mods, builtin = _root_modules(work / "base", kver)
        (work / "initrd.img").write_bytes(_initramfs(mods))
        shutil.copy(kernel.vmlinuz, work / "vmlinuz")
        for name in ("initrd.img", "vmlinuz", "modules.ext4"):
            os.chmod(work / name, 0o444)
        shutil.rmtree(work / "base")
        meta = {
            "spec": kernel.spec,
            "kver": kver,
            "initramfs_modules": [m.name for m in mods],
            "builtin": builtin,
            "modules_disk_bytes": disk.stat().st_size,
            "built_at": time.time(),
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link the kernel's modules (no copy, the kernel cache stays untouched by depmod)."""
    try:
        shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True)
    # Packages may carry a stale `build`/`source` symlink; depmod does not need them.
    for name in ("build", "source"):
        p = dst / name
        if p.is_symlink():
            p.unlink()


def _root_modules(base: Path, kver: str) -> tuple[list[Path], list[str]]:
    """Module files (dependencies first) needed to mount the root; names found built in."""
    files: list[Path] = []
    builtin: list[str] = []
    for name in ROOT_MODULES:
        proc = subprocess.run(
            ["modprobe", "-d", str(base), "-S", kver, "--show-depends", name],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            continue  # not there at all (e.g. crc32c_generic built in under another name)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                p = Path(parts[1])
                if p not in files:
                    files.append(p)
            elif len(parts) >= 2 and parts[0] == "builtin":
                builtin.append(parts[1])
    return files, builtin


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.zst"):
        return _run_bytes(["zstd", "-dc", str(path)], "zstd")
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    return data


def _run_bytes(cmd: list[str], what: str) -> bytes:
    try:
        proc = subprocess.run(cmd, capture_output=True)
    except FileNotFoundError as exc:
        raise InstallationError(f"{what} is not installed (run ./setup.sh)") from exc
    if proc.returncode != 0:
        raise InstallationError(f"{what} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in (".ko.zst", ".ko.xz", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".ko"
    return name


def _busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file():
            return p
    raise InstallationError("busybox (busybox-static) is not installed (run ./setup.sh)")


class _Cpio:
    """A minimal newc writer: lets us add /dev/console without being root, deterministically."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nameb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nameb)
        self.buf.write(b"\0" * (-(110 + len(nameb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        out = self.buf.getvalue()
        return out + b"\0" * (-len(out) % 512)


def _initramfs(mods: list[Path]) -> bytes:
    cpio = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", _busybox().read_bytes(), 0o755)
    cpio.file("init", INITRAMFS_INIT.read_bytes(), 0o755)
    names = []
    for m in mods:
        name = _module_name(m)
        cpio.file(f"modules/{name}", _decompressed(m))
        names.append(name)
    cpio.file("modules.list", ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def gc_builds() -> list[Path]:
    """Remove half-finished builds of dead processes."""
    return reap_dead_owners(config.subdir("bootfiles"), "*.build-*", lambda d: shutil.rmtree(d, ignore_errors=True))