"""SSH into a probe VM (paramiko): readiness, upload, run with a timeout, fetch artefacts.

Only 127.0.0.1 is ever contacted: the guest is reachable solely through QEMU's port forward.
The client key is generated once per installation under `$KBISECT_HOME/ssh/` and handed to the
guest on its kernel command line; the guest's host key is baked into the root image and pinned,
so a connection to anything else listening on the forwarded port is refused.

QEMU accepts on the forwarded port long before the guest's sshd listens, and paramiko then waits
out its whole banner timeout. So we first poll for the `SSH-` banner with short socket timeouts
and only then open the real connection.
"""

from __future__ import annotations

import base64
import io
import os
import posixpath
import select
import socket
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.adapters.fsutil import atomic_write
from orchestrator.adapters import config
from orchestrator.adapters.cache import locked
from orchestrator.core.errors import BootFailure, GuestInfra

HOST = "127.0.0.1"
KEY_NAME = "id_ecdsa"


def client_key():
    """The per-installation client key (created on first use, mode 0600)."""
    import paramiko

    d = config.subdir("ssh")
    os.chmod(d, 0o700)
    path = d / KEY_NAME
    with locked(d / ".keygen"):
        if not path.exists():
            key = paramiko.ECDSAKey.generate(bits=256)
            text = io.StringIO()
            key.write_private_key(text)
            atomic_write(path, text.getvalue(), mode=0o600)
            (d / (KEY_NAME + ".pub")).write_text(f"{key.get_name()} {key.get_base64()} kbisect\n")
    return paramiko.ECDSAKey.from_private_key_file(str(path))


def cmdline_key_arg() -> str:
    """`kbisect.key=<type>:<base64>`: the guest init turns it into authorized_keys."""
    key = client_key()
    return f"kbisect.key={key.get_name()}:{key.get_base64()}"


