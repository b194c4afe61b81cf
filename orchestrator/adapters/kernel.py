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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import KernelRef

MANIFEST = "kernel.json"


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
        """Read a finished unpack; a directory without a manifest is an interrupted one."""
        path = Path(root) / MANIFEST
        if not path.exists():
            raise KbisectError(f"{root} holds no unpacked kernel (no {MANIFEST})")
        record = json.loads(path.read_text())
        ref = KernelRef.of(record["spec"]).with_id(record.get("id"))
        kernel = cls(ref=ref, root=Path(root), kver=record["kver"], extra=record.get("extra", {}))
        if not kernel.id:
            kernel._backfill_id()
        return kernel

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
