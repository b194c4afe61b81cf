"""Kernel version names, parsed and ordered (pure: no I/O).

Every source names its kernels differently (mainline directories `v5.7-rc1`, Ubuntu
mainline package versions `5.4.0-050400.201911242031`, Ubuntu uploads `5.4.0-26.30`,
Debian ABI names `6.1.0-54-cloud-amd64`). Bisection needs them totally ordered, and the
comparison of lineages needs each version to know whether it is on the mainline line
(X.Y and its release candidates) or on a stable line (X.Y.z). Everything here is pure so
that listing, bisection and reports can share it without touching the network.
(Over 500 lines: the version grammars and the KernelRef naming them are one vocabulary.)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace

from orchestrator.core.errors import KbisectError

# --------------------------------------------------------------------------- upstream


@functools.total_ordering
@dataclass(frozen=True)
class KernelVersion:
    """An upstream kernel version: X.Y, X.Y-rcN or X.Y.Z (Z > 0).

    Ordered so that release candidates precede their release and stable updates follow it:
    5.6 < 5.6.17 < 5.7-rc1 < 5.7-rc7 < 5.7 < 5.7.2 < 5.8-rc1.
    """

    major: int
    minor: int
    patch: int = 0
    rc: int | None = None

    def __post_init__(self) -> None:
        if self.rc is not None and self.patch:
            raise KbisectError(f"kernel version {self.major}.{self.minor}.{self.patch}-rc{self.rc}: "
                               "release candidates have no stable patch level")

    @property
    def sort_key(self) -> tuple[int, int, int, int, int]:
        # rc's of X.Y sort before X.Y itself; X.Y.Z after it.
        if self.rc is not None:
            return (self.major, self.minor, 0, self.rc, 0)
        return (self.major, self.minor, 1, 0, self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, KernelVersion):
            return NotImplemented
        return self.sort_key < other.sort_key

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.patch:
            text += f".{self.patch}"
        if self.rc is not None:
            text += f"-rc{self.rc}"
        return text

    @property
    def is_rc(self) -> bool:
        return self.rc is not None

    @property
    def lineage(self) -> str:
        """"mainline" for X.Y and its rc's; "stable-X.Y" for the stable updates X.Y.Z."""
        return f"stable-{self.major}.{self.minor}" if self.patch else "mainline"

    @property
    def base(self) -> "KernelVersion":
        """The mainline release X.Y this version belongs to (or will become, for an rc)."""
        return KernelVersion(self.major, self.minor)

    @property
    def mainline_dir(self) -> str:
        """The directory name on the mainline mirror (`v6.0`, `v5.7-rc1`, `v5.4.41`)."""
        return f"v{self}"


_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:-?rc(\d+))?$")


def _match_version(text: str) -> KernelVersion | None:
    m = _VERSION_RE.match(text)
    if not m:
        return None
    major, minor, patch, rc = m.groups()
    if rc is not None and patch not in (None, "0"):
        return None
    return KernelVersion(int(major), int(minor), int(patch or 0), int(rc) if rc is not None else None)


def parse_version(text: str) -> KernelVersion:
    """Parse `4.15`, `v4.15`, `5.7-rc1`, `5.4.41` (and `5.4.0` = `5.4`); one clear line on failure."""
    cleaned = (text or "").strip()
    version = _match_version(cleaned)
    if version is None:
        raise KbisectError(f"not a kernel version: {text!r} (expected e.g. 4.15, v5.7-rc1 or 5.4.41)")
    return version


# Ubuntu's series in release order. Until mid-2016 many mainline releases exist only under a
# series-suffixed directory (`v4.3-wily/`, `v4.4.14-xenial/`, `v4.2-unstable/`), and some rc's
# under two (`v4.6-rc7-wily/`, `v4.6-rc7-yakkety/`): ../shared/real-layouts.md, "Directory names".
# "unstable" is the development series' alias used in those names.
UBUNTU_SERIES = (
    "warty", "hoary", "breezy", "dapper", "edgy", "feisty", "gutsy", "hardy", "intrepid", "jaunty",
    "karmic", "lucid", "maverick", "natty", "oneiric", "precise", "quantal", "raring", "saucy",
    "trusty", "utopic", "vivid", "wily", "xenial", "yakkety", "zesty", "artful", "bionic", "cosmic",
    "disco", "eoan", "focal", "groovy", "hirsute", "impish", "jammy", "kinetic", "lunar", "mantic",
    "noble", "oracular", "plucky", "questing", "unstable",
)
# The distro series kbisect compares with mainline, and the upstream base their master kernels
# carry (--distro ubuntu:focal means 5.4; an ubuntu:5.4.0-… spec lists focal). The one table.
DISTRO_SERIES = {
    "ubuntu": {"xenial": "4.4", "bionic": "4.15", "focal": "5.4", "jammy": "5.15", "noble": "6.8"},
    "debian": {"buster": "4.19", "bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12"},
}


