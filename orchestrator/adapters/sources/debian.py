"""Debian's kernels, through apt's own client.

Versions are the ABI names the packages carry (`6.1.0-54-cloud-amd64`,
`6.12.94+deb13-cloud-amd64`). The machine's own apt sources are never edited: kbisect
keeps its own sources list, lists and package cache under $KBISECT_HOME/apt and passes
them with `-o Dir::Etc::SourceList=… -o Dir::Etc::SourceParts=/dev/null
-o Dir::State::Lists=… -o Dir::Cache=…` to `apt-get update`, `apt-cache` and
`apt-get download`. The mirror URI is the one the machine already uses (read from
/etc/apt at run time), so kbisect goes wherever this machine is allowed to go.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.adapters.fsutil import atomic_write, run_ticking
from orchestrator.adapters import cache, config, unpack
from orchestrator.core.errors import ChecksumError, KbisectError, SourceUnreachable, UnavailableError
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.adapters.sources import KernelEntry, KernelFile, Source
from orchestrator.core.versions import DebianKernel, KernelVersion, parse_debian_kernel, parse_version

SUITES = ("bullseye", "bookworm", "bookworm-backports", "trixie", "sid")
SECURITY_SUITES = ("bullseye-security", "bookworm-security", "trixie-security")
FLAVOURS = ("cloud-amd64", "amd64")
DEFAULT_FLAVOUR = "cloud-amd64"
MAX_AGE = 24 * 3600  # refresh the package lists once a day
KNOWN_CODENAMES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                   "stable", "testing", "unstable", "oldstable", "oldoldstable"}
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_SOURCES = Path("/etc/apt")

_IMAGE_RE = re.compile(r"^linux-image-(?P<name>.+?)(?P<unsigned>-unsigned)?$")


def full_name(version: str) -> str:
    """`6.1.0-54` -> `6.1.0-54-cloud-amd64`: a name without flavour means the default flavour."""
    kernel = parse_debian_kernel(version)
    return str(kernel if kernel.flavour else kernel.with_flavour(DEFAULT_FLAVOUR))


@dataclass
class AptRepo:
    uri: str
    suites: list[str]
    signed_by: str | None


def machine_repos(etc: Path = APT_SOURCES) -> list[AptRepo]:
    """The `deb` repositories this machine's apt already uses (deb822 .sources and one-line .list)."""
    repos: list[AptRepo] = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list")) + \
        sorted((etc / "sources.list.d").glob("*.sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    repos.append(AptRepo(uri, fields.get("suites", "").split(), fields.get("signed-by") or None))
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"^deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
                if not m:
                    continue
                signed = re.search(r"signed-by=(\S+)", m["opts"] or "")
                repos.append(AptRepo(m["uri"], [m["suite"]], signed.group(1) if signed else None))
    return repos


def sources_list(repos: list[AptRepo], override: str | None = None) -> str:
    """kbisect's own sources.list: the machine's Debian mirror URI with the extra suites."""
    main = security = None
    for repo in repos:
        codenames = [s for s in repo.suites if s.split("-")[0] in KNOWN_CODENAMES]
        if not codenames:
            continue
        if any(s.endswith("-security") for s in codenames):
            security = security or repo
        else:
            main = main or repo
    if override:
        main = AptRepo(override, [], main.signed_by if main else None)
    if main is None:
        raise KbisectError("no Debian mirror found in /etc/apt sources (needed by the debian source); "
                           "pass --mirror URI or set KBISECT_DEBIAN_MIRROR")

    def line(repo: AptRepo, suite: str) -> str:
        keyring = repo.signed_by or (DEFAULT_KEYRING if Path(DEFAULT_KEYRING).exists() else None)
        opts = f"[signed-by={keyring}] " if keyring else ""
        return f"deb {opts}{repo.uri} {suite} main"

    lines = [line(main, s) for s in SUITES]
    if security is not None and not override:
        lines += [line(security, s) for s in SECURITY_SUITES]
    return "\n".join(lines) + "\n"


