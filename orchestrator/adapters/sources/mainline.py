"""Ubuntu's mainline kernel builds (kernel.ubuntu.com/mainline), read as the service publishes them.

The formats are those the Ubuntu kernel team's build scripts write (kteam-tools,
`mainline-build/`), summarised with verbatim samples in ../shared/real-layouts.md:

- Layout is decided per directory by what it holds, not by version: flat (debs, `CHECKSUMS`
  and `BUILT` at the top) or per-arch (`amd64/` holding debs, `CHECKSUMS` and `status`).
  v5.7 holds both (built flat, then rebuilt into `amd64/`); the newest good build wins.
- `amd64/status` holds only the build's exit code (`0` built, `1` setup failure, `2` build
  failure); `amd64/self-tests/status` is a note, never a reason to skip the kernel.
- `BUILT` is key/value (`Status: amd64 0`, `Status: binary-headers 0`); before Nov 2015 it has
  no `Status:` lines and the build is judged by the packages and checksums present.
- `HEADER.html` sentences ("Test amd64/build succeeded (rc=0, …)") are a second opinion only
  when a status file is missing.
- `CHECKSUMS` covers the latest publication of a directory only; none exists before March 2015.
- Releases before mid-2016 may exist only under a series suffix (`v4.4.14-xenial/`).

A failed build is listed unavailable with its reason; only good builds are remembered between
listings, because the service rebuilds failures and re-publishes builds later.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin

from orchestrator.adapters import cache, config, unpack
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.errors import KbisectError, SignatureError, UnavailableError
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.adapters.sources import KernelEntry, KernelFile, Source
from orchestrator.adapters.sources.mainline_formats import (
    ARCH,
    DEB_RE,
    FLAVOUR,
    Build,
    BuildStatus,
    Choice,
    arch_status,
    built_status,
    complete_builds,
    header_opinion,
    index_rows,
    links,
    parse_checksums,
    parse_commit,
    selftests_note,
)
from orchestrator.core.versions import (
    KernelVersion,
    MainlineDir,
    parse_mainline_dir_name,
    parse_version,
)

DEFAULT_URL = "https://kernel.ubuntu.com/mainline/"
# ---------------------------------------------------------------------------------- the source

def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"kbisect: warning: {message}\n")


class MainlineSource(Source):
    name = "mainline"

    def __init__(self, mirror: str | None = None, *, allow_unverified: bool = False,
                 keyring: str | Path | None = None, refresh: bool = False,
                 warn: Callable[[str], None] = _stderr_warning) -> None:
        super().__init__(mirror)
        # The environment variables let every command (bisect, bugs verify, sweep) use a local
        # mirror or a keyring without a flag on each; an explicit option still wins.
        base = mirror or os.environ.get("KBISECT_MAINLINE_MIRROR") or DEFAULT_URL
        self.base = base if base.endswith("/") else base + "/"
        self.allow_unverified = allow_unverified or os.environ.get("KBISECT_ALLOW_UNVERIFIED") == "1"
        ring = keyring or os.environ.get("KBISECT_MAINLINE_KEYRING") or None
        self.keyring = Path(ring).resolve() if ring else None
        if self.keyring is not None and not self.keyring.is_file():
            raise KbisectError(f"--keyring {ring}: no such file")
        self.refresh = refresh
        self.warn = warn
        # listing memos are kept per mirror and keyring: hashed once here, not per directory;
        # a kernel verified with this keyring records the same hash in its kernel.json
        self.keyring_sha256 = cache.sha256_file(self.keyring) if self.keyring else None
        self._memo_key = hashlib.sha256(f"{self.base}\n{self.keyring_sha256 or ''}".encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ listing

    def directories(self) -> tuple[dict[KernelVersion, tuple[MainlineDir, str | None]], list[str]]:
        """Each version on the mirror with the directory used for it (and that row's date),
        and the directory names that are not releases."""
        page = cache.http_get_text(self.base)
        if page is None:
            raise KbisectError(f"mainline mirror {self.base} has no index page")
        chosen: dict[KernelVersion, tuple[MainlineDir, str | None]] = {}
        odd: list[str] = []
        for row in index_rows(page, self.base):
            if not row.name.endswith("/") or "/" in row.name[:-1] or not row.name.startswith("v"):
                continue
            mdir = parse_mainline_dir_name(row.name)
            if mdir is None:
                odd.append(row.name.rstrip("/"))
            elif mdir.version not in chosen or mdir.preference > chosen[mdir.version][0].preference:
                chosen[mdir.version] = (mdir, row.modified)
        return chosen, odd

    def list(self, lo: str | None = None, hi: str | None = None) -> list[KernelEntry]:
        low = parse_version(lo) if lo else None
        high = parse_version(hi) if hi else None
        dirs, _odd = self.directories()
        wanted = [dirs[v] for v in sorted(dirs) if (low is None or v >= low) and (high is None or v <= high)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(lambda item: self._listed_entry(*item), wanted))

    def _memo_path(self, mdir: MainlineDir) -> Path:
        return config.subdir("listings") / "mainline" / self._memo_key / f"{mdir.name}.json"

    def _listed_entry(self, mdir: MainlineDir, modified: str | None) -> KernelEntry:
        """entry() for listings. Only good, verified builds are remembered, keyed by the
        directory's date on the index page: a failed, missing or unreadable build is read again
        next time (the service rebuilds failures), and a re-published build replaces the old one."""
        memo = self._memo_path(mdir)
        if modified and not self.refresh:
            remembered = _read_memo(memo, modified)
            if remembered is not None:
                return remembered
        try:
            entry = self.entry(mdir)
        except KbisectError as exc:  # one unreadable directory must not sink the whole listing
            return KernelEntry(self.name, str(mdir.version), False, str(exc), [], mdir.version.sort_key,
                               {"dir": mdir.name})
        if entry.available and modified and not entry.extra.get("unverified"):
            _write_memo(memo, modified, entry)
        return entry

    def entry(self, mdir: MainlineDir) -> KernelEntry:
        """Everything about one version directory: its layouts, build status, the chosen build."""
        top = urljoin(self.base, f"{mdir.name}/")
        page = cache.http_get_text(top)
        if page is None:
            return self._unavailable(mdir, f"no directory {mdir.name}/ on the mirror")
        rows = links(page, top)
        choices = []
        if f"{ARCH}/" in rows:
            choices.append(self._per_arch(top))
        if "BUILT" in rows or any(name.endswith(".deb") for name in rows):
            choices.append(self._flat(top, rows))
        good = [c for c in choices if c.build is not None and c.reason is None]
        if not good:
            reasons = [c.reason for c in choices if c.reason]
            why = reasons[0] if reasons else f"no {ARCH} build in {mdir.name}/"
            entry = self._unavailable(mdir, why, notes=[n for c in choices for n in c.notes])
            if any(c.signature == "bad" for c in choices):
                entry.extra["signature"] = "bad"
            return entry
        best = max(good, key=lambda c: c.build.stamp)
        return self._available(mdir, top, rows, best)

    def _unavailable(self, mdir: MainlineDir, reason: str, notes: list[str] | None = None) -> KernelEntry:
        extra: dict = {"dir": mdir.name}
        if notes:
            extra["notes"] = notes
        return KernelEntry(self.name, str(mdir.version), False, reason, [], mdir.version.sort_key, extra)

    def _available(self, mdir: MainlineDir, top: str, rows: list[str], best: Choice) -> KernelEntry:
        build = best.build
        files = [KernelFile(name=name, url=urljoin(build.where, name), sha256=best.sums.get(name),
                            package=name.split("_", 1)[0], package_version=build.pkgver) for name in build.debs]
        m = DEB_RE.match(build.debs[0])
        extra: dict = {"layout": best.layout, "build": build.pkgver, "dir": mdir.name,
                       "kver": f"{m['kver']}-{FLAVOUR}" if m else None, "lineage": mdir.version.lineage,
                       "meta": [name for name in ("COMMIT", "CHANGES") if name in rows]}
        if best.notes:
            extra["notes"] = best.notes
        if best.unverified:
            extra["unverified"] = True
        if best.signature:
            extra["signature"] = best.signature
        return KernelEntry(self.name, str(mdir.version), True, None, files, mdir.version.sort_key, extra)

    def _per_arch(self, top: str) -> Choice:
        where = urljoin(top, f"{ARCH}/")
        page = cache.http_get_text(where)
        if page is None:
            return Choice("per-arch", reason=f"{ARCH}/ listed but missing")
        rows = links(page, where)
        status = arch_status(cache.http_get_text(urljoin(where, "status")) if "status" in rows else None)
        if status.ok is None:
            status = header_opinion(cache.http_get_text(urljoin(top, "HEADER.html")))
            if status.ok is None:
                status = BuildStatus(False, f"no {ARCH}/status (build not finished, or not published)")
        choice = self._verified_build("per-arch", complete_builds(rows, "per-arch", where), where, rows, status)
        if "self-tests/" in rows:
            note = selftests_note(cache.http_get_text(urljoin(where, "self-tests/status")))
            if note:
                choice.notes.append(note)
        return choice

    def _flat(self, top: str, rows: list[str]) -> Choice:
        status = built_status(cache.http_get_text(urljoin(top, "BUILT")) if "BUILT" in rows else None)
        if status.ok is None and "BUILT" not in rows:
            status = header_opinion(cache.http_get_text(urljoin(top, "HEADER.html")))
        return self._verified_build("flat", complete_builds(rows, "flat", top), top, rows, status)

    def _verified_build(self, layout: str, builds: list[Build], where: str, rows: list[str],
                        status: BuildStatus) -> Choice:
        """The newest build CHECKSUMS covers (it covers the latest publication only), checked
        against the keyring when one is given; without CHECKSUMS only with --allow-unverified."""
        choice = Choice(layout, notes=[status.note] if status.note else [])
        if status.ok is False:
            choice.reason = status.reason
            return choice
        if not builds:
            choice.reason = f"no {ARCH} {FLAVOUR} image in the {layout} build"
            return choice
        if "CHECKSUMS" not in rows:
            choice.build = builds[-1]
            if self.allow_unverified:
                choice.unverified = True
                choice.notes.append("no CHECKSUMS (published before March 2015): fetched unverified")
            else:
                choice.reason = "no CHECKSUMS: cannot verify (--allow-unverified fetches it anyway)"
            return choice
        text = cache.http_get_text(urljoin(where, "CHECKSUMS")) or ""
        if self.keyring is not None:
            problem = self._signature_problem(where, rows, text)
            if problem:
                choice.reason = problem
                choice.signature = "bad"
                return choice
            choice.signature = "good"
        sums = parse_checksums(text)
        covered = [b for b in builds if all(name in sums for name in b.debs)]
        if not covered:
            choice.reason = f"CHECKSUMS covers no complete {ARCH} {FLAVOUR} build (newest: {builds[-1].pkgver})"
            return choice
        choice.build, choice.sums = covered[-1], sums
        return choice

    def _signature_problem(self, where: str, rows: list[str], checksums: str) -> str | None:
        """gpgv over CHECKSUMS with CHECKSUMS.gpg, before any hash in it is trusted."""
        if "CHECKSUMS.gpg" not in rows:
            return "CHECKSUMS.gpg missing: cannot check the signature against the keyring"
        signature = cache.http_get_bytes(urljoin(where, "CHECKSUMS.gpg"))
        if signature is None:
            return "CHECKSUMS.gpg missing: cannot check the signature against the keyring"
        ok, detail = verify_signature(self.keyring, checksums.encode(), signature)
        return None if ok else f"CHECKSUMS signature does not verify against {self.keyring.name}: {detail}"

    # ------------------------------------------------------------------ fetching

    def resolve(self, version: KernelVersion) -> MainlineDir:
        """The directory that holds `version` (plain or series-suffixed), from the top index."""
        dirs, _odd = self.directories()
        if version not in dirs:
            raise UnavailableError(f"mainline:{version}: no directory {version.mainline_dir}/ on the mirror")
        return dirs[version][0]

    def fetch(self, version: str) -> UnpackedKernel:
        """The unpacked kernel, from the cache only when the cached copy was verified as this
        source is asked to verify (see `_cached_copy_meets`); else listed, verified, fetched."""
        parsed = parse_version(version)
        target = self.target(str(parsed))
        cached = UnpackedKernel.load(target) if (target / MANIFEST).exists() else None
        if cached is not None and self._cached_copy_meets(cached):
            return cached
        entry = self.entry(self.resolve(parsed))
        if not entry.available:
            if entry.extra.get("signature") == "bad":  # with a keyring given, a bad mirror is fatal
                raise SignatureError(f"mainline:{parsed}: {entry.reason}")
            raise UnavailableError(f"mainline:{parsed}: {entry.reason}")
        if cached is not None and _same_packages(cached, entry):  # verified now: the bytes are the cached ones
            return self._record_verification(cached, entry)
        if entry.extra.get("unverified"):
            self.warn(f"mainline:{parsed}: no CHECKSUMS in {entry.extra['dir']}/; fetching it unverified "
                      "(marked unverified in kernel.json and every probe)")
        debs = [cache.download(item.url, cache.downloads_dir(self.name) / item.name, item.sha256, item.size)
                for item in entry.files]
        top = urljoin(self.base, f"{entry.extra['dir']}/")
        meta = {name: cache.http_get_bytes(urljoin(top, name)) for name in entry.extra.get("meta", [])}
        extra = {"build": entry.extra.get("build"), "layout": entry.extra.get("layout"),
                 "upstream": str(parsed), "lineage": parsed.lineage, "dir": entry.extra.get("dir"),
                 "files": [f.to_dict() for f in entry.files], **parse_commit(_text(meta.get("COMMIT")))}
        for key in ("unverified", "signature", "notes"):
            if key in entry.extra:
                extra[key] = entry.extra[key]
        if entry.extra.get("signature") == "good":
            extra["keyring_sha256"] = self.keyring_sha256
        kernel = unpack.unpack_debs(debs, target, f"mainline:{parsed}", extra,
                                    files={name: data for name, data in meta.items() if data is not None})
        # a finished unpack of the same packages is returned as it was recorded: add this check
        return self._record_verification(kernel, entry)

    def _cached_copy_meets(self, kernel: UnpackedKernel) -> bool:
        """Whether a cached unpack was verified as this source verifies: with a keyring, only a
        copy whose CHECKSUMS this very keyring verified (kernel.json records the keyring's
        sha256) is served; any other copy, fetched without a keyring or trusted through another
        one, is verified again before it is served. A copy fetched unverified (no CHECKSUMS) is
        served only with --allow-unverified, as the listing offers it only then."""
        if kernel.unverified:
            if not self.allow_unverified:
                raise UnavailableError(f"{kernel.spec}: the cached copy was fetched unverified (no CHECKSUMS); "
                                       "--allow-unverified serves it")
            return True
        if self.keyring is None:
            return True
        return kernel.extra.get("signature") == "good" and kernel.extra.get("keyring_sha256") == self.keyring_sha256

    def _record_verification(self, kernel: UnpackedKernel, entry: KernelEntry) -> UnpackedKernel:
        """Record in the cached kernel.json that this keyring verified its packages' CHECKSUMS
        (atomically, under the unpack's lock), so the next run with it is served from the cache."""
        if entry.extra.get("signature") != "good" or kernel.extra.get("keyring_sha256") == self.keyring_sha256:
            return kernel
        with cache.locked(kernel.root):
            kernel.extra.update(signature="good", keyring_sha256=self.keyring_sha256)
            kernel.save()
        return kernel

    def changes(self, version: KernelVersion) -> str | None:
        """The build's `CHANGES`: `git shortlog <previous tag>..<commit>` of what it adds."""
        mdir = self.resolve(version)
        return cache.http_get_text(urljoin(self.base, f"{mdir.name}/CHANGES"))

    def commit(self, version: KernelVersion) -> dict[str, str]:
        """The build's `COMMIT` read leniently ({"commit": sha, "commit_label": tag}), or {}."""
        mdir = self.resolve(version)
        return parse_commit(cache.http_get_text(urljoin(self.base, f"{mdir.name}/COMMIT")))


# ---------------------------------------------------------------------------------- helpers

def verify_signature(keyring: Path, data: bytes, signature: bytes) -> tuple[bool, str]:
    """gpgv with only `keyring` trusted; (ok, gpgv's last line). gpgv is given files in a private
    directory so nothing of the user's GnuPG home is read or written."""
    with tempfile.TemporaryDirectory(prefix="kbisect-gpgv-") as tmp:
        data_path, sig_path = Path(tmp) / "CHECKSUMS", Path(tmp) / "CHECKSUMS.gpg"
        data_path.write_bytes(data)
        sig_path.write_bytes(signature)
        try:
            proc = subprocess.run(["gpgv", "--homedir", tmp, "--keyring", str(keyring), str(sig_path),
                                   str(data_path)], capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise KbisectError("gpgv is not installed (needed for --keyring)") from None
    lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
    return proc.returncode == 0, (lines[-1].removeprefix("gpgv: ") if lines else f"gpgv exit {proc.returncode}")


def _same_packages(kernel: UnpackedKernel, entry: KernelEntry) -> bool:
    """Whether the cached kernel was unpacked from exactly the packages `entry` publishes now
    (by their recorded sha256, which the download checked)."""
    recorded = unpack.recorded_package_sums(kernel.extra)
    published = {f.name: (f.sha256 or "").lower() for f in entry.files}
    return recorded is not None and all(published.values()) and recorded == published


def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", "replace") if data is not None else None


def _read_memo(memo: Path, modified: str) -> KernelEntry | None:
    try:
        record = json.loads(memo.read_text())
        if record.pop("modified") != modified:
            return None
        files = [KernelFile(**f) for f in record.pop("files")]
        version = parse_version(record["version"])
        return KernelEntry(files=files, sort_key=version.sort_key, **record)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, KbisectError):
        memo.unlink(missing_ok=True)
        return None


def _write_memo(memo: Path, modified: str, entry: KernelEntry) -> None:
    memo.parent.mkdir(parents=True, exist_ok=True)
    record = {"modified": modified, "source": entry.source, "version": entry.version,
              "available": entry.available, "reason": entry.reason, "extra": entry.extra,
              "files": [vars(f) for f in entry.files]}
    atomic_write(memo, json.dumps(record))
