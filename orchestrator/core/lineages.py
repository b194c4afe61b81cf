"""Kernels and the lineages they belong to, and the index the differential asks about them.

Bisection never mixes lineages: a stable point release (5.4.41) carries backports from later
mainline (5.7-rc), so it is not "between" 5.4 and 5.5. The lineages are:

* ``mainline``: X.Y releases and their release candidates;
* ``stable-X.Y``: X.Y.z, rooted at the mainline release X.Y (5.4.1 is built directly on 5.4,
  so 5.4 is the natural good anchor of stable-5.4);
* ``ubuntu:X.Y`` / ``debian:X.Y[~debNN|+debNN][/flavour]``: one distro series (one build line and
  flavour for Debian), its uploads in order;
* ``local``: kernels the user built.

A lineage's name is what result.json, the report and `kernels list` print, so `Lineage` is that
string, typed, with the questions the differential asks of it as properties. Pure: listings
arrive as `Kernel`s (or loaders returning them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from orchestrator.core.errors import KbisectError
from orchestrator.core.judging import Candidate
from orchestrator.core.versions import (  # DISTRO_SERIES: the one series table (--distro ubuntu:focal)
    DISTRO_SERIES,
    DebianKernel,
    KernelRef,
    KernelVersion,
    UbuntuVersion,
    parse_debian_kernel,
    parse_spec,
    parse_ubuntu_version,
    parse_version,
)


# A kernel's parsed version: one of the versions.py classes, or the free-form name of a local build.
Version = Union[KernelVersion, UbuntuVersion, DebianKernel, str]


class Lineage(str):
    """The name of one lineage ("mainline", "stable-5.4", "ubuntu:5.4", "debian:6.1~deb11/amd64",
    "local"). A `str`, because that name is the contract (JSON, reports, `--json` consumers);
    build one with the constructors below rather than by formatting strings."""

    @classmethod
    def mainline(cls) -> "Lineage":
        return cls("mainline")

    @classmethod
    def stable(cls, base: KernelVersion) -> "Lineage":
        return cls(f"stable-{base}")

    @classmethod
    def distro(cls, source: str, base: KernelVersion, build: str = "") -> "Lineage":
        """`ubuntu:5.4`; for Debian `build` names the build line and flavour (`~deb11/cloud-amd64`)."""
        return cls(f"{source}:{base}{build}")

    @property
    def is_mainline(self) -> bool:
        return self == "mainline"

    @property
    def is_stable(self) -> bool:
        return self.startswith("stable-")

    @property
    def source(self) -> str:
        """The kernel source whose listing holds this lineage (stable lines are on the mainline mirror)."""
        if self.is_mainline or self.is_stable:
            return "mainline"
        return self.split(":", 1)[0]


@dataclass
class Kernel:
    """One listed kernel with what the differential needs to know about it."""

    ref: KernelRef  # canonical source, version and variant (a patched rebuild, kbisect kernels patch)
    label: str  # version as `kernels list` prints it
    version: Version
    lineage: Lineage
    base: KernelVersion | None  # the mainline release X.Y it belongs to
    available: bool = True
    reason: str = ""

    @property
    def spec(self) -> str:
        """The canonical "source:version[+variant]"."""
        return str(self.ref)

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def variant(self) -> str | None:
        return self.ref.variant

    @property
    def sort_key(self) -> tuple:
        """Version order; a variant sorts right after the kernel it was built from."""
        key = self.version if isinstance(self.version, str) else self.version.sort_key
        return (key, 1 if self.variant else 0, self.variant or "")

    def candidate(self) -> Candidate:
        return Candidate(self.ref, self.label, self.available, self.reason)


def _parse(source: str, version: str) -> tuple[Version, Lineage, KernelVersion | None]:
    """(parsed version, lineage, base) for a source's version string."""
    if source == "mainline":
        v = parse_version(version)
        return v, Lineage(v.lineage), v.base
    if source == "ubuntu":
        u = parse_ubuntu_version(version)
        base = u.base.base
        return u, Lineage.distro("ubuntu", base), base
    if source == "debian":
        d = parse_debian_kernel(version)
        return d, debian_lineage(d), d.upstream.base
    return version, Lineage(source), None


def debian_lineage(d: DebianKernel) -> Lineage:
    """One Debian lineage per base, build line and flavour: `debian:6.1` (bookworm's cloud-amd64
    kernels), `debian:6.1/amd64`, `debian:6.1~deb11/cloud-amd64` (the bullseye backport of the same
    6.1), `debian:6.12+deb12/...`. Builds of different suites or flavours are different kernels,
    not points between each other."""
    line = ""
    if d.abi is not None and d.abi.startswith("0."):
        line = "~" + d.abi.split(".")[1]  # 0.deb11.48 -> ~deb11
    elif d.abi is None and d.tag:
        m = re.match(r"\+(deb\d+|bpo)", d.tag)
        line = "+" + (m.group(1) if m else d.tag.lstrip("+"))
    flavour = d.flavour or "cloud-amd64"
    build = line + (f"/{flavour}" if flavour != "cloud-amd64" or line else "")
    return Lineage.distro("debian", d.upstream.base, build)


