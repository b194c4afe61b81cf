"""The download cache and the unpacker: every kernel file enters kbisect through here.

Why this shape:
- downloads land atomically (a private temp file renamed into place only after its
  SHA-256 matched), so a crash, a truncated transfer or a tampered mirror never leaves a
  file in the cache that a later run would trust;
- several kbisect processes (parallel bisections, CI jobs) share one $KBISECT_HOME, so
  each download and each unpack runs under a file lock and the second process reuses the
  first one's result;
- unpacking reads the .debs with python-debian (no dpkg, no root) and refuses any member
  whose path would leave the target directory;
- progress goes to stderr (rich) so `--json` output on stdout stays clean.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from orchestrator.adapters import config
from orchestrator.core.errors import ChecksumError, KbisectError, UnavailableError
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel

CHUNK = 1 << 20
USER_AGENT = "kbisect/0.1 (kernel bisection)"
_stderr = Console(stderr=True)


def downloads_dir(source: str) -> Path:
    """Where the raw files of one source are kept (content named by their published file name)."""
    path = config.subdir("downloads") / source
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernels_dir(source: str) -> Path:
    """Where the unpacked kernels of one source live (`<source>/<version>[+variant]/`)."""
    path = config.subdir("kernels") / source
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def locked(path: Path, timeout: float = 3600) -> Iterator[None]:
    """Hold `<path>.lock` so concurrent processes never download or unpack the same thing twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_stderr,
        transient=True,
        disable=not _stderr.is_terminal,
    )


def _session():
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _short(url: str) -> str:
    """A URL short enough for a one-line error: long query strings are elided."""
    if len(url) < 120:
        return url
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return head + ("?…" if parts.query else "") if len(head) < 150 else head[:70] + "…" + head[-70:]


def _get_small(url: str, timeout: float):
    """GET a small resource: the response, or None when it does not exist (404/410)."""
    import requests

    try:
        response = _session().get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise KbisectError(f"cannot reach {_short(url)}: {type(exc).__name__}") from None
    if response.status_code in (404, 410):
        return None
    if response.status_code >= 400:
        raise KbisectError(f"{_short(url)}: HTTP {response.status_code}")
    return response


def http_get_text(url: str, timeout: float = 60) -> str | None:
    """GET a small text resource (index page, CHECKSUMS, status); None when it does not exist (404/410)."""
    response = _get_small(url, timeout)
    if response is None:
        return None
    response.encoding = response.encoding or "utf-8"
    return response.text


def http_get_bytes(url: str, timeout: float = 60) -> bytes | None:
    """GET a small binary resource (a detached signature); None when it does not exist (404/410)."""
    response = _get_small(url, timeout)
    return None if response is None else response.content


def http_get_json(url: str, timeout: float = 60) -> object | None:
    import json

    text = http_get_text(url, timeout)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise KbisectError(f"{_short(url)}: not JSON") from None


def download(url: str | list[str], dest: Path, sha256: str | None, size: int | None = None) -> Path:
    """Download `url` (or the first of several mirrors that has it) to `dest`, verified.

    A cached file is re-hashed and reused only if it still matches; a mismatching or
    truncated transfer raises ChecksumError and leaves nothing behind. `sha256=None` is
    only for small unchecked metadata; every package download passes its published sum.
    """
    import requests

    urls = [url] if isinstance(url, str) else list(url)
    dest = Path(dest)
    label = dest.name
    with locked(dest):
        if dest.exists():
            if sha256 is None or sha256_file(dest) == sha256.lower():
                return dest
            dest.unlink()  # a cache entry changed under us: fetch it again
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.part"
        last_error: KbisectError | None = None
        try:
            for candidate in urls:
                try:
                    response = _session().get(candidate, stream=True, timeout=60)
                except requests.RequestException as exc:
                    last_error = KbisectError(f"cannot download {_short(candidate)}: {type(exc).__name__}")
                    continue
                with response:
                    if response.status_code in (404, 410):
                        last_error = UnavailableError(
                            f"{label}: HTTP {response.status_code} {response.reason or ''} at {_short(candidate)}".rstrip())
                        continue
                    if response.status_code >= 400:
                        last_error = KbisectError(f"{label}: HTTP {response.status_code} at {_short(candidate)}")
                        continue
                    announced = response.headers.get("Content-Length")
                    total = int(announced) if announced and announced.isdigit() else size
                    digest = hashlib.sha256()
                    got = 0
                    truncated = False
                    with _progress() as bar, open(tmp, "wb") as out:
                        task = bar.add_task(f"download {label}", total=total)
                        try:
                            for chunk in response.iter_content(CHUNK):
                                out.write(chunk)
                                digest.update(chunk)
                                got += len(chunk)
                                bar.advance(task, len(chunk))
                        except requests.RequestException:  # connection dropped mid-body
                            truncated = True
                        except OSError as exc:
                            raise KbisectError(f"{label}: cannot write {tmp}: {exc.strerror or exc}") from None
                    if truncated or (total is not None and got < total):
                        expected = f"sha256 {sha256.lower()}" if sha256 else "its checksum"
                        raise ChecksumError(f"{label}: download truncated after {got} of {total or '?'} bytes; "
                                            f"{expected} not matched; file discarded")
                    if sha256 is not None and digest.hexdigest() != sha256.lower():
                        raise ChecksumError(f"{label}: sha256 mismatch (expected {sha256.lower()}, "
                                            f"got {digest.hexdigest()}); file discarded")
                    os.replace(tmp, dest)
                    return dest
            assert last_error is not None
            raise last_error
        finally:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- unpacking


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _safe_relpath(name: str, deb: Path) -> str:
    """The member's path relative to the package root; refuses anything that could escape."""
    raw = str(name)
    stripped = raw[2:] if raw.startswith("./") else raw
    if stripped in (".", ""):
        return ""
    parts = stripped.split("/")
    if raw.startswith("/") or ".." in parts or "\\" in raw or "\x00" in raw:
        raise KbisectError(f"{deb.name}: refusing member {raw!r}: it would escape the target directory")
    return posixpath.normpath(stripped)


