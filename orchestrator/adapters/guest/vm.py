"""Throw-away libvirt VMs: one per probe, always destroyed.

Each VM is a *transient* libvirt domain (createXML), so destroying it leaves nothing defined.
It boots the kernel directly (no bootloader), writes to its own qcow2 overlay over the shared
root image, reads the kernel's modules from a read-only shareable disk, logs its serial console
to a file, reports panics through pvpanic (`on_crash=preserve`), and is reachable only through
a QEMU user-network port forward on 127.0.0.1 (`restrict=on`; no libvirt network or bridge).

Leaks are handled at four levels: a `finally` in `VM.__exit__` (normal exit, exceptions,
Ctrl-C; the CLI turns SIGTERM/SIGHUP into KeyboardInterrupt), an atexit hook for anything still
registered, libvirt's VIR_DOMAIN_START_AUTODESTROY (the domain dies when the connection that
started it closes, which the kernel does for a SIGKILLed orchestrator), and `gc()` for whatever
is left (a connection without the flag).

Every domain records its owner in its `<metadata>` (`Owner`: the $KBISECT_HOME, pid, start time
and pid namespace of the process that started it), and only that home ever destroys it: `gc` and
the reaper at the start of every run destroy a domain only when its recorded home is their own
and its owner is provably dead (`reapable`). Other homes' domains, live ones, domains whose owner
lives in another pid namespace (its pid means nothing here) and domains without kbisect's
metadata are never touched: other kbisect installations and CI share this host's libvirt, with
the same `kbisect-` names.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.adapters import config
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.errors import BootFailure, InstallationError

DEFAULT_URI = "qemu:///system"
PREFIX = "kbisect-"
TEMPLATE = "domain.xml.j2"
OWNER_RE = re.compile(r"owner pid (\d+) start (\d+)")  # the description's human-readable copy
# The namespace of kbisect's <metadata> child. `.invalid` is reserved (RFC 2606): it names no host.
OWNER_NS = "https://kbisect.invalid/xmlns/owner/1"

_live: dict[str, "VM"] = {}
_pending: list[threading.Thread] = []
_live_lock = threading.Lock()
# URIs whose createXML refused VIR_DOMAIN_START_AUTODESTROY: asked once per process, then 0.
_no_autodestroy: set[str] = set()


def _proc_start(pid: int) -> int | None:
    """Process start time in clock ticks (guards against pid reuse)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(data.rsplit(")", 1)[1].split()[19])


def owner_alive(pid: int, start: int | None) -> bool:
    now = _proc_start(pid)
    return now is not None and (start is None or now == start)


def this_pidns() -> str:
    """This process's pid namespace ("pid:[4026531836]"): a recorded pid is only judged alive or
    dead in the namespace it was recorded in ("" where /proc does not say)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def home_key(home: Path) -> str:
    """A home as domains record it: resolved, so two spellings of one directory are one owner."""
    return str(Path(home).resolve())


@dataclass(frozen=True)
class Owner:
    """Who started a domain, as its <metadata> records it: only this owner's home may destroy it."""

    home: str
    pid: int
    start: int | None
    pidns: str

    @classmethod
    def me(cls, home: Path) -> "Owner":
        pid = os.getpid()
        return cls(home=home_key(home), pid=pid, start=_proc_start(pid), pidns=this_pidns())


def owner_of(domain_xml: str) -> Owner | None:
    """The owner recorded in a domain's XML, None when it holds no (readable) kbisect metadata:
    a domain of another tool, or of an older kbisect, that no gc may judge."""
    try:
        node = ET.fromstring(domain_xml).find(f"metadata/{{{OWNER_NS}}}owner")
        if node is None:
            return None
        start = node.get("start")
        return Owner(home=node.get("home") or "", pid=int(node.get("pid", "")),
                     start=int(start) if start and start.isdigit() else None, pidns=node.get("pidns") or "")
    except (ET.ParseError, ValueError):
        return None


def reapable(owner: Owner | None, home: Path, pidns: str | None = None,
             alive: Callable[[int, int | None], bool] = owner_alive) -> bool:
    """May the gc of `home` destroy a domain of `owner`? Only its own home's, whose owner is dead.

    Anything else is not ours to judge: another home's domain (its own gc and reaper answer for
    it), a domain without kbisect's metadata, or one recorded in another pid namespace, whose pid
    cannot be looked up here (a live owner in a container would look dead)."""
    if owner is None or not owner.home or owner.home != home_key(home):
        return False
    if owner.pidns != (this_pidns() if pidns is None else pidns):
        return False
    return not alive(owner.pid, owner.start)