def series_of_base(distro: str, base: str) -> str | None:
    """The series of `distro` whose kernels are built on upstream `base` ("5.4" -> "focal")."""
    return next((name for name, b in DISTRO_SERIES.get(distro, {}).items() if b == base), None)


_MAINLINE_DIR_RE = re.compile(r"^v(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?(?:-([a-z]+))?$")


@dataclass(frozen=True)
class MainlineDir:
    """One release directory on the mainline mirror: its version and the series suffix, if any."""

    version: "KernelVersion"
    name: str  # the directory name as published, without the slash: `v4.4.14-xenial`
    suffix: str | None = None  # `xenial`, or None for a plain name

    @property
    def preference(self) -> tuple[int, int]:
        """Which of several directories of one version to use: the plain name first, then the
        newest series (its build is the newest one), so the choice is stable across listings."""
        if self.suffix is None:
            return (1, 0)
        return (0, UBUNTU_SERIES.index(self.suffix))


def parse_mainline_dir_name(name: str) -> MainlineDir | None:
    """A mainline release directory (`v5.7-rc1/`, `v4.4.14-xenial/`), or None for names that are
    not a build of a release (`v4.4-rc2+cod1-wily`, `v5.12-rc1-dontuse`, `daily`)."""
    name = (name or "").strip().rstrip("/")
    m = _MAINLINE_DIR_RE.match(name)
    if not m or (m.group(5) is not None and m.group(5) not in UBUNTU_SERIES):
        return None
    version = _match_version(name[: m.end(4) if m.group(4) else m.end(3) if m.group(3) else m.end(2)])
    return MainlineDir(version, name, m.group(5)) if version is not None else None


def parse_mainline_dir(name: str) -> KernelVersion | None:
    """The version a mainline mirror directory holds (see parse_mainline_dir_name)."""
    found = parse_mainline_dir_name(name)
    return found.version if found else None


# --------------------------------------------------------------------------- Ubuntu mainline packages


@functools.total_ordering
@dataclass(frozen=True)
class MainlinePackageVersion:
    """An Ubuntu mainline build's package version: `5.4.0-050400.201911242031`.

    `abi` is the second field (`050400`, `040600rc1`), `build` the timestamp; two builds of
    the same kernel (some directories hold two) order by their timestamp.
    """

    kernel: KernelVersion
    abi: str
    build: str

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, MainlinePackageVersion):
            return NotImplemented
        return (self.kernel, self.build) < (other.kernel, other.build)

    def __str__(self) -> str:
        return f"{self.kernel.major}.{self.kernel.minor}.{self.kernel.patch}-{self.abi}.{self.build}"

    @property
    def kver_prefix(self) -> str:
        """`uname -r` without the flavour: `5.4.0-050400`, `4.6.0-040600rc1`."""
        return f"{self.kernel.major}.{self.kernel.minor}.{self.kernel.patch}-{self.abi}"


_MAINLINE_PKG_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)-(\d{6,7})(?:rc(\d+))?\.(\d{12})$")


def parse_mainline_package_version(text: str) -> MainlinePackageVersion:
    m = _MAINLINE_PKG_RE.match((text or "").strip())
    if not m:
        raise KbisectError(f"not an Ubuntu mainline package version: {text!r} "
                           "(expected e.g. 5.4.0-050400.201911242031)")
    major, minor, patch, abi, rc, build = m.groups()
    kernel = KernelVersion(int(major), int(minor), int(patch), int(rc) if rc else None)
    return MainlinePackageVersion(kernel, abi + (f"rc{rc}" if rc else ""), build)