_IN_MODULES_DIR = {"vmlinuz": "vmlinuz", "vmlinuz.unsigned": "vmlinuz", "config": "config",
                   "System.map": "System.map"}


def _map_member(rel: str) -> tuple[str, str | None] | None:
    """Where a package path lands in the UnpackedKernel layout, and the kver it names (or None: ignore)."""
    for prefix, target in (("boot/vmlinuz-", "vmlinuz"), ("boot/config-", "config"), ("boot/System.map-", "System.map")):
        if rel.startswith(prefix) and "/" not in rel[len(prefix):]:
            return target, rel[len(prefix):]
    for prefix in ("lib/modules/", "usr/lib/modules/"):
        if rel.startswith(prefix):
            rest = rel[len(prefix):]
            kver, _, inner = rest.partition("/")
            if not kver:
                return None
            # Newer Debian packages (linux-binary-*, linux-base-*) keep the image, config and
            # System.map inside the modules directory: they belong at the top of the layout.
            if inner in _IN_MODULES_DIR:
                return _IN_MODULES_DIR[inner], kver
            return ("modules/" + inner if inner else "modules"), kver
    return None


def _inside(root: Path, path: Path) -> bool:
    root_s = os.path.normpath(str(root))
    path_s = os.path.normpath(str(path))
    return path_s == root_s or path_s.startswith(root_s + os.sep)


