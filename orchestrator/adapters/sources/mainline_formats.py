"""The files kernel.ubuntu.com/mainline publishes, read (pure text in, records out).

The formats are those the Ubuntu kernel team's build scripts write (kteam-tools,
`mainline-build/`), with verbatim samples in ../shared/real-layouts.md; see the source module
(mainline.py) for how a directory's layouts and builds are chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin

from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import parse_mainline_package_version

FLAVOUR = "generic"
ARCH = "amd64"
# what a build's exit code in amd64/status means (the kernel team's dashboard: 0 pass, 1 setup, 2 fail)
EXIT_MEANING = {1: "setup failure", 2: "build failure"}

_HREF_RE = re.compile(r"""<a\s[^>]*href\s*=\s*["']([^"'#]+)["']""", re.IGNORECASE)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")
DEB_RE = re.compile(
    r"^linux-(?P<kind>image-unsigned|image|modules)-(?P<kver>\d+\.\d+\.\d+-\d{6,7}(?:rc\d+)?)-(?P<flavour>[a-z0-9]+)"
    r"_(?P<pkgver>[^_]+)_(?P<arch>[a-z0-9]+)\.deb$")
_SHA256_RE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
_STATUS_LINE_RE = re.compile(r"^Status:\s*(\S+)\s+(-?\d+)\s*$")
_HEADER_RE = re.compile(rf"(?:Test {ARCH}/build|Build for {ARCH}) (succeeded|failed)", re.IGNORECASE)


# ---------------------------------------------------------------------------------- index pages

@dataclass(frozen=True)
class IndexRow:
    """One entry of an Apache index page: the decoded name (`v5.7/`, `CHECKSUMS`) and its date."""

    name: str
    modified: str | None = None


def index_rows(page: str, base: str | None = None) -> list[IndexRow]:
    """The entries of an Apache index page relative to `base`.

    Sort links (`?C=N;O=D`), the parent directory and links elsewhere are dropped. The date
    is the first `YYYY-MM-DD hh:mm` after the link and before the next one (the fancy table's
    "Last modified" cell): a directory's date changes when it is re-published.
    """
    matches = list(_HREF_RE.finditer(page or ""))
    rows: list[IndexRow] = []
    for i, m in enumerate(matches):
        href = _relative(m.group(1), base)
        if href is None:
            continue
        tail = page[m.end(): matches[i + 1].start() if i + 1 < len(matches) else len(page)]
        date = _DATE_RE.search(tail)
        rows.append(IndexRow(href, date.group(0) if date else None))
    return rows


def _relative(href: str, base: str | None) -> str | None:
    if base is not None and href.startswith(("/", "http:", "https:")):
        absolute = urljoin(base, href)
        if not absolute.startswith(base) or absolute == base:
            return None
        href = absolute[len(base):]
    href = unquote(href)
    if not href or href.startswith(("/", "http:", "https:", "mailto:", "../", "./", "?")):
        return None
    return href


def links(page: str, base: str | None = None) -> list[str]:
    """The names an index page links to (see index_rows)."""
    return [row.name for row in index_rows(page, base)]


# ---------------------------------------------------------------------------------- status files

@dataclass(frozen=True)
class BuildStatus:
    """What a status file says: ok True/False, or None when it says nothing (judge by files)."""

    ok: bool | None
    reason: str | None = None
    note: str | None = None


def arch_status(text: str | None) -> BuildStatus:
    """`amd64/status`: the build's exit code on one line (`echo "$rc" >"$result/status"`)."""
    if text is None:
        return BuildStatus(None)
    first = (text.strip().splitlines() or [""])[0].strip()
    if not re.fullmatch(r"-?\d+", first):
        return BuildStatus(False, f"{ARCH}/status unreadable: {first[:40]!r}")
    rc = int(first)
    if rc == 0:
        return BuildStatus(True)
    meaning = EXIT_MEANING.get(rc, "failed")
    return BuildStatus(False, f"{ARCH} build failed: {meaning} ({ARCH}/status {rc})")


def selftests_note(text: str | None) -> str | None:
    """`amd64/self-tests/status`: a failure is worth a note; the kernel itself was built."""
    status = arch_status(text)
    if status.ok is False:
        return f"{ARCH} self-tests did not pass ({ARCH}/self-tests/status {(text or '').strip()[:10]})"
    return None