def kernel_of(ref: KernelRef, available: bool = True, reason: str = "") -> Kernel:
    """The differential's view of a kernel named by a ref (variant included)."""
    return make_kernel(ref.source, ref.version, available, reason, ref.variant)


def make_kernel(source: str, version: str, available: bool = True, reason: str = "",
                variant: str | None = None) -> Kernel:
    v, lineage, base = _parse(source, str(version))
    label = str(v) + (f"+{variant}" if variant else "")
    return Kernel(KernelRef(source, str(v), variant), label, v, lineage, base, available, reason)


def canonical(spec: str) -> str:
    """Canonical `source:version[+variant]` text for any spec a user may type (`v5.7-rc5`,
    `mainline:5.7-rc5`); used to match --verdicts keys with candidates."""
    try:
        return str(parse_spec(spec))
    except KbisectError:
        return spec.strip()


def distro_lineage(distro: str) -> tuple[str, KernelVersion]:
    """`ubuntu:focal` / `debian:bookworm` / `ubuntu:5.4` → (source, base)."""
    source, _, series = distro.partition(":")
    source = source.strip().lower()
    if source not in DISTRO_SERIES or not series:
        raise KbisectError(f"--distro {distro!r}: expected ubuntu:SERIES or debian:SERIES (e.g. ubuntu:focal)")
    base_text = DISTRO_SERIES[source].get(series.strip().lower(), series.strip())
    try:
        base = parse_version(base_text).base
    except KbisectError:
        known = ", ".join(sorted(DISTRO_SERIES[source]))
        raise KbisectError(f"--distro {distro!r}: unknown series (known: {known}, or a base like {source}:5.4)") from None
    return source, base


class KernelIndex:
    """All listed kernels, grouped by lineage and ordered; the differential asks it questions.

    `loaders` maps a source name to a function returning its kernels, called the first time a
    lineage of that source is needed: a Debian-only bisection never lists the mainline mirror."""

    def __init__(self, kernels: Iterable[Kernel] = (),
                 loaders: dict[str, Callable[[], Iterable[Kernel]]] | None = None) -> None:
        self.by_spec: dict[str, Kernel] = {}
        self.lineages: dict[str, list[Kernel]] = {}
        self.loaders = dict(loaders or {})
        self.add(kernels)

    def add(self, kernels: Iterable[Kernel]) -> None:
        for k in kernels:
            if k.spec not in self.by_spec:
                self.by_spec[k.spec] = k
                self.lineages.setdefault(k.lineage, []).append(k)
        for lst in self.lineages.values():
            lst.sort(key=lambda k: k.sort_key)

    def _load(self, source: str) -> None:
        loader = self.loaders.pop(source, None)
        if loader is not None:
            self.add(loader())

    def get(self, spec: str) -> Kernel | None:
        key = canonical(spec)
        if key not in self.by_spec:
            self._load(key.split(":", 1)[0])
        return self.by_spec.get(key)

    def lineage(self, name: str) -> list[Kernel]:
        self._load(Lineage(name).source)
        return list(self.lineages.get(name, []))

    def between(self, name: str, lo: Kernel, hi: Kernel) -> list[Kernel]:
        """Kernels of one lineage from lo to hi inclusive."""
        return [k for k in self.lineage(name) if lo.sort_key <= k.sort_key <= hi.sort_key]

    def mainline_release(self, base: KernelVersion) -> Kernel | None:
        return self.get(f"mainline:{base}")

    def releases_after(self, base: KernelVersion) -> list[Kernel]:
        """Mainline X.Y releases (no rc's) newer than base, oldest first."""
        return [k for k in self.lineage("mainline")
                if isinstance(k.version, KernelVersion) and not k.version.is_rc and k.version > base]

    def release_window(self, prev: Kernel, release: Kernel) -> list[Kernel]:
        """prev release, the rc's of `release`, `release`: the range where it went bad."""
        return [k for k in self.lineage("mainline") if prev.sort_key <= k.sort_key <= release.sort_key]

    def stable_line(self, base: KernelVersion, upto: Kernel | None = None) -> list[Kernel]:
        """The mainline release X.Y (the root) followed by X.Y.z, up to `upto` if given."""
        line = self.lineage(Lineage.stable(base))
        if upto is not None:
            line = [k for k in line if k.sort_key <= upto.sort_key]
        root = self.mainline_release(base)
        return ([root] if root else []) + line

    def distro_line(self, distro: str, base: KernelVersion) -> list[Kernel]:
        source = distro.split(":", 1)[0]
        return self.lineage(Lineage.distro(source, base))