def _open_data(deb: Path, scratch: Path) -> tuple[tarfile.TarFile, Path | None]:
    """The data tarball of a .deb, read by python-debian.

    python-debian decompresses a data.tar.zst into memory (hundreds of MB for a generic
    kernel's modules); those are streamed through `unzstd` into a scratch file instead.
    Returns the tarfile and the scratch file to delete afterwards (or None).
    """
    from debian.arfile import ArError, ArFile
    from debian.debfile import DebError, DebFile

    try:
        archive = ArFile(str(deb))
        zst = [n for n in archive.getnames() if n.startswith("data.tar") and n.endswith(".zst")]
        if not zst:
            return DebFile(str(deb)).data.tgz(), None
        if shutil.which("unzstd") is None:
            raise KbisectError(f"{deb.name}: zstd-compressed package and no unzstd (install zstd)")
        member = archive.getmember(zst[0])
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = scratch / f".{deb.name}.{os.getpid()}.data.tar"
        import subprocess

        with open(tmp, "wb") as out:
            proc = subprocess.Popen(["unzstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.DEVNULL)
            assert proc.stdin is not None
            try:
                while chunk := member.read(CHUNK):
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            if proc.wait() != 0:
                tmp.unlink(missing_ok=True)
                raise KbisectError(f"{deb.name}: {zst[0]} does not decompress (damaged package)")
        try:
            return tarfile.open(tmp, "r:"), tmp
        except tarfile.TarError:
            tmp.unlink(missing_ok=True)
            raise
    except (ArError, DebError, OSError, tarfile.TarError, EOFError, ValueError, KeyError) as exc:
        raise KbisectError(f"{deb.name}: not a readable .deb "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _extract_deb(deb: Path, into: Path, kvers: set[str], progress: Progress) -> None:
    data, scratch = _open_data(deb, into.parent)
    try:
        _extract_members(deb, data, into, kvers, progress)
    finally:
        data.close()
        if scratch is not None:
            scratch.unlink(missing_ok=True)


def _extract_members(deb: Path, data: tarfile.TarFile, into: Path, kvers: set[str], progress: Progress) -> None:
    task = progress.add_task(f"unpack {deb.name}", total=None)
    links: list[tuple[Path, str]] = []
    hardlinks: list[tuple[Path, str]] = []
    try:
        for member in data:
            rel = _safe_relpath(member.name, deb)
            if not rel:
                continue
            mapped = _map_member(rel)
            if mapped is None:
                continue
            target_rel, kver = mapped
            if kver and not target_rel.startswith("modules") and not (member.isfile() or member.islnk()):
                continue
            target = into / target_rel
            if not _inside(into, target):
                raise KbisectError(f"{deb.name}: refusing member {member.name!r}: it would escape the target directory")
            if kver and (target_rel.startswith("modules") or target_rel == "vmlinuz"):
                kvers.add(kver)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = data.extractfile(member)
                assert source is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                os.chmod(target, (member.mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR)
                progress.advance(task, member.size)
            elif member.issym():
                links.append((target, member.linkname))
            elif member.islnk():
                link_rel = _safe_relpath(member.linkname, deb)
                link_mapped = _map_member(link_rel)
                if link_mapped is not None:
                    hardlinks.append((target, link_mapped[0]))
            # devices, fifos: never part of a kernel package; ignored
    except (tarfile.TarError, EOFError, zlib_error()) as exc:
        raise KbisectError(f"{deb.name}: damaged archive ({exc})") from None
    for target, linked in hardlinks:
        source_path = into / linked
        if source_path.is_file() and _inside(into, source_path):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_path, target)
    for target, linkname in links:
        # Keep symlinks that stay inside the unpack (modules.* links); drop the ones that
        # point into the build host (`build -> /usr/src/linux-headers-…`).
        resolved = Path(os.path.normpath(target.parent / linkname))
        if linkname.startswith("/") or not _inside(into, resolved):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() and not target.is_symlink():
            os.symlink(linkname, target)


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """Build in an empty `<target>.partial`, renamed to `target` only when the body succeeds.

    A `target` without a manifest is an interrupted earlier attempt (callers checked the
    manifest under the lock) and is removed first; a failed body leaves nothing behind.
    """
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    partial.mkdir(parents=True)
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def unpack_debs(debs: list[Path], target: Path, spec: str, extra: dict | None = None,
                files: dict[str, bytes] | None = None) -> UnpackedKernel:
    """Unpack kernel .debs into the UnpackedKernel layout at `target`; kernel.json is written last.

    `files` are small published files kept beside the kernel (a mainline build's COMMIT and
    CHANGES), written into the same staging directory so they arrive with it or not at all.

    The work happens in `<target>.partial` and is renamed into place, so an interrupted
    unpack is never mistaken for a finished one (the manifest is what marks it finished).
    """
    target = Path(target)
    with locked(target):
        if (target / MANIFEST).exists():
            return UnpackedKernel.load(target)
        kvers: set[str] = set()
        with _staged(target) as partial:
            with _progress() as progress:
                for deb in debs:
                    _extract_deb(Path(deb), partial, kvers, progress)
            if not (partial / "vmlinuz").is_file():
                raise KbisectError(f"{spec}: no boot/vmlinuz-* in {', '.join(Path(d).name for d in debs)}")
            if len(kvers) > 1:
                raise KbisectError(f"{spec}: packages disagree on the kernel release ({', '.join(sorted(kvers))})")
            (partial / "modules").mkdir(exist_ok=True)
            for name, data in (files or {}).items():
                (partial / Path(name).name).write_bytes(data)
            kver = next(iter(kvers))
        kernel = UnpackedKernel(spec=spec, root=target, kver=kver, extra=dict(extra or {}))
        kernel.save()
        return kernel


def adopt_tree(src: Path, target: Path, spec: str, kver: str, extra: dict | None = None) -> UnpackedKernel:
    """Copy an already-unpacked tree (local builds: vmlinuz + lib/modules/<kver>) into the layout."""
    target = Path(target)
    with locked(target):
        if (target / MANIFEST).exists():
            return UnpackedKernel.load(target)
        with _staged(target) as partial:
            shutil.copy2(src / "vmlinuz", partial / "vmlinuz")
            for name in ("config", "System.map"):
                if (src / name).is_file():
                    shutil.copy2(src / name, partial / name)
            modules = src / "modules"
            if modules.is_dir():
                shutil.copytree(modules, partial / "modules", symlinks=True,
                                ignore=shutil.ignore_patterns("build", "source"))
            else:
                (partial / "modules").mkdir()
        kernel = UnpackedKernel(spec=spec, root=target, kver=kver, extra=dict(extra or {}))
        kernel.save()
        return kernel
