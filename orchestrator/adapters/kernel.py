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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.errors import KbisectError

MANIFEST = "kernel.json"


@dataclass
class UnpackedKernel:
    spec: str  # "debian:6.1.0-54-cloud-amd64", "mainline:5.7-rc4", "debian:6.1.0-54-cloud-amd64+revert-x"
    root: Path
    kver: str  # what `uname -r` prints in the guest, and the modules directory name
    extra: dict = field(default_factory=dict)  # source-specific facts (package versions, upstream base...)
    id: str = ""  # content id (core.identity); "" only before the unpacker has recorded it

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

    def save(self) -> None:
        record = asdict(self)
        record["root"] = str(self.root)
        atomic_write(self.root / MANIFEST, json.dumps(record, indent=2, sort_keys=True))

    @classmethod
    def load(cls, root: Path) -> "UnpackedKernel":
        """Read a finished unpack; a directory without a manifest is an interrupted one."""
        path = Path(root) / MANIFEST
        if not path.exists():
            raise KbisectError(f"{root} holds no unpacked kernel (no {MANIFEST})")
        record = json.loads(path.read_text())
        kernel = cls(spec=record["spec"], root=Path(root), kver=record["kver"], extra=record.get("extra", {}),
                     id=record.get("id") or "")
        if not kernel.id:
            kernel._backfill_id()
        return kernel

    def _backfill_id(self) -> None:
        """Compute the id of a kernel.json that has none and keep it (best effort: a read-only
        cache just computes it again next time)."""
        # function-level import: cache imports this module (it builds UnpackedKernels)
        from orchestrator.adapters.unpack import content_id

        self.id = content_id(self)
        try:
            self.save()
        except OSError:  # read-only or shared cache: the id is still right for this process
            pass
