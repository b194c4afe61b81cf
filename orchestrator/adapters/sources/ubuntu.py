"""Ubuntu distro kernel uploads (e.g. focal's 5.4.0-N.M), for comparing a distro lineage with mainline.

Launchpad is asked the way it really answers (see /work/shared/real-layouts.md, and the
Launchpad source `lib/lp/soyuz/interfaces/publishing.py`):

- listing: the primary archive's `getPublishedSources` for the `linux` source package in one
  series, a paged collection (`entries`, `next_collection_link`). Only Published and Superseded
  publications were real uploads; Deleted and Obsolete ones (pulled from -proposed, say) are
  listed as unavailable with their status as the reason.
- hashes: a *source* publication's `binaryFileUrls()` gives bare URLs, so the SHA-256 of each
  binary comes from the source publication's `getPublishedBinaries`, then the *binary*
  publication's `binaryFileUrls(include_meta=true)`, which exists only in the `devel` web
  service. That is why the API root is always `<api>/devel/`.
- files: the amd64 generic image (`linux-image-unsigned-…`, or `linux-image-…` up to xenial),
  `linux-modules-…`, `linux-modules-extra-…` and, on xenial (4.4), `linux-image-extra-…` where
  most modules live. They come from the archive pool, falling back to Launchpad's `+files`
  link for builds the archive no longer carries; every one is checked against its SHA-256.
- upstream base: read from the changelog ("vX.Y.Z upstream stable release", plus the
  unnumbered "upstream stable patchset" merges once a stable line ended) into kernel.json.

A mirror (`--mirror`, `--distro-mirror`, $KBISECT_UBUNTU_MIRROR) stands for all three hosts:
`URL/api/` is the API root (`URL/api/devel/…`), `URL/ubuntu/` the archive and `URL/launchpad/`
stands for launchpad.net (`URL/launchpad/ubuntu/+archive/primary/+files/<deb>`). Without one,
the public Launchpad hosts are used and the archive is the one this machine's apt uses.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from orchestrator.adapters import cache, unpack
from orchestrator.core.errors import KbisectError, UnavailableError
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.adapters.sources import KernelEntry, KernelFile, Source
from orchestrator.core.changelog import ChangelogUpstream, upstream_stable_from_changelog
from orchestrator.core.versions import (
    UBUNTU_SERIES,
    UbuntuVersion,
    parse_ubuntu_version,
    parse_version,
    series_of_base,
)

# Public hosts, used only without a mirror. The web-service version is appended to the API root.
PUBLIC_API_ROOT = "https://api.launchpad.net/"
PUBLIC_LAUNCHPAD = "https://launchpad.net/"
WS_VERSION = "devel"  # binaryFileUrls(include_meta) on binary publications exists only here
FILES_PATH = "ubuntu/+archive/primary/+files/"
POOL_DIR = "l/linux/"  # pool/<component>/l/linux/ for everything the `linux` source builds

FLAVOUR = "generic"
ARCH = "amd64"
# without a bound naming a base (the series of X.Y: core.versions.DISTRO_SERIES)
DEFAULT_SERIES = "focal"
USABLE_STATUSES = ("Published", "Superseded")  # preferred first
POCKET_ORDER = ("Release", "Security", "Updates", "Proposed", "Backports")
PAGE_SIZE = 300  # large batches, fewer round trips for long histories (the server caps the size itself)
MAX_PAGES = 200


@dataclass(frozen=True)
class Endpoints:
    """Where each of the three Ubuntu hosts is reached (all under one mirror in tests)."""

    api: str  # the web-service root with its version: ".../devel/"
    files: str  # Launchpad's +files directory for the primary archive
    archive: str | None  # the archive base holding pool/; None: +files only

    @classmethod
    def for_mirror(cls, mirror: str | None) -> Endpoints:
        if not mirror:
            return cls(PUBLIC_API_ROOT + WS_VERSION + "/", PUBLIC_LAUNCHPAD + FILES_PATH, _machine_archive())
        base = mirror if mirror.endswith("/") else mirror + "/"
        return cls(f"{base}api/{WS_VERSION}/", f"{base}launchpad/{FILES_PATH}", f"{base}ubuntu/")


class UbuntuSource(Source):
    name = "ubuntu"

    def __init__(self, mirror: str | None = None, series: str | None = None) -> None:
        mirror = mirror or os.environ.get("KBISECT_UBUNTU_MIRROR") or None
        super().__init__(mirror)
        self.endpoints = Endpoints.for_mirror(mirror)
        self.api, self.archive = self.endpoints.api, self.endpoints.archive
        self.series = series or os.environ.get("KBISECT_UBUNTU_SERIES") or None

    # -- Launchpad ------------------------------------------------------------------------

    def _series_for(self, *versions: str | None) -> str:
        if self.series:
            return self.series
        for text in versions:
            if not text:
                continue
            try:
                base = parse_ubuntu_version(text).base
            except KbisectError:
                base = parse_version(text).base
            series = series_of_base("ubuntu", f"{base.major}.{base.minor}")
            if series:
                return series
            raise KbisectError(f"no Ubuntu series known for {text} (set KBISECT_UBUNTU_SERIES)")
        return DEFAULT_SERIES

    def _series_link(self, series: str) -> str:
        return f"{self.api}ubuntu/{series}"

    def _published_sources(self, **params: str) -> list[dict]:
        """Every publication of the `linux` source matching `params`, all statuses, all pages."""
        query = {"ws.op": "getPublishedSources", "source_name": "linux", "exact_match": "true",
                 "ws.size": str(PAGE_SIZE), **params}
        entries = _collection(f"{self.api}ubuntu/+archive/primary?{urlencode(query)}")
        return [e for e in entries if e.get("source_package_name", "linux") == "linux"]

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        series = self._series_for(lo, hi)
        low, high = _bound(lo), _bound(hi)
        grouped: dict[UbuntuVersion, list[dict]] = {}
        for pub in self._published_sources(distro_series=self._series_link(series)):
            try:
                version = parse_ubuntu_version(pub.get("source_package_version", ""))
            except KbisectError:
                continue
            if low and version < low or high and version > high:
                continue
            grouped.setdefault(version, []).append(pub)
        return [_entry(self.name, series, version, pubs) for version, pubs in sorted(grouped.items())]

    def _source_publication(self, version: UbuntuVersion) -> dict:
        """The publication of `version` to take binaries from; refuses Deleted/Obsolete uploads."""
        params = {"version": str(version)}
        if self.series:
            params["distro_series"] = self._series_link(self.series)
        pubs = [p for p in self._published_sources(**params) if p.get("source_package_version") == str(version)]
        if not pubs:
            raise UnavailableError(f"ubuntu:{version}: Launchpad has no upload of linux {version}")
        usable = sorted((p for p in pubs if p.get("status") in USABLE_STATUSES),
                        key=lambda p: USABLE_STATUSES.index(p["status"]))
        if not usable:
            raise UnavailableError(f"ubuntu:{version}: {_status_reason(pubs)}: not a real upload, not fetched")
        if not usable[0].get("self_link"):
            raise KbisectError(f"ubuntu:{version}: Launchpad entry without self_link")
        return usable[0]

    def _binaries(self, version: UbuntuVersion, source_pub: dict) -> dict[str, dict]:
        """The amd64 binary publications this upload built, by package name.

        `active_binaries_only=false`: by default Launchpad returns only Published and Pending
        binary publications, which would hide every binary of a Superseded upload.
        """
        query = {"ws.op": "getPublishedBinaries", "active_binaries_only": "false", "ws.size": str(PAGE_SIZE)}
        found: dict[str, dict] = {}
        for pub in _collection(f"{source_pub['self_link']}?{urlencode(query)}"):
            if (pub.get("binary_package_version") != str(version) or pub.get("status") not in USABLE_STATUSES
                    or not str(pub.get("distro_arch_series_link", "")).rstrip("/").endswith(f"/{ARCH}")):
                continue
            name = pub.get("binary_package_name")
            if name and (name not in found or pub["status"] == "Published"):
                found[name] = pub
        return found

    def _file_meta(self, version: UbuntuVersion, binary_pub: dict, deb: str) -> dict:
        """url, size, sha1 and sha256 of one binary publication's .deb (devel-only include_meta)."""
        link = binary_pub.get("self_link")
        if not link:
            raise KbisectError(f"ubuntu:{version}: Launchpad binary entry without self_link")
        meta = cache.http_get_json(f"{link}?{urlencode({'ws.op': 'binaryFileUrls', 'include_meta': 'true'})}")
        for item in meta if isinstance(meta, list) else []:
            if isinstance(item, dict) and str(item.get("url", "")).rsplit("/", 1)[-1] == deb:
                if not item.get("sha256"):
                    break
                return item
        raise UnavailableError(f"ubuntu:{version}: Launchpad gives no SHA-256 for {deb}")

    def files(self, version: UbuntuVersion) -> list[KernelFile]:
        """The amd64 generic image and module packages of one upload, each with its SHA-256."""
        binaries = self._binaries(version, self._source_publication(version))
        return [self._kernel_file(version, name, binaries[name]) for name in _wanted(version, binaries)]

    def _kernel_file(self, version: UbuntuVersion, package: str, binary_pub: dict) -> KernelFile:
        deb = f"{package}_{version}_{ARCH}.deb"
        meta = self._file_meta(version, binary_pub, deb)
        fallback = self.endpoints.files + deb
        archive = self.endpoints.archive
        component = binary_pub.get("component_name") or "main"
        pool = f"{archive}pool/{component}/{POOL_DIR}{deb}" if archive else None
        size = meta.get("size")
        return KernelFile(name=deb, url=pool or fallback, sha256=str(meta["sha256"]).lower(),
                          size=size if isinstance(size, int) else None, package=package,
                          package_version=str(version), mirrors=[fallback] if pool else [])

    # -- fetch ----------------------------------------------------------------------------

    def fetch(self, version: str) -> UnpackedKernel:
        parsed = parse_ubuntu_version(version)
        target = self.target(str(parsed))
        if (target / MANIFEST).exists():
            return UnpackedKernel.load(target)
        files = self.files(parsed)
        debs = [cache.download([f.url, *f.mirrors], cache.downloads_dir(self.name) / f.name, f.sha256, f.size)
                for f in files]
        extra = {"abi": parsed.abi_name, "files": [f.to_dict() for f in files],
                 **_upstream_extra(changelog_upstream(debs))}
        return unpack.unpack_debs(debs, target, f"ubuntu:{parsed}", extra)


