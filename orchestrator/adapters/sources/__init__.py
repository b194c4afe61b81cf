"""Kernel sources: list the kernels a source offers (with availability) and fetch one.

Every source ends in the same place: an UnpackedKernel under
`$KBISECT_HOME/kernels/<source>/<version>/`, so bisection and the VM layer never care
whether a kernel came from the mainline mirror, an Ubuntu upload, Debian's archive or a
local build. Listing never raises for a single broken version: a failed or missing build
is an entry with `available=False` and a reason, because bisection must skip it, not stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.adapters import cache
from orchestrator.core.errors import KbisectError
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.core.versions import SOURCES, KernelRef, parse_spec


@dataclass
class KernelFile:
    """One file to download for a kernel, with the checksum it must match."""

    name: str  # the file name in the download cache
    url: str | None  # where it comes from (None: fetched through apt-get download)
    sha256: str | None
    size: int | None = None
    package: str | None = None
    package_version: str | None = None
    mirrors: list[str] = field(default_factory=list)  # fallback URLs (Launchpad +files)

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "url": self.url, "sha256": self.sha256}
        if self.size is not None:
            record["size"] = self.size
        if self.package:
            record["package"] = self.package
        if self.package_version:
            record["package_version"] = self.package_version
        if self.mirrors:
            record["mirrors"] = self.mirrors
        return record


@dataclass
class KernelEntry:
    """One listed kernel: its display version, whether it can be fetched, and its files."""

    source: str
    version: str  # display form: "5.7-rc4", "5.4.41", "6.1.0-54-cloud-amd64", "5.4.0-26.30"
    available: bool
    reason: str | None = None  # why not available (failed build, gone, no checksum...)
    files: list[KernelFile] = field(default_factory=list)
    sort_key: tuple = field(default=(), compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> KernelRef:
        """The listed kernel (a listing row has no variant, and no content id until unpacked)."""
        return KernelRef(self.source, self.version)

    @property
    def spec(self) -> str:
        return str(self.ref)

    @property
    def upstream(self) -> str | None:
        """The upstream version a distro build is based on ("6.1.190"), when the listing says."""
        return self.extra.get("upstream") or None

    @property
    def build(self) -> str | None:
        """How the source names this build: the package version (Debian) or the mainline build stamp."""
        return self.extra.get("package_version") or self.extra.get("build") or None

    def to_json(self) -> dict[str, Any]:
        record = {
            "version": self.version,
            "source": self.source,
            "spec": self.spec,
            "available": self.available,
            "reason": self.reason,
            "files": [f.to_dict() for f in self.files],
        }
        record.update({k: v for k, v in self.extra.items() if k not in record})
        return record


@dataclass(frozen=True)
class Mirrors:
    """Each source's own base for one run, so every kernel is fetched from its source's endpoint:
    a bisection's --mirror is the mainline mirror only and --distro-mirror the distro sources'
    (ubuntu, debian), as its listings already use them. None leaves a source to its default (its
    environment variable, then the public service); `local` is a directory."""

    mainline: str | None = None
    ubuntu: str | None = None
    debian: str | None = None
    local: str | None = None

    @classmethod
    def of_options(cls, mirror: str | None, distro_mirror: str | None) -> "Mirrors":
        """`--mirror` and `--distro-mirror` as a bisection reads them."""
        return cls(mainline=mirror, ubuntu=distro_mirror, debian=distro_mirror)

    def for_source(self, source: str) -> str | None:
        return getattr(self, source) if source in SOURCES else None


class Source:
    """What every source offers; subclasses fill in `list` and `fetch`."""

    name = "?"

    def __init__(self, mirror: str | None = None) -> None:
        self.mirror = mirror

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        raise NotImplementedError

    def fetch(self, version: str) -> UnpackedKernel:
        raise NotImplementedError

    def target(self, version: str) -> Path:
        return cache.kernels_dir(self.name) / version


def get_source(name: str, mirror: str | None = None, **mainline_options: Any) -> Source:
    """The source called `name` (mainline, ubuntu, debian, local); `mirror` overrides its base URL/dir.

    `mainline_options` (allow_unverified, keyring, refresh) only concern the mainline source,
    the one that publishes builds without checksums and signs its CHECKSUMS."""
    key = (name or "").strip().lower()
    if key == "mainline":
        from orchestrator.adapters.sources.mainline import MainlineSource

        return MainlineSource(mirror, **mainline_options)
    if key == "debian":
        from orchestrator.adapters.sources.debian import DebianSource

        return DebianSource(mirror)
    if key == "ubuntu":
        from orchestrator.adapters.sources.ubuntu import UbuntuSource

        return UbuntuSource(mirror)
    if key == "local":
        from orchestrator.adapters.sources.local import LocalSource

        return LocalSource(mirror)
    raise KbisectError(f"unknown kernel source {name!r} (known: {', '.join(SOURCES)})")


def cached(spec: str | KernelRef) -> UnpackedKernel | None:
    """The finished unpack of `spec` if the cache holds one (kernel.json present), else None."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    root = cache.kernels_dir(parsed.source) / parsed.cache_name
    if (root / MANIFEST).exists():
        return UnpackedKernel.load(root)
    if parsed.source == "debian" and parsed.variant is None:
        # "debian:6.1.0-54" means the default flavour
        from orchestrator.adapters.sources.debian import full_name

        root = cache.kernels_dir("debian") / full_name(parsed.version)
        if (root / MANIFEST).exists():
            return UnpackedKernel.load(root)
    return None


def fetch(spec: str | KernelRef, mirror: str | None = None, **mainline_options: Any) -> UnpackedKernel:
    """Return the unpacked kernel for `spec`, downloading, verifying and unpacking it if needed.

    A `+variant` spec is served only when it was built already: building one is the kernel
    provider's job (orchestrator.app.kernels), which composes sources and variant builds.
    A `local:` kernel always goes through its source, which serves the cache only while the
    directory holds the same bytes (a published package never changes; a build directory does).
    So does a `mainline:` one: its source serves the cache only when the cached copy was verified
    as asked now (a run with a keyring is never handed a copy fetched without one).
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    done = None if parsed.source in ("local", "mainline") and not parsed.variant else cached(parsed)
    if done is not None:
        return done
    if parsed.variant:
        raise KbisectError(f"{parsed}: variant {parsed.variant!r} is not built (build it with kbisect kernels patch)")
    return get_source(parsed.source, mirror, **mainline_options).fetch(parsed.version)


__all__ = ["KernelEntry", "KernelFile", "Mirrors", "Source", "cached", "fetch", "get_source"]
