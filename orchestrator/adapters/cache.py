"""The download cache: every kernel file enters kbisect through here (unpacking: adapters/unpack.py).

Why this shape:
- downloads land atomically (a private temp file renamed into place only after its
  SHA-256 matched), so a crash, a truncated transfer or a tampered mirror never leaves a
  file in the cache that a later run would trust;
- several kbisect processes (parallel bisections, CI jobs) share one $KBISECT_HOME, so
  each download and each unpack runs under a file lock and the second process reuses the
  first one's result;
- progress goes to stderr (rich) so `--json` output on stdout stays clean;
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Iterator

from filelock import FileLock, Timeout

from orchestrator.adapters import config
from orchestrator.adapters.progress import transfer_bar
from orchestrator.core.errors import ChecksumError, KbisectError, KernelTrouble, SourceUnreachable, UnavailableError

CHUNK = 1 << 20
USER_AGENT = "kbisect/0.1 (kernel bisection)"


def downloads_dir(source: str) -> Path:
    """Where the raw files of one source are kept (content named by their published file name)."""
    return _state_dir("downloads", source)


def kernels_dir(source: str) -> Path:
    """Where the unpacked kernels of one source live (`<source>/<version>[+variant]/`)."""
    return _state_dir("kernels", source)


def _state_dir(kind: str, source: str) -> Path:
    """`$KBISECT_HOME/<kind>/<source>`, created; one line when it cannot be (a full disk, a
    KBISECT_HOME that is a file)."""
    try:
        path = config.subdir(kind) / source
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = exc.filename or f"$KBISECT_HOME/{kind}/{source}"
        raise KbisectError(f"cannot create {where}: {exc.strerror or exc}") from None
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# How long to wait for another kbisect's download or unpack of the same thing (seconds). A
# generic kernel's modules take minutes to fetch and unpack on a slow link, hence the hour.
DEFAULT_LOCK_TIMEOUT = 3600.0


def lock_timeout() -> float:
    """$KBISECT_LOCK_TIMEOUT (seconds), else DEFAULT_LOCK_TIMEOUT."""
    raw = os.environ.get("KBISECT_LOCK_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise KbisectError(f"KBISECT_LOCK_TIMEOUT={raw!r}: expected a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise KbisectError(f"KBISECT_LOCK_TIMEOUT={raw!r}: expected a number of seconds >= 0")
    return value


@contextmanager
def locked(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold `<path>.lock` so concurrent processes never download or unpack the same thing twice.

    Waiting longer than `timeout` (default lock_timeout()) is one KbisectError line naming the
    lock and, when the kernel says, the process holding it: never filelock's Timeout traceback."""
    path = Path(path)
    lock = Path(str(path) + ".lock")
    wait = lock_timeout() if timeout is None else timeout
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KbisectError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    try:
        handle = FileLock(str(lock), timeout=wait)
        handle.acquire()
    except Timeout:
        raise KbisectError(f"{lock} is held by {lock_holder(lock) or 'another process'}; gave up after "
                           f"{wait:g} s (KBISECT_LOCK_TIMEOUT sets the wait)") from None
    except OSError as exc:
        raise KbisectError(f"cannot lock {lock}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        handle.release()


def lock_holder(lock: Path) -> str | None:
    """"pid 1234 (kbisect kernels fetch ...)" for the process holding an flock on `lock`, read
    from /proc/locks (Linux: proc(5), one line per lock: id, FLOCK, ADVISORY, WRITE, pid,
    MAJOR:MINOR:INODE in hex:hex:decimal, ...); None when it cannot be told."""
    try:
        st = os.stat(lock)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":  # "->": a waiter, not the holder
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) != want:
                continue
            pid = int(fields[4])
        except ValueError:
            continue
        command = _command_of(pid)
        return f"pid {pid}" + (f" ({command})" if command else "")
    return None