# ------------------------------------------------------------------------------ helpers


def _collection(url: str) -> list[dict]:
    """All entries of a Launchpad collection, following `next_collection_link` page by page."""
    entries: list[dict] = []
    next_url: str | None = url
    for _ in range(MAX_PAGES):
        if not next_url:
            return entries
        page = cache.http_get_json(next_url)
        if not isinstance(page, dict) or not isinstance(page.get("entries", []), list):
            raise KbisectError(f"Launchpad answered nothing usable for {cache.short_url(next_url)}")
        entries.extend(e for e in page.get("entries") or [] if isinstance(e, dict))
        next_url = page.get("next_collection_link")
    raise KbisectError(f"Launchpad collection longer than {MAX_PAGES} pages at {cache.short_url(url)}")


def _status_reason(pubs: list[dict]) -> str:
    statuses = sorted({str(p.get("status") or "unknown") for p in pubs})
    return "Launchpad status " + ", ".join(statuses)


def _entry(source: str, series: str, version: UbuntuVersion, pubs: list[dict]) -> KernelEntry:
    """One listed upload: available when any of its publications was a real upload."""
    statuses = [p.get("status") for p in pubs]
    best = next((s for s in USABLE_STATUSES if s in statuses), None)
    pockets = sorted({p.get("pocket") or "?" for p in pubs},
                     key=lambda p: (POCKET_ORDER.index(p) if p in POCKET_ORDER else len(POCKET_ORDER), p))
    extra = {"series": series, "status": best or statuses[0], "statuses": sorted({str(s) for s in statuses}),
             "pockets": pockets}
    return KernelEntry(source, str(version), best is not None, None if best else _status_reason(pubs),
                       [], version.sort_key, extra)