def safe_name(name: str) -> str | None:
    """A guest-supplied file name reduced to a base name that stays in its directory.

    The guest is the system under test (and may be hostile): a name with `/`, `..` or a NUL
    must never choose where the host writes. None for a name with nothing safe left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")
    if base in ("", ".", ".."):
        return None
    return base[:255]


class SSHUnavailable(BootFailure):
    """The guest never offered SSH (boot failure, crash, or timeout)."""


@contextmanager
def session_lost(what: str = "") -> Iterator[None]:
    """Turn a dropped session (paramiko, socket, EOF) into GuestInfra: trouble in this guest.

    The message keeps the original exception's class ("EOFError: ..."), as probe reasons did.
    """
    import paramiko  # slow import (~0.7 s): only probes pay it, as everywhere in this module

    try:
        yield
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise GuestInfra(f"{what}{exc.__class__.__name__}: {exc}") from exc


class _ReplaySocket:
    """A connected socket whose already-read banner bytes are handed to paramiko first.

    Reusing the socket that saw the banner saves the guest a second TCP accept and sshd fork
    (costly under TCG)."""

    def __init__(self, sock: socket.socket, head: bytes) -> None:
        self._sock = sock
        self._head = head

    def recv(self, n: int) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._sock.recv(n)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def wait_banner(port: int, deadline: float, still_booting: Callable[[], str | None] | None = None):
    """Poll 127.0.0.1:port until an `SSH-` banner arrives; returns the connected socket.

    `still_booting()` returns a reason string when waiting is pointless (domain gone, crashed,
    initramfs failure), so a dead guest is reported at once rather than at the deadline.
    """
    while True:
        if still_booting is not None:
            why = still_booting()
            if why:
                raise SSHUnavailable(why)
        if time.monotonic() > deadline:
            raise SSHUnavailable("no SSH banner before the boot timeout")  # caller adds the console tail
        s = None
        try:
            s = socket.create_connection((HOST, port), timeout=1.0)
            s.settimeout(1.5)
            data = s.recv(64)
            if data.startswith(b"SSH-"):
                s.settimeout(None)
                return _ReplaySocket(s, data)
        except OSError:
            pass
        if s is not None:
            s.close()
        time.sleep(0.1)


@dataclass
class RunResult:
    exit_code: int | None  # None: no exit status (timed out on the host side, or connection lost)
    stdout: str
    stderr: str
    timed_out: bool
    aborted: str | None  # why the host stopped waiting (e.g. "kernel panic"), if it did
    seconds: float


def fetch_tree(sftp, remote: str, local: Path) -> list[Path]:
    """Copy the regular files under `remote` (an SFTP client's path) into `local`.

    Names come from the guest and are reduced by `safe_name`; links and special files are
    skipped (only regular files are artefacts). A missing remote directory gives nothing."""
    got: list[Path] = []
    try:
        entries = sftp.listdir_attr(remote)
    except OSError:
        return got
    local.mkdir(parents=True, exist_ok=True)
    for e in entries:
        name = safe_name(e.filename)
        if name is None:
            continue
        rp = remote.rstrip("/") + "/" + e.filename  # the guest's own name, read under `remote`
        lp = local / name
        if lp.exists() or lp.is_symlink():  # two guest names reduced to one: keep the first
            continue
        if stat.S_ISDIR(e.st_mode or 0):
            got += fetch_tree(sftp, rp, lp)
        elif stat.S_ISREG(e.st_mode or 0):
            sftp.get(rp, str(lp))
            got.append(lp)
    return got


class Guest:
    """An authenticated SSH session to one probe VM."""

    def __init__(self, port: int, host_key: str, timeout: float = 20.0, sock=None) -> None:
        import paramiko

        self.port = port
        self.client = paramiko.SSHClient()
        ktype, kb64 = host_key.split()[:2]
        pinned = paramiko.PKey.from_type_string(ktype, base64.b64decode(kb64))
        self.client.get_host_keys().add(f"[{HOST}]:{port}", ktype, pinned)
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            # our key only: never the user's agent or ~/.ssh keys
            self.client.connect(HOST, port=port, username="root", pkey=client_key(), look_for_keys=False,
                                allow_agent=False, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                                sock=sock)
        except (paramiko.SSHException, OSError) as exc:
            raise SSHUnavailable(f"ssh connect failed: {exc.__class__.__name__}: {exc}") from None
        self._sftp = None

    @property
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def close(self) -> None:
        import paramiko  # slow import (~0.7 s): only probes pay it

        try:
            if self._sftp is not None:
                self._sftp.close()
            self.client.close()
        except (OSError, EOFError, paramiko.SSHException):  # the guest is already powered off
            pass

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files -----------------------------------------------------------------------------
    def upload_dir(self, local: Path, remote: str) -> int:
        """SFTP a directory tree (modes kept, symlinks followed); returns files sent.

        A dropped session, or a local file that cannot be read, raises GuestInfra."""
        with session_lost():
            return self._upload_dir(local, remote)

    def _upload_dir(self, local: Path, remote: str) -> int:
        sftp = self.sftp
        count = 0
        self.mkdirs(remote)
        for root, dirs, files in os.walk(local, followlinks=True):
            dirs[:] = [d for d in dirs if d not in (".git", "__pycache__", "out")]
            rel = os.path.relpath(root, local)
            rdir = remote if rel == "." else posixpath.join(remote, *Path(rel).parts)
            for d in dirs:
                self.mkdirs(posixpath.join(rdir, d))
            for f in files:
                lp = os.path.join(root, f)
                rp = posixpath.join(rdir, f)
                sftp.put(lp, rp)
                sftp.chmod(rp, os.stat(lp).st_mode & 0o777)
                count += 1
        return count

    def mkdirs(self, path: str) -> None:
        """`mkdir -p` over SFTP (GuestInfra when the session drops)."""
        with session_lost():
            parts = path.strip("/").split("/")
            cur = ""
            for p in parts:
                cur += "/" + p
                try:
                    self.sftp.stat(cur)
                except OSError:
                    self.sftp.mkdir(cur)

    def get(self, remote: str, local: Path) -> None:
        """Copy one remote file to `local` (GuestInfra when missing or the session drops)."""
        with session_lost():
            self.sftp.get(remote, str(local))

    def fetch_dir(self, remote: str, local: Path) -> list[Path]:
        """Copy a remote tree to `local` (missing remote dir: nothing); returns host paths.

        A dropped session raises GuestInfra."""
        with session_lost():
            return fetch_tree(self.sftp, remote, local)

    # -- commands --------------------------------------------------------------------------
    def run(
        self,
        command: str,
        timeout: float,
        on_output: Callable[[str, str], None] | None = None,
        should_abort: Callable[[], str | None] | None = None,
    ) -> RunResult:
        """Run `command`, streaming output; stop waiting at `timeout` or when should_abort() says.

        A session that drops mid-run raises GuestInfra."""
        with session_lost():
            return self._run(command, timeout, on_output, should_abort)

    def _run(
        self,
        command: str,
        timeout: float,
        on_output: Callable[[str, str], None] | None,
        should_abort: Callable[[], str | None] | None,
    ) -> RunResult:
        import paramiko  # slow import (~0.7 s): only probes pay it

        t0 = time.monotonic()
        chan = self.client.get_transport().open_session()
        chan.exec_command(command)
        out: list[bytes] = []
        err: list[bytes] = []
        pending = {"stdout": b"", "stderr": b""}
        timed_out = False
        aborted: str | None = None
        last_check = 0.0

        def emit(which: str, data: bytes, flush: bool = False) -> None:
            if on_output is None:
                return
            buf = pending[which] + data
            *lines, rest = buf.split(b"\n")
            if flush and rest:
                lines.append(rest)
                rest = b""
            pending[which] = rest
            for line in lines:
                on_output(which, line.decode("utf-8", errors="replace"))

        while True:
            while chan.recv_ready():
                data = chan.recv(65536)
                out.append(data)
                emit("stdout", data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err.append(data)
                emit("stderr", data)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed or not self.client.get_transport().is_active():
                break
            now = time.monotonic()
            if now - t0 > timeout:
                timed_out = True
                break
            if should_abort is not None and now - last_check > 0.3:
                last_check = now
                aborted = should_abort()
                if aborted:
                    break
            select.select([chan], [], [], 0.1)
        emit("stdout", b"", flush=True)
        emit("stderr", b"", flush=True)
        code = chan.recv_exit_status() if chan.exit_status_ready() else None
        if code == -1:
            code = None
        try:
            chan.close()
        except (OSError, EOFError, paramiko.SSHException):  # the session ended with the command
            pass
        return RunResult(
            exit_code=code,
            stdout=b"".join(out).decode("utf-8", errors="replace"),
            stderr=b"".join(err).decode("utf-8", errors="replace"),
            timed_out=timed_out,
            aborted=aborted,
            seconds=time.monotonic() - t0,
        )

    def check_output(self, command: str, timeout: float = 30.0) -> str:
        r = self.run(command, timeout)
        return r.stdout
