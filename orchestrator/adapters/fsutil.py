"""Helpers every adapter shares: atomic replacement, running a tool, cleaning up after dead owners.

Readers (a browser on a report, another kbisect on a manifest or a listing memo) must never see
half a file, and after a power loss a renamed file must not point at unsynced data: write beside
the target under a name unique to this process and thread, fsync, then rename over it.

Half-finished work carries its owner in its name (`.NAME.PID.part`, `.apt-PID`, `X.build-PID`,
the atomic writes' `.NAME.PID.TID.tmp`) or sits beside a lock its owner holds while it works
(`<target>.partial` next to `<target>.lock`). A SIGKILLed owner runs no `finally`, so `kbisect gc`
removes such entries when their pid is dead or their lock is free, and never while a live process
still works inside them (`in_use`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

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
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (links are their directory's entries), so a
    rename that publishes the tree never points at unsynced data after a power loss."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(directory: Path) -> None:
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


# The pid inside the names of half-finished work (its writers: atomic_write above; cache.download;
# unpack.open_data; the debian source's apt directory; image, boot-file and variant builds).
ATOMIC_TMP = re.compile(r"^\..+\.(\d+)\.\d+\.tmp$")
PART = re.compile(r"^\..+\.(\d+)\.part$")
DATA_TAR = re.compile(r"^\..+\.(\d+)\.data\.tar$")
APT_WORK = re.compile(r"^\.apt-(\d+)$")
DASH_PID = re.compile(r"-(\d+)$")


def owner_pid(name: str, pattern: re.Pattern[str]) -> int | None:
    """The owner's pid that `pattern`'s first group finds in `name`, or None (not such an entry)."""
    m = pattern.search(name)
    return int(m.group(1)) if m else None


def lock_held(lock: Path) -> bool:
    """Does a process hold the filelock `lock` now? (filelock takes flock(2) on the file; the kernel
    drops it when its holder dies, so a free lock means nobody is working under it.)"""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def in_use(path: Path) -> bool:
    """Has a live process its cwd, root or an open file at or below `path`? An orphaned child of a
    killed kbisect (mmdebstrap in its chroot, unzstd writing its scratch file) may outlive it: its
    work is removed only once it is gone too."""
    root = os.path.realpath(path)
    mine = os.getpid()
    try:
        procs = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != mine]
    except OSError:
        return False
    for pid in procs:
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone meanwhile, or not ours to read
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            target = target.removesuffix(" (deleted)")
            if target == root or target.startswith(root + "/"):
                return True
    return False


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree (never following a link out of it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def reap_dead(paths: Iterable[Path], pid_of: Callable[[str], int | None],
              remove: Callable[[Path], None] = remove_path) -> list[Path]:
    """Remove each of `paths` whose owner (`pid_of(name)`) is dead and that no live process still
    uses; names without an owner are not ours to judge and are kept."""
    removed = []
    for path in paths:
        pid = pid_of(path.name)
        if pid is None or pid_alive(pid) or in_use(path):
            continue
        remove(path)
        removed.append(path)
    return removed


def reap_dead_owners(directory: Path, pattern: str, remove: Callable[[Path], None]) -> list[Path]:
    """Remove the entries of `directory` matching `pattern` whose name ends in `-<pid>` of a dead
    process: the half-finished work of a killed kbisect (an image or boot-file build)."""
    return reap_dead(sorted(directory.glob(pattern)), lambda name: owner_pid(name, DASH_PID), remove)


def reap_unlocked(paths: Iterable[Path], lock_of: Callable[[Path], Path],
                  remove: Callable[[Path], None] = remove_path) -> list[Path]:
    """Remove each of `paths` whose lock (`lock_of(path)`) nobody holds and that no live process
    uses: staging that only exists while its owner holds that lock (`<target>.partial`)."""
    removed = []
    for path in paths:
        if lock_held(lock_of(path)) or in_use(path):
            continue
        remove(path)
        removed.append(path)
    return removed


def run_tool(cmd: list[str], what: str, error: type[KbisectError] = KbisectError,
             **kw) -> subprocess.CompletedProcess:
    """Run a tool and capture its output; a failure is one `error` line naming `what` and the
    tool's last words (bootfiles pass InstallationError: a missing mkfs breaks every kernel).

    The tool runs in its own process group, killed whole when we are interrupted (run_ticking):
    `dpkg-deb -x` forks a `tar` that would go on writing into a staging directory while our
    `finally` removes it, and leave it half-removed."""
    try:
        proc = run_ticking(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    except FileNotFoundError:
        raise error(f"{what}: {cmd[0]} is not installed (run ./setup.sh)") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise error(f"{what} failed (exit {proc.returncode}): {' | '.join(tail[-3:]) or 'no output'}")
    return proc


TICK = 0.3  # seconds between run_ticking's looks at the clock and calls of its `tick`


def run_ticking(cmd: list[str], *, timeout: float | None = None, tick: Callable[[], None] | None = None,
                **kw) -> subprocess.CompletedProcess:
    """Run `cmd` to its end (Popen's `kw` say what is captured) in the calling thread, in its own
    process group that is killed whole on any interruption or after `timeout` seconds
    (TimeoutExpired); `tick` is called about every TICK seconds while it runs (a progress line).

    Why in the calling thread and its own group: SIGTERM is raised as an exception in the main
    thread (cli/base.py), and Ctrl-C reaches the tools through the terminal's process group while
    SIGTERM does not. A tool waited for in a worker thread (apt-get download) would go on until
    it ended, and the stop with it; waited for here, the exception kills it at once and the
    callers' `finally` removes what it was writing."""
    proc = subprocess.Popen(dies_with_us(cmd), start_new_session=True, **kw)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:  # communicate may be retried after its timeout without losing output (Popen docs)
                stdout, stderr = proc.communicate(timeout=TICK)
                return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout) from None
                if tick is not None:
                    tick()
    except BaseException:
        kill_group(proc)
        raise


def run_to_log(cmd: list[str], log, tick: Callable[[], None] | None = None, **kw) -> int:
    """Run a long tool (make) with its output into the open `log`; its exit status. `tick` is
    called about once a second while it runs (a progress line reading the log).

    Like run_tool, in its own process group killed whole on interruption: an orphaned gcc must
    not write into a workspace our `finally` is removing."""
    proc = subprocess.Popen(dies_with_us(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    try:
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()
    except BaseException:
        kill_group(proc)
        raise


def dies_with_us(cmd: list[str]) -> list[str]:
    """`cmd` under `setpriv --pdeathsig KILL` (util-linux): the tool is killed when the thread
    that started it dies, also by SIGKILL, where no `finally` runs. An orphaned mmdebstrap or
    make would otherwise go on writing into a staging directory that `kbisect gc` must then
    leave alone until it ends (fsutil.in_use). Without setpriv the command runs as it is. (No
    preexec_fn: it is unsafe while other threads run, as the sweep's VM workers do.)

    A tool that is not there raises FileNotFoundError here, as Popen would without the wrapper
    (setpriv would instead exit 127, which callers would read as the tool failing)."""
    if not _SETPRIV:
        return list(cmd)
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(cmd[0])
    return ["setpriv", "--pdeathsig", "KILL", "--", *cmd]


_SETPRIV = shutil.which("setpriv") is not None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`'s whole process group (it was started with start_new_session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