def _wanted(version: UbuntuVersion, binaries: dict[str, dict]) -> list[str]:
    """The packages to unpack: the image, then whichever module packages the upload built."""
    abi = f"{version.abi_name}-{FLAVOUR}"
    image = next((n for n in (f"linux-image-unsigned-{abi}", f"linux-image-{abi}") if n in binaries), None)
    if image is None:
        raise UnavailableError(f"ubuntu:{version}: no {ARCH} {FLAVOUR} image among the upload's binaries")
    # linux-image-extra: xenial (4.4) keeps most modules there and has no linux-modules package
    modules = [n for n in (f"linux-modules-{abi}", f"linux-modules-extra-{abi}", f"linux-image-extra-{abi}")
               if n in binaries]
    if image.startswith("linux-image-unsigned-") and f"linux-modules-{abi}" not in modules:
        raise UnavailableError(f"ubuntu:{version}: no linux-modules package for {abi}")
    return [image, *modules]


def _machine_archive() -> str | None:
    """The Ubuntu archive base to take pool files from: $KBISECT_UBUNTU_ARCHIVE, else the Ubuntu
    mirror this machine's apt already uses; None means Launchpad's +files links only."""
    configured = os.environ.get("KBISECT_UBUNTU_ARCHIVE")
    if configured:
        return configured if configured.endswith("/") else configured + "/"
    from orchestrator.adapters.sources.debian import machine_repos

    for repo in machine_repos():
        if any(s.split("-")[0] in UBUNTU_SERIES for s in repo.suites) and "ports" not in repo.uri:
            return repo.uri if repo.uri.endswith("/") else repo.uri + "/"
    return None