def _command_of(pid: int) -> str:
    """The first 80 characters of a process's command line ("" when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= 80 else text[:77] + "..."


def _session():
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


@dataclass(frozen=True)
class Bound:
    """How much of one response kbisect reads, and for how long in all: a mirror that never
    ends a body (or drips it) must not fill the disk or hold a run forever. `what` names the
    kind of resource in the error line."""

    limit: int  # bytes of the (decoded) body
    seconds: float  # from the request to the last byte
    what: str


# The caps follow what each format can hold. Index pages, CHECKSUMS, status files and Launchpad's
# JSON pages are kilobytes (the whole mainline top index, thousands of rows of ~200 bytes, is well
# under 1 MiB; real-layouts.md's v6.13 CHECKSUMS is 1121 bytes). The largest kernel package
# kbisect fetches is a generic kernel's modules (~100 MB; Debian's linux-source .deb is 139 MB,
# field-notes.md), so 512 MiB leaves room without letting a mirror fill the disk.
SMALL = Bound(8 << 20, 300.0, "a small resource (index page, CHECKSUMS, status file)")
PACKAGE = Bound(512 << 20, 3600.0, "a package")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def checked_url(url: str) -> str:
    """`url`, when it is one kbisect can fetch: only http(s) mirrors are supported (requests
    answers a file:// or scheme-less URL with InvalidSchema/MissingSchema, which tells the user
    nothing). Bad input, so a KbisectError that stops the command rather than a skip."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        given = f"a {scheme}:// URL" if scheme else "no http:// or https:// in front"
        raise KbisectError(f"cannot reach {short_url(url)}: only http(s) mirrors are supported ({given})")
    return url


def bounded_body(response: Any, url: str, bound: Bound, started: float | None = None) -> Iterator[bytes]:
    """The body of a streamed `requests` response, chunk by chunk, within `bound`: an announced
    Content-Length over the limit is refused before a byte is read, a body that grows past it
    (no or a lying length, an endless page, a gzip bomb: decoded bytes count) or takes longer
    than `bound.seconds` since `started` is refused as soon as it does. SourceUnreachable: this
    mirror's answer for one kernel cannot be had. A connection dropped mid-body ends the
    iteration early with BrokenOff (the caller tells truncation from the checksum).

    read1 returns what one socket read gives, so the clock is looked at between small reads
    even when a mirror drips bytes slower than the per-read timeout would notice."""
    started = time.monotonic() if started is None else started
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > bound.limit:
        raise SourceUnreachable(f"{short_url(url)} announces {_mib(int(announced))}, more than the "
                                f"{_mib(bound.limit)} kbisect reads for {bound.what}; refused")
    got = 0
    while True:
        chunk = _read1(response)
        if not chunk:
            return
        got += len(chunk)
        if got > bound.limit:
            raise SourceUnreachable(f"{short_url(url)} sent more than the {_mib(bound.limit)} kbisect reads "
                                    f"for {bound.what}; refused")
        if time.monotonic() - started > bound.seconds:
            raise SourceUnreachable(f"{short_url(url)} took longer than the {bound.seconds:g} s kbisect "
                                    f"allows for {bound.what} ({got} bytes read); refused")
        yield chunk


class BrokenOff(Exception):
    """A response body ended by a broken connection (not by its end)."""


def _read1(response: Any) -> bytes:
    """One read of a response body (up to CHUNK decoded bytes); b"" at its end. A transfer that
    breaks off is BrokenOff, whichever library layer noticed it."""
    import requests
    import urllib3.exceptions

    try:
        return response.raw.read1(CHUNK, decode_content=True) or b""
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        raise BrokenOff(str(exc)) from None


def short_url(url: str) -> str:
    """A URL short enough for a one-line error: long query strings are elided."""
    if len(url) < 120:
        return url
    parts = urlsplit(url)
    head = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return head + ("?…" if parts.query else "") if len(head) < 150 else head[:70] + "…" + head[-70:]


def _get_small(url: str, timeout: float, bound: Bound = SMALL) -> bytes | None:
    """GET a small resource within `bound`: its body, or None when it does not exist (404/410).

    A mirror that does not answer (or answers too much, too slowly) is SourceUnreachable: while
    probing one kernel that is a skip (another mirror may have it); a listing that cannot be read
    at all still stops the command, because nothing asks the skip policy there."""
    import requests

    started = time.monotonic()
    try:
        response = _session().get(checked_url(url), timeout=timeout, stream=True)
    except requests.RequestException as exc:
        raise SourceUnreachable(f"cannot reach {short_url(url)}: {type(exc).__name__}") from None
    with response:
        if response.status_code in (404, 410):
            return None
        if response.status_code >= 400:
            raise SourceUnreachable(f"{short_url(url)}: HTTP {response.status_code}")
        try:
            return b"".join(bounded_body(response, url, bound, started))
        except BrokenOff:
            raise SourceUnreachable(f"{short_url(url)}: the connection broke off mid-answer") from None


