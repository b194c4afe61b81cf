"""Helpers every adapter shares: atomic replacement, running a tool, cleaning up after dead owners.

Readers (a browser on a report, another kbisect on a manifest or a listing memo) must never see
half a file, and after a power loss a renamed file must not point at unsynced data: write beside
the target under a name unique to this process and thread, fsync, then rename over it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Callable

from orchestrator.core.errors import KbisectError


def atomic_write(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` in one rename; `mode` (e.g. 0o600) is set before the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a directory that cannot be opened read-only (rare): the rename still happened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Does process `pid` exist (owned by anyone)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def reap_dead_owners(directory: Path, pattern: str, remove: Callable[[Path], None]) -> list[Path]:
    """Remove the entries of `directory` matching `pattern` whose name ends in `-<pid>` of a dead
    process: the half-finished work of a killed kbisect (an image or boot-file build)."""
    removed = []
    for path in directory.glob(pattern):
        try:
            pid = int(path.name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            remove(path)
            removed.append(path)
    return removed


def run_tool(cmd: list[str], what: str, error: type[KbisectError] = KbisectError,
             **kw) -> subprocess.CompletedProcess:
    """Run a tool and capture its output; a failure is one `error` line naming `what` and the
    tool's last words (bootfiles pass InstallationError: a missing mkfs breaks every kernel)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise error(f"{what}: {cmd[0]} is not installed (run ./setup.sh)") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise error(f"{what} failed (exit {proc.returncode}): {' | '.join(tail[-3:]) or 'no output'}")
    return proc