# --------------------------------------------------------------------------- Ubuntu distro uploads


def _natural_key(text: str) -> tuple:
    """Order strings like `30`, `30.1`, `30~18.04.1` numerically per component; `~` sorts first."""
    if not text:
        return ()
    parts: list = []
    for tilde, chunk in re.findall(r"(~?)([^~]*)", text):
        if not tilde and not chunk:
            continue
        nums = tuple(int(n) if n.isdigit() else n for n in re.findall(r"\d+|[^\d.+]+", chunk))
        parts.append((0 if tilde else 1, tuple((0, n) if isinstance(n, int) else (1, n) for n in nums)))
    return tuple(parts)


@functools.total_ordering
@dataclass(frozen=True)
class UbuntuVersion:
    """An Ubuntu distro kernel upload: `5.4.0-26.30` (base 5.4.0, ABI 26, upload 30).

    `upstream` is the upstream stable release the upload is based on (`5.4.30`), known only
    from the package's changelog or version signature; it does not take part in ordering.
    """

    base: KernelVersion
    abi: int
    upload: str  # "30", "30.1", "30~18.04.1"
    upstream: KernelVersion | None = field(default=None, compare=False)

    @property
    def sort_key(self) -> tuple:
        from debian.debian_support import Version  # dpkg ordering: "30~18.04.1" < "30" < "30.1"

        return (self.base.sort_key, self.abi, Version(self.upload))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, UbuntuVersion):
            return NotImplemented
        return self.sort_key < other.sort_key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UbuntuVersion):
            return NotImplemented
        return self.sort_key == other.sort_key

    def __hash__(self) -> int:
        return hash(self.sort_key)

    def __str__(self) -> str:
        return f"{self.base.major}.{self.base.minor}.{self.base.patch}-{self.abi}.{self.upload}"

    @property
    def abi_name(self) -> str:
        """`5.4.0-26`: the ABI part of package names (`linux-image-5.4.0-26-generic`)."""
        return f"{self.base.major}.{self.base.minor}.{self.base.patch}-{self.abi}"

    def with_upstream(self, upstream: KernelVersion | None) -> "UbuntuVersion":
        return UbuntuVersion(self.base, self.abi, self.upload, upstream)


_UBUNTU_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)-(\d+)\.(\d+(?:[.~+][0-9A-Za-z.~+]*)?)$")


def parse_ubuntu_version(text: str, upstream: str | None = None) -> UbuntuVersion:
    """Parse `5.4.0-26.30` (optionally with the upstream base it is known to carry)."""
    m = _UBUNTU_RE.match((text or "").strip())
    if not m:
        raise KbisectError(f"not an Ubuntu kernel version: {text!r} (expected e.g. 5.4.0-26.30)")
    major, minor, patch, abi, upload = m.groups()
    return UbuntuVersion(KernelVersion(int(major), int(minor), int(patch)), int(abi), upload,
                         parse_version(upstream) if upstream else None)


# --------------------------------------------------------------------------- Debian


def _debian_compare(a: str, b: str) -> int:
    from debian.debian_support import version_compare  # pure Python; only the comparison

    return version_compare(a, b)


@functools.total_ordering
@dataclass(frozen=True)
class DebianPackageVersion:
    """A Debian `linux` source/binary package version: `6.1.190-1`, `6.12.94-1~bpo12+1`.

    Ordered with dpkg's own rules (python-debian's implementation)."""

    text: str

    @property
    def upstream(self) -> KernelVersion | None:
        m = re.match(r"^(\d+\.\d+(?:\.\d+)?)", self.text)
        return _match_version(m.group(1)) if m else None

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, DebianPackageVersion):
            return NotImplemented
        return _debian_compare(self.text, other.text) < 0

    def __str__(self) -> str:
        return self.text


def parse_debian_package_version(text: str) -> DebianPackageVersion:
    cleaned = (text or "").strip()
    if not re.match(r"^\d+\.\d+(?:\.\d+)?(?:[-+~][0-9A-Za-z.+~-]*)?$", cleaned):
        raise KbisectError(f"not a Debian kernel package version: {text!r} (expected e.g. 6.1.190-1)")
    return DebianPackageVersion(cleaned)