def http_get_text(url: str, timeout: float = 60) -> str | None:
    """GET a small text resource (index page, CHECKSUMS, status); None when it does not exist
    (404/410). Decoded as UTF-8 with replacement: every format read this way is ASCII or UTF-8."""
    body = _get_small(url, timeout)
    return None if body is None else body.decode("utf-8", "replace")


def http_get_bytes(url: str, timeout: float = 60) -> bytes | None:
    """GET a small binary resource (a detached signature); None when it does not exist (404/410)."""
    return _get_small(url, timeout)


def http_get_json(url: str, timeout: float = 60) -> object | None:
    text = http_get_text(url, timeout)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise KbisectError(f"{short_url(url)}: not JSON") from None


def download(url: str | list[str], dest: Path, sha256: str | None, size: int | None = None,
             bound: Bound = PACKAGE) -> Path:
    """Download `url` (or the first of several mirrors that has it) to `dest`, verified.

    A cached file is re-hashed and reused only if it still matches; a mismatching or
    truncated transfer raises ChecksumError and leaves nothing behind. `sha256=None` is
    only for small unchecked metadata; every package download passes its published sum.

    When no mirror gives the file, the error says why for this one kernel (app.policy skips it):
    UnavailableError when the last mirror asked says it is gone (404/410), SourceUnreachable
    when it could not be reached or answered another HTTP error (another mirror, or a later
    run, may have it). A file that cannot be written here is this machine's trouble: it aborts.
    No more than `bound` is read (a package's size and time cap): a bigger or slower answer is
    SourceUnreachable with nothing written to stay.
    """
    import requests

    urls = [url] if isinstance(url, str) else list(url)
    dest = Path(dest)
    label = dest.name
    with locked(dest):
        if dest.exists():
            try:
                if sha256 is None or sha256_file(dest) == sha256.lower():
                    return dest
                dest.unlink()  # a cache entry changed under us: fetch it again
            except OSError as exc:  # a directory or an unreadable file where the download belongs
                raise KbisectError(f"cached download {dest}: {exc.strerror or exc}") from None
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.part"
        last_error: KernelTrouble | None = None
        try:
            for candidate in urls:
                started = time.monotonic()
                try:
                    response = _session().get(checked_url(candidate), stream=True, timeout=60)
                except requests.RequestException as exc:
                    last_error = SourceUnreachable(f"cannot download {short_url(candidate)}: {type(exc).__name__}")
                    continue
                with response:
                    if response.status_code in (404, 410):
                        last_error = UnavailableError(
                            f"{label}: HTTP {response.status_code} {response.reason or ''} at {short_url(candidate)}".rstrip())
                        continue
                    if response.status_code >= 400:
                        last_error = SourceUnreachable(f"{label}: HTTP {response.status_code} at {short_url(candidate)}")
                        continue
                    announced = response.headers.get("Content-Length")
                    total = int(announced) if announced and announced.isdigit() else size
                    digest = hashlib.sha256()
                    got = 0
                    truncated = False
                    try:  # the open, every write and the close's flush: a full disk fails at any of them
                        with transfer_bar() as bar, open(tmp, "wb") as out:
                            task = bar.add_task(f"download {label}", total=total)
                            try:  # bounded: a body past PACKAGE's size or time is refused as it comes
                                for chunk in bounded_body(response, candidate, bound, started):
                                    out.write(chunk)
                                    digest.update(chunk)
                                    got += len(chunk)
                                    bar.advance(task, len(chunk))
                            except BrokenOff:  # connection dropped mid-body
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
                    try:
                        os.replace(tmp, dest)
                    except OSError as exc:
                        raise KbisectError(f"{label}: cannot move the download into {dest}: "
                                           f"{exc.strerror or exc}") from None
                    return dest
            assert last_error is not None
            raise last_error
        finally:
            tmp.unlink(missing_ok=True)