def _bound(text: str | None) -> UbuntuVersion | None:
    if not text:
        return None
    try:
        return parse_ubuntu_version(text)
    except KbisectError:
        base = parse_version(text)  # "5.4" = from the first upload of 5.4.0
        return UbuntuVersion(base, 0, "0") if text == str(base) else parse_ubuntu_version(text)


# ------------------------------------------------------------------------------ changelog

_CHANGELOGS = ("changelog.Debian.gz", "changelog.Debian.old.gz")  # newest first, then the history


def _upstream_extra(found: ChangelogUpstream | None) -> dict:
    """kernel.json fields for the upstream base (and the patchsets merged on top of it)."""
    if found is None:
        return {"upstream": None}
    extra: dict = {"upstream": str(found.base) if found.base else None}
    if found.patchsets:
        extra.update(upstream_patchsets=len(found.patchsets), upstream_newest_patchset=found.patchsets[0],
                     upstream_note=found.note)
    return extra


def _changelog_text(deb: Path) -> str | None:
    """A package's changelog followed by its history (`changelog.Debian.old.gz`), or None."""
    data, scratch = unpack.open_data(deb, deb.parent)
    parts: dict[str, str] = {}
    try:
        for member in data:
            name = "/" + str(member.name).lstrip("./")
            base = name.rsplit("/", 1)[-1]
            if member.isfile() and name.startswith("/usr/share/doc/") and base in _CHANGELOGS and base not in parts:
                handle = data.extractfile(member)
                if handle is not None:
                    parts[base] = gzip.decompress(handle.read()).decode("utf-8", "replace")
    finally:
        data.close()
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    return "\n".join(parts[n] for n in _CHANGELOGS if n in parts) if parts else None


def changelog_upstream(debs: list[Path]) -> ChangelogUpstream | None:
    """What the upload's changelog says about its upstream stable base.

    The packages of one upload share one changelog, so the smallest package that carries it is
    read (the modules packages are hundreds of MB). A changelog is a nice-to-have: a package
    that cannot be read here is skipped, and unpacking reports real damage.
    """
    for deb in sorted(debs, key=lambda d: d.stat().st_size):
        try:
            text = _changelog_text(deb)
        except (KbisectError, tarfile.TarError, OSError, EOFError, zlib.error):
            continue
        found = upstream_stable_from_changelog(text) if text else None
        if found is not None:
            return found
    return None