@functools.total_ordering
@dataclass(frozen=True)
class DebianKernel:
    """A Debian kernel ABI name: what `uname -r` prints and the package names carry.

    Two generations of names exist: `6.1.0-54-cloud-amd64` (base 6.1, ABI 54, upstream
    patch level not in the name) and, from trixie, `6.12.94+deb13-cloud-amd64` (upstream
    6.12.94, distribution tag `+deb13`, `+bpo` on backports). The flavour may be absent
    (`6.12.94+deb13`). Within one X.Y the old names order by ABI, the new ones by upstream
    patch level; old names precede new ones of the same X.Y.
    """

    upstream: KernelVersion  # 6.1 for "6.1.0-54", 6.12.94 for "6.12.94+deb13"
    abi: str | None  # "54" for "6.1.0-54", "0.deb11.48" for a backport; None for the "+debNN" generation
    tag: str  # "" or "+deb13", "+bpo", "+deb14"
    flavour: str | None  # "cloud-amd64", "amd64", "rt-amd64"...

    @property
    def sort_key(self) -> tuple:
        generation = 0 if self.abi is not None else 1
        return (self.upstream.base.sort_key, generation, self._abi_key,
                self.upstream.sort_key, _natural_key(self.tag), self.flavour or "")

    @property
    def _abi_key(self) -> tuple[int, int]:
        # A backport ABI "0.deb11.48" is the same upload as "48" rebuilt for an older release:
        # it sorts just before it rather than before every ABI of the series.
        if self.abi is None:
            return (0, 0)
        number = int(self.abi.rsplit(".", 1)[-1])
        return (number, 0 if "." in self.abi else 1)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, DebianKernel):
            return NotImplemented
        return self.sort_key < other.sort_key

    @property
    def abi_name(self) -> str:
        """The name without the flavour: `6.1.0-54`, `6.12.94+deb13`."""
        v = self.upstream
        if self.abi is not None:
            return f"{v.major}.{v.minor}.{v.patch}-{self.abi}"
        return f"{v.major}.{v.minor}.{v.patch}{self.tag}"

    def __str__(self) -> str:
        return self.abi_name + (f"-{self.flavour}" if self.flavour else "")

    def with_flavour(self, flavour: str | None) -> "DebianKernel":
        return DebianKernel(self.upstream, self.abi, self.tag, flavour)


_DEBIAN_OLD_RE = re.compile(r"^(\d+)\.(\d+)\.(0)-(\d+|0\.deb\d+\.\d+)(?:-([a-z][a-z0-9-]*))?$")
_DEBIAN_NEW_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(\+(?:deb\d+|bpo)(?:[a-z0-9.]*)?)(?:-([a-z][a-z0-9-]*))?$")


def parse_debian_kernel(text: str) -> DebianKernel:
    """Parse a Debian ABI name: `6.1.0-54-cloud-amd64`, `6.12.94+deb13`, `6.12.94+deb13-amd64`."""
    cleaned = (text or "").strip()
    m = _DEBIAN_OLD_RE.match(cleaned)
    if m:
        major, minor, patch, abi, flavour = m.groups()
        return DebianKernel(KernelVersion(int(major), int(minor), int(patch)), abi, "", flavour)
    m = _DEBIAN_NEW_RE.match(cleaned)
    if m:
        major, minor, patch, tag, flavour = m.groups()
        return DebianKernel(KernelVersion(int(major), int(minor), int(patch)), None, tag, flavour)
    raise KbisectError(f"not a Debian kernel name: {text!r} (expected e.g. 6.1.0-54-cloud-amd64 "
                       "or 6.12.94+deb13-cloud-amd64)")


def parse_debian_version(text: str) -> DebianKernel | DebianPackageVersion:
    """Any Debian kernel version: an ABI name (`6.1.0-54-cloud-amd64`, `6.12.94+deb13`) or a
    package version (`6.1.190-1`)."""
    try:
        return parse_debian_kernel(text)
    except KbisectError:
        pass
    try:
        return parse_debian_package_version(text)
    except KbisectError:
        raise KbisectError(f"not a Debian kernel version: {text!r} (expected an ABI name such as "
                           "6.1.0-54-cloud-amd64 or a package version such as 6.1.190-1)") from None


# --------------------------------------------------------------------------- specs

SOURCES = ("mainline", "ubuntu", "debian", "local")