def connect(uri: str | None = None):
    """Open libvirt, with libvirt's own stderr chatter silenced (unreachable: InstallationError)."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    uri = uri or os.environ.get("KBISECT_CONNECT") or DEFAULT_URI
    if "system" in uri:
        _warn_kvm_mode()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise InstallationError(f"cannot connect to libvirt at {uri}: {exc} (is libvirtd running? ./setup.sh starts it)") from None


_warned = False


def _warn_kvm_mode() -> None:
    """Warn once when /dev/kvm is not group-accessible to libvirt's QEMU user.

    libvirt then finds its cached QEMU capabilities ("KVM was enabled when probing") stale and
    re-probes QEMU on every domain start: 60 s and more per VM on a busy host, measured. Debian's
    udev rule makes /dev/kvm root:kvm 0660; hosts without udev need it done by hand (setup.sh).
    """
    global _warned
    if _warned:
        return
    _warned = True
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return
    if not st.st_mode & 0o060:
        import sys

        print(
            "kbisect: warning: /dev/kvm is not group read/write, so libvirt re-probes QEMU on every VM "
            "start (very slow); fix: chgrp kvm /dev/kvm && chmod 0660 /dev/kvm",
            file=sys.stderr,
        )


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (QEMU binds it; a race is retried by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VMConfig:
    """Sizing and placement of probe VMs."""

    uri: str = DEFAULT_URI
    accel: str = "tcg"  # resolved: "kvm" or "tcg"
    memory_mb: int = 1024
    cpus: int = 1
    emulator: str = "/usr/bin/qemu-system-x86_64"


class Run:
    """One orchestrator process's set of VMs, with a state file naming its owner.

    `runs/<run id>/state.json` holds the owner pid and start time; the VMs' overlays and
    consoles live beside it while they run. The directory is created exclusively: two processes
    drawing the same random id must not share (and later delete) one directory, so a collision
    draws another id; an id the caller chose that is already taken is an error.
    """

    ATTEMPTS = 32

    def __init__(self, run_id: str | None = None, new_id: Callable[[], str] = lambda: secrets.token_hex(3)) -> None:
        runs = config.subdir("runs")
        self.id, self.dir = _claim(runs, run_id, new_id, self.ATTEMPTS)
        self.owner = Owner.me(runs.parent)
        self.pid = self.owner.pid
        self.start = self.owner.start
        self._n = 0
        self._lock = threading.Lock()
        state = {"run_id": self.id, "pid": self.pid, "start": self.start, "pidns": self.owner.pidns,
                 "home": self.owner.home, "created": time.time()}
        atomic_write(self.dir / "state.json", json.dumps(state))

    def next_name(self) -> tuple[str, Path]:
        with self._lock:
            self._n += 1
            n = self._n
        d = self.dir / f"vm-{n}"
        d.mkdir(parents=True, exist_ok=True)
        return f"{PREFIX}{self.id}-{n}", d

    def close(self) -> None:
        """Remove the run's directory once its VMs are gone."""
        shutil.rmtree(self.dir, ignore_errors=True)


def _claim(runs: Path, run_id: str | None, new_id: Callable[[], str], attempts: int) -> tuple[str, Path]:
    """mkdir without exist_ok: the directory that succeeds is this run's alone."""
    for _ in range(1 if run_id else attempts):
        rid = run_id or new_id()
        try:
            (runs / rid).mkdir()
        except FileExistsError:
            continue
        return rid, runs / rid
    if run_id:
        raise InstallationError(f"run id {run_id} is already in use ({runs / run_id} exists)")
    raise InstallationError(f"no free run id after {attempts} attempts in {runs}")