class Apt:
    """apt-get / apt-cache pointed at kbisect's private sources, lists and cache."""

    def __init__(self, mirror: str | None = None) -> None:
        self.root = config.subdir("apt")
        self.lists = self.root / "lists"
        self.cachedir = self.root / "cache"
        self.sources = self.root / "sources.list"
        self.mirror = mirror or os.environ.get("KBISECT_DEBIAN_MIRROR") or None

    @property
    def options(self) -> list[str]:
        opts = [
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.lists}",
            "-o", f"Dir::Cache={self.cachedir}",
            # our own binary caches (some images disable them globally), so apt-cache is quick
            "-o", "Dir::Cache::pkgcache=pkgcache.bin",
            "-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin",
        ]
        if os.geteuid() == 0:
            # The private dirs live in root's home, which apt's _apt sandbox user cannot enter.
            opts += ["-o", "APT::Sandbox::User=root"]
        return opts

    def _run(self, args: list[str], what: str, capture: bool = True, cwd: Path | None = None,
             timeout: float = 1800, tick: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
        """apt-get/apt-cache with kbisect's options, waited for in this thread (fsutil.run_ticking):
        a SIGTERM kills it at once, as Ctrl-C does, instead of waiting out a download."""
        if shutil.which(args[0]) is None:
            raise KbisectError(f"{args[0]} not found: the debian source needs apt")
        stdout = subprocess.PIPE
        if not capture:
            # apt's own progress lines go to our stderr (stdout stays clean for --json), when
            # stderr is a real file; under capturing harnesses they are collected and relayed.
            try:
                sys.stderr.fileno()
                stdout = sys.stderr
            except (AttributeError, OSError, ValueError):
                stdout = subprocess.PIPE
        try:
            result = run_ticking(args[:1] + self.options + args[1:], cwd=cwd, text=True, timeout=timeout, tick=tick,
                                 stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            raise KbisectError(f"{what} timed out after {timeout:.0f}s") from None
        if not capture and stdout is subprocess.PIPE and result.stdout:
            sys.stderr.write(result.stdout)
        return result

    @staticmethod
    def _first_error(stderr: str) -> str:
        for line in (stderr or "").splitlines():
            if line.startswith(("E:", "Err:", "W: Failed to fetch")):
                return line.strip()
        lines = [line for line in (stderr or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    def has_lists(self) -> bool:
        return self.lists.is_dir() and any(p.name.endswith(tuple(("Packages", "Packages.lz4", "Packages.gz",
                                                                        "Packages.xz", "Packages.zst")))
                                           for p in self.lists.iterdir())

    def ensure_updated(self, force: bool = False) -> None:
        """Run `apt-get update` on kbisect's private lists when missing, stale (> 1 day) or re-pointed."""
        wanted = sources_list(machine_repos(), self.mirror)
        stamp = self.root / "updated"
        with cache.locked(self.root / "update"):
            current = self.sources.read_text() if self.sources.exists() else None
            fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < MAX_AGE
            if not force and current == wanted and fresh and self.has_lists():
                return
            atomic_write(self.sources, wanted)
            (self.lists / "partial").mkdir(parents=True, exist_ok=True)
            (self.cachedir / "archives" / "partial").mkdir(parents=True, exist_ok=True)
            print("kbisect: refreshing Debian package lists (apt-get update)…", file=sys.stderr)
            result = self._run(["apt-get", "update", "-q"], "apt-get update")
            if not self.has_lists():
                # apt-get update exits 0 when no index could be fetched ("W: Failed to fetch …
                # Could not connect", "W: Some index files failed to download"): no lists at
                # all means the archive was not reached, never that it holds no kernels
                raise SourceUnreachable(f"the Debian archive at {_archive_uri(wanted)} was unreachable: apt-get "
                                        f"update fetched no package lists ({self._first_error(result.stderr)})")
            if result.returncode != 0:
                print(f"kbisect: warning: apt-get update partly failed ({self._first_error(result.stderr)}); "
                      "using the lists it has", file=sys.stderr)
            stamp.touch()

    def pkgnames(self, prefix: str) -> list[str]:
        result = self._run(["apt-cache", "pkgnames", prefix], "apt-cache pkgnames")
        if result.returncode != 0:
            raise KbisectError(f"apt-cache pkgnames failed: {self._first_error(result.stderr)}")
        return sorted(set(result.stdout.split()))

    def show(self, packages: list[str]) -> list[dict[str, str]]:
        """The available versions of `packages` as apt records (virtual names simply yield none)."""
        from debian.deb822 import Deb822

        records: list[dict[str, str]] = []
        for start in range(0, len(packages), 200):
            chunk = packages[start:start + 200]
            result = self._run(["apt-cache", "show", *chunk], "apt-cache show")
            if result.returncode != 0 and not result.stdout.strip():
                continue  # none of these are real packages
            for para in Deb822.iter_paragraphs(result.stdout.splitlines(keepends=True)):
                if "Package" in para and "Filename" in para:
                    records.append(dict(para))
        return records

    def download(self, package: str, version: str, into: Path, tick: Callable[[], None] | None = None) -> Path:
        """`apt-get download package=version` into `into`; returns the .deb apt wrote. `tick` is
        called while it runs (a progress line)."""
        into.mkdir(parents=True, exist_ok=True)
        result = self._run(["apt-get", "download", "-q", f"{package}={version}"], "apt-get download", cwd=into,
                           tick=tick)
        debs = sorted(into.glob("*.deb"))
        if result.returncode != 0 or not debs:
            error = self._first_error(result.stderr)
            if re.search(r"\b(404|410)\b", error):
                raise UnavailableError(f"{package}={version}: the archive no longer serves it ({error})")
            # refused or not reached: this one package cannot be had now (a skip, app.policy)
            raise SourceUnreachable(f"apt-get download {package}={version} failed: {error}")
        return debs[0]


def _archive_uri(sources: str) -> str:
    """The archive URI of the first line of a sources.list (for an error line)."""
    m = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", sources, re.M)
    return m.group(1) if m else "the configured mirror"


def _preference(record: dict[str, str]) -> tuple:
    """Sort key, best first: the unsigned package (plain contents) before the signed one, newer first."""
    from debian.debian_support import Version

    return (0 if "-unsigned" in record["Package"] else 1, _Neg(Version(record["Version"])))


class _Neg:
    """Reverse a comparable inside a sort key."""

    def __init__(self, value) -> None:
        self.value = value

    def __lt__(self, other: "_Neg") -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Neg) and other.value == self.value


def _is_split(record: dict[str, str]) -> bool:
    """Newer Debian kernels split the image package: it only depends on linux-binary-*
    (vmlinuz), linux-modules-* and linux-base-* (config, System.map)."""
    return "linux-binary-" in record.get("Depends", "") + record.get("Pre-Depends", "")


def _file(record: dict[str, str]) -> KernelFile:
    size = record.get("Size", "")
    return KernelFile(name=record["Filename"].rsplit("/", 1)[-1], url=None, sha256=record.get("SHA256"),
                      size=int(size) if size.isdigit() else None, package=record["Package"],
                      package_version=record["Version"])


class DebianSource(Source):
    name = "debian"

    def __init__(self, mirror: str | None = None) -> None:
        super().__init__(mirror)
        self.apt = Apt(mirror)

    def _images(self, names: list[str]) -> dict[DebianKernel, list[dict[str, str]]]:
        """Image package records per kernel, best first."""
        found: dict[DebianKernel, list[dict[str, str]]] = {}
        for record in self.apt.show(names):
            m = _IMAGE_RE.match(record["Package"])
            if not m or record.get("Architecture", "amd64") not in ("amd64", "all"):
                continue
            try:
                kernel = parse_debian_kernel(m["name"])
            except KbisectError:
                continue
            if kernel.flavour not in FLAVOURS:
                continue
            found.setdefault(kernel, []).append(record)
        for records in found.values():
            records.sort(key=_preference)
        return found

    def _entries(self, images: dict[DebianKernel, list[dict[str, str]]]) -> list[KernelEntry]:
        split = [k for k, records in images.items() if _is_split(records[0])]
        parts: dict[str, list[dict[str, str]]] = {}
        if split:
            wanted = [f"{prefix}-{k}" for k in split
                      for prefix in ("linux-binary-unsigned", "linux-binary", "linux-modules", "linux-base")]
            for record in self.apt.show(wanted):
                parts.setdefault(record["Package"], []).append(record)
        return [self._entry(k, records, parts) for k, records in images.items()]

    def _entry(self, kernel: DebianKernel, records: list[dict[str, str]],
               parts: dict[str, list[dict[str, str]]]) -> KernelEntry:
        image = records[0]
        version = image["Version"]
        upstream = re.match(r"^(\d+\.\d+(?:\.\d+)?)", version)
        extra = {"package": image["Package"], "package_version": version,
                 "upstream": upstream.group(1) if upstream else None, "flavour": kernel.flavour,
                 "pool_path": image["Filename"]}
        if not _is_split(image):
            files = [_file(image)]
            extra["alternatives"] = [_file(r).to_dict() for r in records[1:]]
            return KernelEntry(self.name, str(kernel), True, None, files, kernel.sort_key, extra)

        def pick(*packages: str) -> dict[str, str] | None:
            for package in packages:
                same = [r for r in parts.get(package, []) if r["Version"] == version]
                if same:
                    return same[0]
            return None

        chosen = [pick(f"linux-binary-unsigned-{kernel}", f"linux-binary-{kernel}"),
                  pick(f"linux-modules-{kernel}"), pick(f"linux-base-{kernel}")]
        if any(c is None for c in chosen[:2]):
            return KernelEntry(self.name, str(kernel), False,
                               f"split packages of {version} incomplete (linux-binary/linux-modules missing)",
                               [], kernel.sort_key, extra)
        files = [_file(c) for c in chosen if c is not None]
        extra["layout"] = "split"
        return KernelEntry(self.name, str(kernel), True, None, files, kernel.sort_key, extra)

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        self.apt.ensure_updated()
        names = []
        for name in self.apt.pkgnames("linux-image-"):
            m = _IMAGE_RE.match(name)
            if not m:
                continue
            try:
                kernel = parse_debian_kernel(m["name"])
            except KbisectError:
                continue  # meta packages (linux-image-amd64), -dbg, templates
            if kernel.flavour in FLAVOURS:
                names.append(name)
        entries = [e for e in self._entries(self._images(names)) if _in_range(e, lo, hi)]
        return sorted(entries, key=lambda e: e.sort_key)

    def entry(self, version: str) -> KernelEntry:
        kernel = parse_debian_kernel(full_name(version))
        self.apt.ensure_updated()
        images = self._images([f"linux-image-{kernel}-unsigned", f"linux-image-{kernel}"])
        if kernel not in images:
            raise UnavailableError(f"debian:{kernel}: no package linux-image-{kernel}[-unsigned] in "
                                   f"{', '.join(SUITES)} (see `kbisect kernels list --source debian`)")
        return self._entries({kernel: images[kernel]})[0]

    def _download(self, item: KernelFile) -> Path:
        """One package through `apt-get download`, verified against the lists' SHA-256, into the cache."""
        dest = cache.downloads_dir(self.name) / item.name
        with cache.locked(dest):
            if dest.exists() and item.sha256 and cache.sha256_file(dest) != item.sha256:
                dest.unlink()  # tampered or damaged cache entry: fetch again
            if dest.exists():
                return dest
            work = cache.downloads_dir(self.name) / f".apt-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            try:
                got = self.apt.download(item.package or "", item.package_version or "", work)
                if item.sha256:
                    digest = cache.sha256_file(got)
                    if digest != item.sha256:
                        raise ChecksumError(f"{item.name}: sha256 mismatch (expected {item.sha256}, got {digest}); "
                                            "file discarded")
                os.replace(got, dest)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        print(f"kbisect: downloaded {item.name}", file=sys.stderr)
        return dest

    def fetch(self, version: str) -> UnpackedKernel:
        name = full_name(version)
        target = self.target(name)
        if (target / MANIFEST).exists():
            return UnpackedKernel.load(target)
        entry = self.entry(name)
        if not entry.available:
            raise UnavailableError(f"debian:{name}: {entry.reason}")
        files = list(entry.files)
        debs = []
        for index, item in enumerate(files):
            try:
                debs.append(self._download(item))
            except UnavailableError:
                # e.g. the unsigned build is gone from the archive: the signed package has the same files
                alternatives = [KernelFile(**a) for a in entry.extra.get("alternatives", [])]
                if index != 0 or not alternatives:
                    raise
                files[0] = alternatives[0]
                debs.append(self._download(alternatives[0]))
        extra = {k: entry.extra.get(k) for k in ("package", "package_version", "upstream", "flavour")}
        extra["files"] = [f.to_dict() for f in files]
        return unpack.unpack_debs(debs, target, f"debian:{name}", extra)


def _in_range(entry: KernelEntry, lo: str | None, hi: str | None) -> bool:
    """Bounds are ABI names (exact order) or upstream versions: `6.1` means the whole 6.1 series."""
    kernel = parse_debian_kernel(entry.version)
    upstream = parse_version(entry.upstream) if entry.upstream else kernel.upstream

    def bound(text: str) -> DebianKernel | KernelVersion:
        try:
            return parse_debian_kernel(text)
        except KbisectError:
            return parse_version(text)

    if lo:
        b = bound(lo)
        if isinstance(b, DebianKernel):
            if kernel.with_flavour(None).sort_key < b.with_flavour(None).sort_key:
                return False
        elif (upstream.base < b) if b.patch == 0 and not b.is_rc else (upstream < b):
            return False
    if hi:
        b = bound(hi)
        if isinstance(b, DebianKernel):
            if kernel.with_flavour(None).sort_key > b.with_flavour(None).sort_key:
                return False
        elif (upstream.base > b) if b.patch == 0 and not b.is_rc else (upstream > b):
            return False
    return True