def _valid_version(source: str, version: str) -> bool:
    try:
        if source == "mainline":
            parse_version(version)
        elif source == "ubuntu":
            parse_ubuntu_version(version)
        elif source == "debian":
            parse_debian_kernel(version)
        else:
            return bool(version) and "/" not in version and version not in (".", "..")
    except KbisectError:
        return False
    return True


def normalize_version(source: str, version: str) -> str:
    """The canonical display form of a version within a source (`v4.15` -> `4.15`)."""
    if source == "mainline":
        return str(parse_version(version))
    if source == "ubuntu":
        return str(parse_ubuntu_version(version))
    if source == "debian":
        return str(parse_debian_kernel(version))
    return version


@dataclass(frozen=True)
class KernelRef:
    """One kernel's identity: `SOURCE:VERSION[+VARIANT]`, plus its content id once known.

    The one type for "a kernel" from listing to verdict store, so no layer re-encodes the spec
    string and parses it back. `str(ref)` is the spec (`mainline:5.7-rc4`,
    `debian:6.1.0-54-cloud-amd64+revert-227adfb2b1df`) and never shows the id: the id
    (orchestrator.core.identity) is learnt only when the bytes are unpacked, and the same name can
    come to stand for other bytes (a rebuilt `local:` tree), which is why it is part of equality.
    """

    source: str
    version: str
    variant: str | None = None
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.cache_name}" if self.source else self.cache_name

    @property
    def spec(self) -> str:
        return str(self)

    @property
    def base_spec(self) -> "KernelRef":
        """The same kernel without its variant (and so without the variant's id)."""
        return KernelRef(self.source, self.version)

    @property
    def cache_name(self) -> str:
        """The directory name under kernels/<source>/: `<version>` or `<version>+<variant>`."""
        return self.version + (f"+{self.variant}" if self.variant else "")

    def with_id(self, id: str | None) -> "KernelRef":
        """The same kernel, now that its content id is known."""
        return replace(self, id=id or None)

    @classmethod
    def of(cls, text: str) -> "KernelRef":
        """The ref a spec string names, keeping the string verbatim (`str(KernelRef.of(t)) == t`).

        Parsed when the string is a canonical spec; anything else (a recorded spec from an older
        release, a test's `test:corrupt`) is split at its first `:` and carried as it is, since
        the record holding it must be written back unchanged."""
        try:
            parsed = parse_spec(text)
        except KbisectError:
            parsed = None
        if parsed is not None and str(parsed) == text:
            return parsed
        source, sep, rest = text.partition(":")
        return cls(source, rest) if sep else cls("", text)  # no source: str() is `text` again


_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_spec(text: str) -> KernelRef:
    """Parse `SOURCE:VERSION[+NAME]`; a bare version means mainline. One clear line on failure.

    Debian names can themselves hold a `+` (`6.12.94+deb13-amd64`), so the variant is only
    split off when the whole string is not already a valid version of the source.
    """
    raw = (text or "").strip()
    if not raw:
        raise KbisectError("empty kernel spec (expected SOURCE:VERSION, e.g. mainline:5.7-rc4)")
    if ":" in raw:
        source, _, rest = raw.partition(":")
        source = source.strip().lower()
        if source not in SOURCES:
            raise KbisectError(f"unknown kernel source {source!r} in {text!r} (known: {', '.join(SOURCES)})")
    else:
        source, rest = "mainline", raw
    rest = rest.strip()
    version, variant = rest, None
    if source == "local":
        # Local names are free-form: the last `+NAME` is the variant (a trailing `+`, as in a
        # dirty-tree `6.9.0-rc1+`, is part of the name).
        head, sep, tail = rest.rpartition("+")
        if sep and head and tail:
            version, variant = head, tail
    elif not _valid_version(source, rest) and "+" in rest:
        head, _, tail = rest.rpartition("+")
        if _valid_version(source, head):
            version, variant = head, tail
    if variant is not None and not _VARIANT_RE.match(variant):
        raise KbisectError(f"bad variant name {variant!r} in {text!r} (letters, digits, . _ - only)")
    if variant == "":
        variant = None
    if not _valid_version(source, version):
        raise KbisectError(f"not a {source} kernel version: {rest!r} in spec {text!r}")
    return KernelRef(source, normalize_version(source, version), variant)