def built_status(text: str | None) -> BuildStatus:
    """Flat layout `BUILT`: `Status: amd64 0` and `Status: binary-headers 0` mean built."""
    if text is None:
        return BuildStatus(None)
    codes: dict[str, int] = {}
    for line in text.splitlines():
        m = _STATUS_LINE_RE.match(line.strip())
        if m:
            codes[m.group(1)] = int(m.group(2))
    if not codes:
        return BuildStatus(None, note="BUILT has no Status: lines (built before Nov 2015): judged by the "
                                      "packages and CHECKSUMS present")
    for part in (ARCH, "binary-headers"):
        if part not in codes:
            return BuildStatus(False, f"BUILT has no 'Status: {part}' line")
        if codes[part] != 0:
            meaning = EXIT_MEANING.get(codes[part], "failed")
            return BuildStatus(False, f"{part} build failed: {meaning} (BUILT Status: {part} {codes[part]})")
    return BuildStatus(True)


def header_opinion(html: str | None) -> BuildStatus:
    """The sentence on HEADER.html, used only when the status file itself is missing."""
    m = _HEADER_RE.search(html or "")
    if m is None:
        return BuildStatus(None)
    if m.group(1).lower() == "succeeded":
        return BuildStatus(True, note=f"no status file; HEADER.html says: {m.group(0)}")
    return BuildStatus(False, f"{ARCH} build failed (HEADER.html: {m.group(0)})")


def parse_checksums(text: str) -> dict[str, str]:
    """SHA-256 lines of a CHECKSUMS file (SHA-1 lines are skipped by their length), keyed by file name."""
    sums: dict[str, str] = {}
    for line in (text or "").splitlines():
        m = _SHA256_RE.match(line.strip())
        if m:
            sums[m.group(2).rsplit("/", 1)[-1]] = m.group(1).lower()
    return sums


def parse_commit(text: str | None) -> dict[str, str]:
    """`COMMIT`: the tag (or label) on the first line and the upstream sha on the second, as the
    build scripts write it (`echo "$commit"; echo "$sha1"`). Read leniently: any 40-hex word is the sha."""
    out: dict[str, str] = {}
    words = (text or "").split()
    sha = next((w for w in words if re.fullmatch(r"[0-9a-f]{40}", w)), None)
    label = next((w for w in words if w != sha), None)
    if sha:
        out["commit"] = sha
    if label:
        out["commit_label"] = label
    return out


# ---------------------------------------------------------------------------------- builds

@dataclass(frozen=True)
class Build:
    """One complete amd64 generic build in one directory of one layout."""

    layout: str  # "flat" or "per-arch"
    where: str  # URL of the directory holding its debs
    pkgver: str
    debs: tuple[str, ...]

    @property
    def stamp(self) -> str:
        try:
            return parse_mainline_package_version(self.pkgver).build
        except KbisectError:
            return self.pkgver


def complete_builds(names: list[str], layout: str, where: str) -> list[Build]:
    """The bootable amd64 generic sets among `names`, one per package version.

    A bootable set is an image package plus its modules package, or (before ~4.18) a single
    `linux-image-…` package that carries the modules itself.
    """
    kinds_of: dict[str, dict[str, str]] = {}
    for name in names:
        m = DEB_RE.match(name)
        if m and m["arch"] == ARCH and m["flavour"] == FLAVOUR:
            kinds_of.setdefault(m["pkgver"], {})[m["kind"]] = name
    builds = []
    for pkgver, kinds in kinds_of.items():
        image = kinds.get("image-unsigned") or kinds.get("image")
        if image and "modules" in kinds:
            builds.append(Build(layout, where, pkgver, (image, kinds["modules"])))
        elif "image" in kinds and "modules" not in kinds:
            builds.append(Build(layout, where, pkgver, (kinds["image"],)))
    return sorted(builds, key=lambda b: b.stamp)


@dataclass
class Choice:
    """What one layout of a directory offers: its newest verifiable build, or why none."""

    layout: str
    build: Build | None = None
    sums: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    unverified: bool = False
    signature: str | None = None  # "good" when checked against a keyring