def render_domain_xml(**values) -> str:
    """The domain XML for one probe VM (pure; unit-tested without libvirt)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    values.setdefault("seclabel_user", None)
    values["owner_ns"] = OWNER_NS
    values.setdefault("seclabel_group", None)
    return env.get_template(TEMPLATE).render(**values)


@dataclass
class VM:
    """One running probe VM. Use as a context manager: it is destroyed on any exit."""

    run: Run
    vmlinuz: Path
    initrd: Path
    modules_disk: Path
    base_image: Path
    cmdline: str
    cfg: VMConfig = field(default_factory=VMConfig)
    name: str = ""
    dir: Path = Path()
    port: int = 0
    console_log: Path = Path()
    overlay: Path = Path()
    _conn: object = None
    _dom: object = None

    def __post_init__(self) -> None:
        self.name, self.dir = self.run.next_name()
        self.console_log = self.dir / "console.log"
        self.overlay = self.dir / "overlay.qcow2"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "VM":
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create_overlay(self) -> None:
        """Copy-on-write overlay: the VM's only writable disk; the base image stays untouched.

        Failing concerns the machine (disk full, base image unreadable): InstallationError."""
        proc = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.base_image), str(self.overlay)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise InstallationError(f"qemu-img create overlay failed: {proc.stderr.strip()}")

    def xml(self) -> str:
        system = self.cfg.uri.startswith("qemu:///system") or self.cfg.uri.startswith("qemu+unix:///system")
        return render_domain_xml(
            name=self.name,
            domain_type="kvm" if self.cfg.accel == "kvm" else "qemu",
            owner=self.run.owner,
            memory_mb=self.cfg.memory_mb,
            cpus=self.cfg.cpus,
            kernel=str(self.vmlinuz),
            initrd=str(self.initrd),
            cmdline=self.cmdline,
            emulator=self.cfg.emulator,
            overlay=str(self.overlay),
            modules_disk=str(self.modules_disk),
            console_log=str(self.console_log),
            ssh_port=self.port,
            # Run QEMU as ourselves and never relabel: the shared base image and cached kernels
            # must not change owner under other running VMs, and need no world-readable path.
            seclabel_user=os.getuid() if system else None,
            seclabel_group=os.getgid() if system else None,
        )

    def start(self) -> None:
        import libvirt

        if not self.overlay.exists():
            self.create_overlay()
        self._conn = connect(self.cfg.uri)
        with _live_lock:
            _live[self.name] = self
        last = None
        for _attempt in range(4):
            self.port = free_port()
            self.console_log.unlink(missing_ok=True)
            try:
                self._dom = create_domain(self._conn, self.xml(), self.cfg.uri)
                return
            except libvirt.libvirtError as exc:
                last = str(exc)
                if "hostfwd" in last or "forwarding" in last or "Address already in use" in last:
                    continue  # another process took the port between our check and QEMU's bind
                break
        raise BootError(f"libvirt could not start the VM: {last}")

    def destroy(self, background: bool = False) -> None:
        """Destroy the domain (idempotent), then drop the overlay. Never raises.

        libvirt needs ~1.5 s to stop a domain on some hosts (it polls until the QEMU process is
        reaped). With background=True that wait overlaps whatever the caller does next; the
        thread is non-daemon and tracked, so the interpreter cannot exit before it finishes and
        `wait_pending()` joins it explicitly.
        """
        import libvirt  # slow import: only probes pay it

        if background:
            t = threading.Thread(target=self.destroy, name=f"destroy-{self.name}")
            with _live_lock:
                _pending.append(t)
            t.start()
            return
        dom, self._dom = self._dom, None
        if dom is not None:
            try:
                dom.destroy()
            except libvirt.libvirtError:  # already gone (it panicked and was reaped, or shut down)
                pass
        elif self._conn is not None:
            _destroy_by_name(self._conn, self.name, self.run.owner)
        # The VM's directory (overlay, console) goes too: callers copy the console first.
        shutil.rmtree(self.dir, ignore_errors=True)
        with _live_lock:
            _live.pop(self.name, None)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:  # a connection libvirtd already dropped
                pass

    # -- observation -----------------------------------------------------------------------
    def state(self) -> str:
        """'running', 'crashed', 'shutoff', 'paused' or 'gone'."""
        import libvirt

        if self._dom is None:
            return "gone"
        try:
            st, reason = self._dom.state()
        except libvirt.libvirtError:
            return "gone"
        if st == libvirt.VIR_DOMAIN_CRASHED:
            return "crashed"
        if st == libvirt.VIR_DOMAIN_PAUSED and reason == getattr(libvirt, "VIR_DOMAIN_PAUSED_CRASHED", 9):
            return "crashed"
        if st == libvirt.VIR_DOMAIN_SHUTOFF:
            return "shutoff"
        if st == libvirt.VIR_DOMAIN_PAUSED:
            return "paused"
        return "running"

    def console(self, offset: int = 0) -> str:
        try:
            with open(self.console_log, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def console_size(self) -> int:
        try:
            return self.console_log.stat().st_size
        except OSError:
            return 0


def _unsupported_flag(exc) -> bool:
    """libvirt's answer to a flag this driver does not know (VIR_ERR_INVALID_ARG from
    virCheckFlags, "unsupported flags"; VIR_ERR_NO_SUPPORT / ARGUMENT_UNSUPPORTED elsewhere)."""
    import libvirt

    codes = {libvirt.VIR_ERR_NO_SUPPORT, getattr(libvirt, "VIR_ERR_ARGUMENT_UNSUPPORTED", 74)}
    code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
    text = str(exc).lower()
    return code in codes or (code == libvirt.VIR_ERR_INVALID_ARG and "flag" in text) or "unsupported flag" in text


def create_domain(conn, xml: str, uri: str):
    """createXML with VIR_DOMAIN_START_AUTODESTROY, so the domain dies with the connection that
    started it (libvirt's virDomainCreateXML docs): a SIGKILLed orchestrator's kernel closes the
    socket and libvirtd destroys the domain, before any `kbisect gc`. A connection that refuses
    the flag is remembered and started with 0; `gc` then covers it."""
    import libvirt

    if uri not in _no_autodestroy:
        try:
            return conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        except libvirt.libvirtError as exc:
            if not _unsupported_flag(exc):
                raise
            _no_autodestroy.add(uri)
    return conn.createXML(xml, 0)


class BootError(BootFailure):
    """The VM could not be started or never became reachable: a SKIP, not a user error."""


def _destroy_by_name(conn, name: str, owner: Owner) -> None:
    """Destroy the domain called `name` only if `owner` started it. A createXML that failed
    because the name was taken leaves another home's live domain under that name (run ids are
    unique within one home only): destroying by name alone would kill it."""
    import libvirt  # slow import: only probes pay it

    try:
        dom = conn.lookupByName(name)
        if owner_of(dom.XMLDesc(0)) == owner:
            dom.destroy()
    except libvirt.libvirtError:  # no such domain: nothing to destroy
        pass


def wait_pending(timeout: float | None = 120.0) -> None:
    """Join background destroys started by `VM.destroy(background=True)`."""
    with _live_lock:
        threads = list(_pending)
    for t in threads:
        t.join(timeout)
    with _live_lock:
        _pending[:] = [t for t in _pending if t.is_alive()]


def _atexit_destroy() -> None:
    wait_pending()
    with _live_lock:
        vms = list(_live.values())
    for vm in vms:
        vm.destroy()


atexit.register(_atexit_destroy)


def gc(uri: str | None = None, home: Path | None = None, conn=None) -> list[str]:
    """Destroy the domains of `home` (default: $KBISECT_HOME) whose owner process is gone, and
    remove that home's dead runs' overlays and consoles. Returns what was removed.

    Only `reapable` domains are touched: never another home's, never a live owner's (see the
    module docstring). `conn` is an open libvirt connection (tests pass a fake)."""
    import libvirt

    home = config.home() if home is None else home
    removed: list[str] = []
    own_conn = conn is None
    conn = connect(uri) if own_conn else conn
    try:
        for dom in conn.listAllDomains(0):
            name = dom.name()
            if not name.startswith(PREFIX):
                continue
            try:
                desc = dom.XMLDesc(0)
            except libvirt.libvirtError:
                continue
            if not reapable(owner_of(desc), home):
                continue
            try:
                persistent = bool(dom.isPersistent())
                if dom.isActive():
                    dom.destroy()  # a transient domain is gone after this
                if persistent:
                    dom.undefine()
                removed.append(f"domain {name}")
            except libvirt.libvirtError:
                pass
    finally:
        if own_conn:
            conn.close()
    return removed + _gc_run_dirs(home=home)


def run_owner_alive(run_dir: Path) -> bool | None:
    """Is the process that owns `run_dir` (its state.json) alive? None when the state cannot be
    read (a run still writing it, or a damaged one): each caller decides what that means."""
    try:
        st = json.loads((run_dir / "state.json").read_text())
        if st.get("pidns", this_pidns()) != this_pidns():
            return True  # recorded in another pid namespace: its pid cannot be judged here
        return owner_alive(int(st["pid"]), st.get("start"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _gc_run_dirs(home: Path | None = None) -> list[str]:
    """Remove `home`'s run directories (overlays, consoles) whose owner process is gone; never
    another home's (each home's runs/ holds only its own)."""
    removed: list[str] = []
    runs = (config.home() if home is None else Path(home)) / "runs"
    for d in sorted(runs.iterdir()) if runs.is_dir() else []:
        alive = run_owner_alive(d)
        if alive is None:
            alive = time.time() - d.stat().st_mtime < 60  # a run still writing its state file
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"run dir {d}")
    return removed
