"""The hand-off between the kernel cache and the guest runtime: one unpacked kernel on disk.

Every source (mainline, ubuntu, debian, local, patched variants) ends in the same layout,
so the VM layer never needs to know where a kernel came from:

    <root>/kernel.json   this record
    <root>/vmlinuz       the bootable image
    <root>/config        the kernel's .config (when the package ships it)
    <root>/System.map    (when shipped)
    <root>/modules/      the contents of lib/modules/<kver>/ (modules.dep not guaranteed)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.core.errors import KbisectError

MANIFEST = "kernel.json"


@dataclass
class UnpackedKernel:
    spec: str  # "debian:6.1.0-54-cloud-amd64", "mainline:5.7-rc4", "debian:6.1.0-54-cloud-amd64+revert-x"
    root: Path
    kver: str  # what `uname -r` prints in the guest, and the modules directory name
    extra: dict = field(default_factory=dict)  # source-specific facts (package versions, upstream base...)

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
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        tmp.replace(self.root / MANIFEST)

    @classmethod
    def load(cls, root: Path) -> "UnpackedKernel":
        """Read a finished unpack; a directory without a manifest is an interrupted one."""
        path = Path(root) / MANIFEST
        if not path.exists():
            raise KbisectError(f"{root} holds no unpacked kernel (no {MANIFEST})")
        record = json.loads(path.read_text())
        return cls(spec=record["spec"], root=Path(root), kver=record["kver"], extra=record.get("extra", {}))
