"""The hand-off between the kernel cache and the guest runtime: one unpacked kernel on disk.

Every source (mainline, ubuntu, debian, local, patched variants) ends in the same layout,
so the VM layer never needs to know where a kernel came from:

    <root>/kernel.json   this record
    <root>/vmlinuz       the bootable image
    <root>/config        the kernel's .config (when the package ships it)
    <root>/System.map    (when shipped)
    <root>/modules/      the contents of lib/modules/<kver>/ (modules.dep not guaranteed)

`id` is the kernel's content id (orchestrator.core.identity): what verdicts are stored under, so
a name that comes to stand for other bytes (a rebuilt `local:` tree) is a new kernel. A
kernel.json written before ids existed gets its id computed when loaded (from the package hashes
it recorded, else from the unpacked tree) and written back, rather than being unpacked again: the
packages may be gone from the download cache, and the recorded hashes are the verified ones.

A kernel.json that cannot be read as a record (empty or cut short after a power loss, not UTF-8,
not a JSON object, a field missing) marks no finished unpack: `load` raises DamagedManifest and,
inside $KBISECT_HOME, removes the file first, so the directory reads as an interrupted unpack
that the next attempt redoes (`refetch_damaged` makes that attempt at once) instead of failing
on the same file in every run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from orchestrator.adapters import config
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import KernelRef

MANIFEST = "kernel.json"

T = TypeVar("T")


class DamagedManifest(KbisectError):
    """A kernel.json that is no record; inside the cache it has been removed (`removed`), so the
    directory is an interrupted unpack and fetching the kernel again unpacks it afresh."""

    def __init__(self, message: str, root: Path, removed: bool) -> None:
        super().__init__(message)
        self.root = root
        self.removed = removed


@dataclass
class UnpackedKernel:
    ref: KernelRef  # "debian:6.1.0-54-cloud-amd64+revert-x" and, once unpacked, its content id
    root: Path
    kver: str  # what `uname -r` prints in the guest, and the modules directory name
    extra: dict = field(default_factory=dict)  # source-specific facts (package versions, upstream base...)

    @property
    def spec(self) -> str:
        """"debian:6.1.0-54-cloud-amd64", "mainline:5.7-rc4": the name kernel.json records."""
        return str(self.ref)

    @property
    def id(self) -> str:
        """The content id (core.identity); "" only before the unpacker has recorded it."""
        return self.ref.id or ""

    @property
    def upstream(self) -> str | None:
        """The upstream version the kernel is built on ("5.4.41"), when its source says."""
        return self.extra.get("upstream")

    @property
    def package_version(self) -> str | None:
        """The distro package version it was unpacked from ("6.1.190-1"), for Debian kernels."""
        return self.extra.get("package_version")

    @property
    def commit(self) -> str | None:
        """The upstream commit the build names (mainline builds), if any."""
        return self.extra.get("commit")

    @property
    def unverified(self) -> bool:
        """Fetched without a checksum to check (mainline --allow-unverified)."""
        return bool(self.extra.get("unverified"))

    @property
    def patch_sha256(self) -> str | None:
        """The patch a variant was built with; None for a stock kernel."""
        return self.extra.get("patch_sha256")

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def modules(self) -> Path:
        return self.root / "modules"

    @property
    def config(self) -> Path | None:
        path = self.root / "config"
        return path if path.exists() else None

    @property
    def system_map(self) -> Path | None:
        path = self.root / "System.map"
        return path if path.exists() else None

    def __post_init__(self) -> None:
        if isinstance(self.ref, str):  # callers holding a spec string ("local:test")
            self.ref = KernelRef.of(self.ref)

    def manifest(self) -> str:
        """The kernel.json text: `spec` and `id` as separate keys, as every release wrote them."""
        record = {"spec": self.spec, "id": self.id, "root": str(self.root), "kver": self.kver, "extra": self.extra}
        return json.dumps(record, indent=2, sort_keys=True)

    def save(self) -> None:
        atomic_write(self.root / MANIFEST, self.manifest())

    @classmethod
    def load(cls, root: Path) -> "UnpackedKernel":
        """Read a finished unpack; a directory without a manifest is an interrupted one, and so
        is one whose manifest is damaged (DamagedManifest, see the module docstring)."""
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise KbisectError(f"{root} holds no unpacked kernel (no {MANIFEST})")
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
                seen = os.fstat(handle.fileno())
        except IsADirectoryError:
            raise KbisectError(f"{path}: a directory, not a kernel record") from None
        try:
            kernel = cls._from_record(root, raw)
        except (ValueError, KeyError, TypeError, KbisectError) as exc:  # UnicodeDecodeError, JSONDecodeError
            raise _damaged(path, seen, _why(raw, exc)) from None
        if not kernel.id:
            kernel._backfill_id()
        return kernel

    @classmethod
    def _from_record(cls, root: Path, raw: bytes) -> "UnpackedKernel":
        record = json.loads(raw.decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        spec, kver, extra = record["spec"], record["kver"], record.get("extra") or {}
        if not isinstance(spec, str) or not isinstance(kver, str) or not kver or not isinstance(extra, dict):
            raise ValueError("spec, kver or extra of the wrong type")
        kernel_id = record.get("id")
        ref = KernelRef.of(spec).with_id(kernel_id if isinstance(kernel_id, str) else None)
        return cls(ref=ref, root=root, kver=kver, extra=extra)

    def _backfill_id(self) -> None:
        """Compute the id of a kernel.json that has none and keep it (best effort: a read-only
        cache just computes it again next time)."""
        # function-level import: cache imports this module (it builds UnpackedKernels)
        from orchestrator.adapters.unpack import content_id

        self.ref = self.ref.with_id(content_id(self))
        try:
            self.save()
        except OSError:  # read-only or shared cache: the id is still right for this process
            pass


def _why(raw: bytes, exc: Exception) -> str:
    """What is wrong with a manifest, in a few words."""
    if not raw.strip():
        return "empty"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at byte {exc.pos}: cut short?)"
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _damaged(path: Path, seen: os.stat_result, why: str) -> DamagedManifest:
    """The error for a damaged manifest, removing it first when it lies in kbisect's own cache
    (a directory the user pointed at is theirs: it is only reported). It is removed only if the
    name still holds the file that was read, so a good manifest another kbisect renamed into
    place meanwhile survives."""
    removed = False
    if _in_home(path):
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
                path.unlink()
                removed = True
        except OSError:  # gone already, or a read-only cache: reported either way
            pass
    action = "removed; the kernel will be unpacked again" if removed else "remove it and unpack the kernel again"
    return DamagedManifest(f"{path}: damaged ({why}), not a finished unpack: {action}", path.parent, removed)


def _in_home(path: Path) -> bool:
    try:
        path.resolve().relative_to(config.home().resolve())
    except (ValueError, OSError):
        return False
    return True


def _note(text: str) -> None:
    print(f"kbisect: note: {text}", file=sys.stderr)


def refetch_damaged(fetch: Callable[[], T], warn: Callable[[str], None] = _note) -> T:
    """`fetch()`, run once more when it met a damaged manifest that was removed: the second
    attempt finds an interrupted unpack and redoes it, so the damage costs one unpack, not the
    command (nor every later run). A manifest that could not be removed is reported as it is."""
    try:
        return fetch()
    except DamagedManifest as exc:
        if not exc.removed:
            raise
        warn(str(exc))
        return fetch()
