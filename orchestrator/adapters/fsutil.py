"""Filesystem helpers every adapter shares: one way to replace a file atomically.

Readers (a browser on a report, another kbisect on a manifest or a listing memo) must never see
half a file, and after a power loss a renamed file must not point at unsynced data: write beside
the target under a name unique to this process and thread, fsync, then rename over it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


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
