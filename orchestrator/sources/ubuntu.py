"""Ubuntu distro kernel uploads (e.g. focal's 5.4.0-N.M), for comparing a distro lineage with mainline.

Listing reads Launchpad's published-sources API for the `linux` source package in one
series. Fetching asks Launchpad for the upload's binary files with their SHA-256
(`binaryFileUrls?include_meta=true`) and downloads the unsigned image, the modules and the
modules-extra packages from the archive pool, falling back to Launchpad's `+files` link
for builds the archive no longer carries. The upstream stable base an upload carries is
read from its changelog ("vX.Y.Z upstream stable release") and recorded in kernel.json.

`--mirror URL` replaces both the API and the archive base (`URL/api/1.0/`, `URL/ubuntu/`),
which is how the tests serve a fake.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from urllib.parse import urlencode

from orchestrator import cache
from orchestrator.errors import KbisectError, UnavailableError
from orchestrator.kernel import MANIFEST, UnpackedKernel
from orchestrator.sources import KernelEntry, KernelFile, Source
from orchestrator.versions import (
    UbuntuVersion,
    parse_ubuntu_version,
    parse_version,
    upstream_from_changelog,
)

API = "https://api.launchpad.net/1.0/"
UBUNTU_CODENAMES = {"xenial", "bionic", "focal", "jammy", "noble", "oracular", "plucky", "questing"}
FLAVOUR = "generic"
# the series whose master kernel is X.Y (a `--from`/`--to` bound picks the series)
SERIES_OF_BASE = {"4.4": "xenial", "4.15": "bionic", "5.4": "focal", "5.15": "jammy", "6.8": "noble"}
DEFAULT_SERIES = "focal"
MAX_PAGES = 50


class UbuntuSource(Source):
    name = "ubuntu"

    def __init__(self, mirror: str | None = None, series: str | None = None) -> None:
        mirror = mirror or os.environ.get("KBISECT_UBUNTU_MIRROR") or None
        super().__init__(mirror)
        if mirror:
            base = mirror if mirror.endswith("/") else mirror + "/"
            self.api, self.archive = base + "api/1.0/", base + "ubuntu/"
        else:
            self.api, self.archive = API, _machine_archive()
        self.series = series or os.environ.get("KBISECT_UBUNTU_SERIES") or None

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
            series = SERIES_OF_BASE.get(f"{base.major}.{base.minor}")
            if series:
                return series
            raise KbisectError(f"no Ubuntu series known for {text} (set KBISECT_UBUNTU_SERIES)")
        return DEFAULT_SERIES

    def _published(self, **params: str) -> list[dict]:
        query = {"ws.op": "getPublishedSources", "source_name": "linux", "exact_match": "true", **params}
        url: str | None = f"{self.api}ubuntu/+archive/primary?{urlencode(query)}"
        entries: list[dict] = []
        for _ in range(MAX_PAGES):
            if not url:
                break
            page = cache.http_get_json(url)
            if not isinstance(page, dict):
                raise KbisectError(f"Launchpad answered nothing usable for {url}")
            entries.extend(page.get("entries") or [])
            url = page.get("next_collection_link")
        return entries

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        series = self._series_for(lo, hi)
        entries = self._published(distro_series=f"{self.api}ubuntu/{series}")
        low = _bound(lo)
        high = _bound(hi)
        seen: dict[UbuntuVersion, KernelEntry] = {}
        for pub in entries:
            try:
                version = parse_ubuntu_version(pub.get("source_package_version", ""))
            except KbisectError:
                continue
            if low and version < low or high and version > high:
                continue
            if version in seen:
                seen[version].extra["pockets"].append(pub.get("pocket"))
                continue
            seen[version] = KernelEntry(self.name, str(version), True, None, [], version.sort_key,
                                        {"series": series, "status": pub.get("status"),
                                         "pockets": [pub.get("pocket")]})
        return sorted(seen.values(), key=lambda e: e.sort_key)

    def files(self, version: UbuntuVersion) -> list[KernelFile]:
        """The amd64 generic image, modules and modules-extra packages of one upload, with SHA-256."""
        pubs = self._published(version=str(version))
        if not pubs:
            raise UnavailableError(f"ubuntu:{version}: Launchpad has no upload of linux {version}")
        link = pubs[0].get("self_link")
        if not link:
            raise KbisectError(f"ubuntu:{version}: Launchpad entry without self_link")
        meta = cache.http_get_json(f"{link}?{urlencode({'ws.op': 'binaryFileUrls', 'include_meta': 'true'})}")
        if not isinstance(meta, list):
            raise UnavailableError(f"ubuntu:{version}: Launchpad lists no binaries for linux {version}")
        by_name: dict[str, dict] = {}
        for item in meta:
            url = item.get("url") if isinstance(item, dict) else item
            if url:
                by_name[url.rsplit("/", 1)[-1]] = item if isinstance(item, dict) else {"url": url}
        abi = f"{version.abi_name}-{FLAVOUR}"
        suffix = f"_{version}_amd64.deb"
        image = next((n for n in (f"linux-image-unsigned-{abi}{suffix}", f"linux-image-{abi}{suffix}")
                      if n in by_name), None)
        if image is None:
            raise UnavailableError(f"ubuntu:{version}: no amd64 {FLAVOUR} image among the upload's binaries")
        wanted = [image]
        for name in (f"linux-modules-{abi}{suffix}", f"linux-modules-extra-{abi}{suffix}"):
            if name in by_name:
                wanted.append(name)
        if image.startswith("linux-image-unsigned-") and len(wanted) == 1:
            raise UnavailableError(f"ubuntu:{version}: no linux-modules package for {abi}")
        files = []
        for name in wanted:
            item = by_name[name]
            if not item.get("sha256"):
                raise UnavailableError(f"ubuntu:{version}: Launchpad gives no SHA-256 for {name}")
            pool = f"{self.archive}pool/main/l/linux/{name}" if self.archive else None
            files.append(KernelFile(name=name, url=pool or item["url"], sha256=item["sha256"],
                                    size=item.get("size"), package=name.split("_", 1)[0],
                                    package_version=str(version), mirrors=[item["url"]] if pool else []))
        return files

    def fetch(self, version: str) -> UnpackedKernel:
        parsed = parse_ubuntu_version(version)
        target = self.target(str(parsed))
        if (target / MANIFEST).exists():
            return UnpackedKernel.load(target)
        files = self.files(parsed)
        debs = [cache.download([f.url, *f.mirrors], cache.downloads_dir(self.name) / f.name, f.sha256, f.size)
                for f in files]
        upstream = changelog_upstream(debs)
        extra = {"upstream": str(upstream) if upstream else None, "abi": parsed.abi_name,
                 "files": [f.to_dict() for f in files]}
        return cache.unpack_debs(debs, target, f"ubuntu:{parsed}", extra)


def _machine_archive() -> str | None:
    """The Ubuntu archive base to take pool files from: $KBISECT_UBUNTU_ARCHIVE, else the Ubuntu
    mirror this machine's apt already uses; None means Launchpad's +files links only."""
    configured = os.environ.get("KBISECT_UBUNTU_ARCHIVE")
    if configured:
        return configured if configured.endswith("/") else configured + "/"
    from orchestrator.sources.debian import machine_repos

    for repo in machine_repos():
        if any(s.split("-")[0] in UBUNTU_CODENAMES for s in repo.suites) and "ports" not in repo.uri:
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


def changelog_upstream(debs: list[Path]):
    """The newest "vX.Y.Z upstream stable release" any of the packages' changelogs names."""
    from debian.debfile import DebFile

    best = None
    for deb in debs:
        try:
            data = DebFile(str(deb)).data.tgz()
            for member in data:
                name = str(member.name)
                if member.isfile() and "/usr/share/doc/" in "/" + name.lstrip("./") and \
                        name.endswith(("changelog.Debian.gz", "changelog.gz")):
                    handle = data.extractfile(member)
                    if handle is None:
                        continue
                    text = gzip.decompress(handle.read()).decode("utf-8", "replace")
                    found = upstream_from_changelog(text)
                    if found and (best is None or found > best):
                        best = found
        except Exception:  # noqa: BLE001 - a changelog is a nice-to-have; unpack reports real damage
            continue
    return best
