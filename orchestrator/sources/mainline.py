"""Ubuntu's mainline kernel builds (kernel.ubuntu.com/mainline), read from its Apache index pages.

Two layouts exist and both must work:
- old (up to 5.6.17 / 5.7-rc7): debs at the top of `vX.Y/`, with `CHECKSUMS` and `BUILT`
  ("Build for amd64 succeeded …");
- new (from 5.7.2 / 5.8-rc1): `vX.Y/amd64/` holding the debs, `CHECKSUMS` and `status`
  ("Test amd64/build succeeded (rc=0, …)" or "… failed (rc=2, …)").
Failed or missing builds are listed as unavailable with a reason. A directory holding two
builds (two timestamps) yields files of one build only. Only amd64 `generic` is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urljoin

from orchestrator import cache, config
from orchestrator.errors import KbisectError, UnavailableError
from orchestrator.kernel import UnpackedKernel
from orchestrator.sources import KernelEntry, KernelFile, Source
from orchestrator.versions import (
    KernelVersion,
    parse_mainline_dir,
    parse_mainline_package_version,
    parse_version,
)

DEFAULT_URL = "https://kernel.ubuntu.com/mainline/"
FLAVOUR = "generic"
ARCH = "amd64"

_HREF_RE = re.compile(r"""href\s*=\s*["']([^"'?#]+)["']""", re.IGNORECASE)
_DEB_RE = re.compile(
    r"^linux-(?P<kind>image-unsigned|image|modules)-(?P<kver>\d+\.\d+\.\d+-\d{6,7}(?:rc\d+)?)-(?P<flavour>[a-z0-9]+)"
    r"_(?P<pkgver>[^_]+)_(?P<arch>[a-z0-9]+)\.deb$")
_SHA256_RE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


def links(page: str, base: str | None = None) -> list[str]:
    """The link targets of an Apache index page relative to `base`, decoded (`v5.7-rc1/`, `CHECKSUMS`...).

    Sort links (`?C=N;O=D`), the parent directory and links elsewhere are dropped."""
    out = []
    for href in _HREF_RE.findall(page or ""):
        if base is not None and href.startswith(("/", "http:", "https:")):
            absolute = urljoin(base, href)
            if not absolute.startswith(base) or absolute == base:
                continue
            href = absolute[len(base):]
        href = unquote(href)
        if not href or href.startswith(("/", "http:", "https:", "mailto:", "../", "./")) or href.startswith("?"):
            continue
        out.append(href)
    return out


def parse_checksums(text: str) -> dict[str, str]:
    """SHA-256 lines of a CHECKSUMS file (SHA-1 lines are skipped by their length), keyed by file name."""
    sums: dict[str, str] = {}
    for line in (text or "").splitlines():
        m = _SHA256_RE.match(line.strip())
        if m:
            sums[m.group(2).rsplit("/", 1)[-1]] = m.group(1).lower()
    return sums


def build_status(text: str | None, layout: str) -> tuple[bool, str | None]:
    """Did the amd64 build succeed, per `status` (new layout) or `BUILT` (old layout)?"""
    if text is None:
        return (False, "no build status file (status)") if layout == "new" else (True, None)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if layout == "new":
        mine = [line for line in lines if f"{ARCH}/build" in line]
        if not mine:
            return False, f"no {ARCH} build in status"
        for line in mine:
            if "failed" in line.lower():
                return False, f"{ARCH} build failed: {line}"
        if any("succeeded" in line.lower() for line in mine):
            return True, None
        return False, f"{ARCH} build status unclear: {mine[0]}"
    mine = [line for line in lines if re.search(rf"\b{ARCH}\b", line) and line.lower().startswith("build for")]
    if any("failed" in line.lower() for line in mine):
        return False, f"{ARCH} build failed: {mine[0]}"
    if mine and not any("succeeded" in line.lower() for line in mine):
        return False, f"{ARCH} build status unclear: {mine[0]}"
    return True, None


def choose_build(debs: list[str]) -> tuple[list[str], str] | None:
    """Pick the files of one build: the newest timestamp that has a bootable set for amd64 generic.

    A bootable set is an image package plus its modules package, or (before ~4.18) a single
    `linux-image-…` package that carries the modules itself.
    """
    builds: dict[str, dict[str, str]] = {}
    for name in debs:
        m = _DEB_RE.match(name)
        if not m or m["arch"] != ARCH or m["flavour"] != FLAVOUR:
            continue
        builds.setdefault(m["pkgver"], {})[m["kind"]] = name
    complete: list[tuple[str, list[str]]] = []
    for pkgver, kinds in builds.items():
        if "modules" in kinds and ("image-unsigned" in kinds or "image" in kinds):
            image = kinds.get("image-unsigned") or kinds["image"]
            complete.append((pkgver, [image, kinds["modules"]]))
        elif "image" in kinds and "modules" not in kinds:
            complete.append((pkgver, [kinds["image"]]))
    if not complete:
        return None

    def stamp(pkgver: str) -> str:
        try:
            return parse_mainline_package_version(pkgver).build
        except KbisectError:
            return pkgver

    pkgver, files = max(complete, key=lambda item: stamp(item[0]))
    return files, pkgver


class MainlineSource(Source):
    name = "mainline"

    def __init__(self, mirror: str | None = None) -> None:
        super().__init__(mirror)
        # The environment variable lets every command (bisect, bugs verify, sweep) use a local
        # mirror without a flag on each; an explicit --mirror still wins.
        base = mirror or os.environ.get("KBISECT_MAINLINE_MIRROR") or DEFAULT_URL
        self.base = base if base.endswith("/") else base + "/"

    # ------------------------------------------------------------------ listing

    def directories(self) -> tuple[list[KernelVersion], list[str]]:
        """The versions on the mirror, and the odd directory names that were left out."""
        page = cache.http_get_text(self.base)
        if page is None:
            raise KbisectError(f"mainline mirror {self.base} has no index page")
        versions: dict[KernelVersion, None] = {}
        odd: list[str] = []
        for href in links(page, self.base):
            if not href.endswith("/") or not href.startswith("v") or "/" in href[:-1]:
                continue
            version = parse_mainline_dir(href)
            if version is None:
                odd.append(href.rstrip("/"))
            else:
                versions[version] = None
        return sorted(versions), odd

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        low = parse_version(lo) if lo else None
        high = parse_version(hi) if hi else None
        versions, _odd = self.directories()
        wanted = [v for v in versions if (low is None or v >= low) and (high is None or v <= high)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            entries = list(pool.map(self._listed_entry, wanted))
        return sorted(entries, key=lambda e: e.sort_key)

    def _memo_path(self, version: KernelVersion) -> Path:
        key = hashlib.sha256(self.base.encode()).hexdigest()[:16]
        return config.subdir("listings") / "mainline" / key / f"{version}.json"

    def _listed_entry(self, version: KernelVersion) -> KernelEntry:
        """entry() for listings, remembered on disk once settled (a finished or failed build does not
        change), so listing hundreds of directories costs the requests only once; fetch() always re-reads."""
        memo = self._memo_path(version)
        if memo.exists():
            try:
                record = json.loads(memo.read_text())
                files = [KernelFile(**f) for f in record.pop("files")]
                return KernelEntry(files=files, sort_key=version.sort_key, **record)
            except (ValueError, TypeError, KeyError):
                memo.unlink(missing_ok=True)
        try:
            entry = self.entry(version)
        except KbisectError as exc:  # one unreadable directory must not sink the whole listing
            return KernelEntry(self.name, str(version), False, str(exc), [], version.sort_key, {})
        settled = entry.available or "build failed" in (entry.reason or "")
        if settled:
            memo.parent.mkdir(parents=True, exist_ok=True)
            record = {"source": entry.source, "version": entry.version, "available": entry.available,
                      "reason": entry.reason, "extra": entry.extra, "files": [vars(f) for f in entry.files]}
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(json.dumps(record))
            tmp.replace(memo)
        return entry

    def entry(self, version: KernelVersion) -> KernelEntry:
        """Everything about one version directory: layout, build status, the chosen build's files."""
        top = urljoin(self.base, f"{version.mainline_dir}/")

        def unavailable(reason: str, **extra) -> KernelEntry:
            return KernelEntry(self.name, str(version), False, reason, [], version.sort_key, dict(extra))

        page = cache.http_get_text(top)
        if page is None:
            return unavailable(f"no directory {version.mainline_dir}/ on the mirror")
        hrefs = links(page, top)
        if f"{ARCH}/" in hrefs:
            layout, where = "new", urljoin(top, f"{ARCH}/")
            sub = cache.http_get_text(where)
            if sub is None:
                return unavailable(f"{ARCH}/ listed but missing", layout=layout)
            hrefs = links(sub, where)
            status = cache.http_get_text(urljoin(where, "status"))
        else:
            layout, where = "old", top
            status = cache.http_get_text(urljoin(where, "BUILT")) if "BUILT" in hrefs else None
        ok, why = build_status(status, layout)
        if not ok:
            return unavailable(why or "build failed", layout=layout)
        chosen = choose_build([h for h in hrefs if h.endswith(".deb")])
        if chosen is None:
            return unavailable(f"no {ARCH} {FLAVOUR} image in {version.mainline_dir}/", layout=layout)
        names, pkgver = chosen
        checksums_text = cache.http_get_text(urljoin(where, "CHECKSUMS")) if "CHECKSUMS" in hrefs else None
        if checksums_text is None:
            return unavailable("no CHECKSUMS file to verify the packages against", layout=layout)
        sums = parse_checksums(checksums_text)
        files = []
        for name in names:
            if name not in sums:
                return unavailable(f"CHECKSUMS has no SHA-256 for {name}", layout=layout)
            files.append(KernelFile(name=name, url=urljoin(where, name), sha256=sums[name],
                                    package=name.split("_", 1)[0], package_version=pkgver))
        m = _DEB_RE.match(names[0])
        kver = f"{m['kver']}-{FLAVOUR}" if m else None
        return KernelEntry(self.name, str(version), True, None, files, version.sort_key,
                           {"layout": layout, "build": pkgver, "kver": kver, "lineage": version.lineage})

    # ------------------------------------------------------------------ fetching

    def fetch(self, version: str) -> UnpackedKernel:
        parsed = parse_version(version)
        target = self.target(str(parsed))
        done = _load_if_done(target)
        if done is not None:
            return done
        entry = self.entry(parsed)
        if not entry.available:
            raise UnavailableError(f"mainline:{parsed}: {entry.reason}")
        debs = []
        for item in entry.files:
            dest = cache.downloads_dir(self.name) / item.name
            debs.append(cache.download(item.url, dest, item.sha256, item.size))
        extra = {"build": entry.extra.get("build"), "layout": entry.extra.get("layout"),
                 "upstream": str(parsed), "lineage": parsed.lineage,
                 "files": [f.to_dict() for f in entry.files]}
        return cache.unpack_debs(debs, target, f"mainline:{parsed}", extra)


def _load_if_done(target) -> UnpackedKernel | None:
    from orchestrator.kernel import MANIFEST

    return UnpackedKernel.load(target) if (target / MANIFEST).exists() else None
