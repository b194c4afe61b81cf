"""One probe's guest, step by step: prepare, boot, upload, run, collect, teardown.

Each step does one thing to the guest and writes what it saw into `ProbeSession.observation`
(timed into its `phases`); none of them decides the verdict (that is `core.classify`, from the
observation alone). Trouble inside one guest is observed, not raised: a kernel that does not boot
is `booted=False` with its reason, an upload or a session that drops is `lost` with its reason.
Trouble with the machine (libvirt unreachable, no root image, no QEMU) raises InstallationError
from `prepare_machine` or `boot`, because every other kernel would fail the same way.

The VM and the SSH login come from a `Machine` handed in by a factory, so the steps run against
fakes in the quick tests.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from orchestrator.adapters import catalog
from orchestrator.adapters.guest import accel as accelmod
from orchestrator.adapters.guest import bootfiles, image, ssh
from orchestrator.adapters.guest import console as consolemod
from orchestrator.adapters.guest import vm as vmmod
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.core.bug import Bug
from orchestrator.core.classify import PANIC_LINE_RE, PANIC_RE, REASON_MAX_CHARS, RUN_MARKER, Observation, last_line
from orchestrator.core.errors import BootFailure, GuestInfra

REMOTE_DIR = "/root/repro"
DMESG_FILE = "/root/.kbisect-dmesg"
DEFAULT_BOOT_TIMEOUT = {"kvm": 90.0, "tcg": 180.0}
# A kernel that prints nothing at all for this long after start never will (a corrupt image; a
# good one prints its banner within a few seconds even under TCG). A loaded host can stall QEMU
# for a long time, though, so the rule waits half the boot timeout (SILENT_FRACTION), and never
# less than SILENT_BOOT: it is there to stop waiting for kernels that never start, not to race.
SILENT_BOOT = {"kvm": 15.0, "tcg": 30.0}
SILENT_FRACTION = 0.5
RUN_GRACE = 30.0  # host-side slack over the guest-side `timeout`
CONSOLE_SETTLE = 0.5  # after a dead guest, let the console file receive the whole trace
DEAD_STATES = ("crashed", "shutoff", "gone")
INITRAMFS_FAILED_RE = re.compile(r"kbisect-initramfs: FAILED: .*")
BOOT_DEATH_RE = re.compile(r"kbisect-initramfs: FAILED: .*|Kernel panic - not syncing.*")

Connect = Callable[[int, float, Callable[[], str | None]], ssh.Guest]  # port, deadline, blocker


@dataclass(frozen=True)
class GuestOptions:
    """Where and how big the probe VM is."""

    accel: str | None = None  # "kvm", "tcg", or None/"auto" (tried once per machine)
    uri: str = vmmod.DEFAULT_URI
    memory_mb: int = 1024
    cpus: int = 1


@dataclass
class Machine:
    """A prepared VM (overlay created, domain not started) and how to log into it once up."""

    vm: vmmod.VM
    accel: str  # resolved: "kvm" or "tcg"
    connect: Connect  # waits for the SSH banner (BootFailure if it never comes), logs in


def build_cmdline(key_arg: str) -> str:
    """Kernel command line: serial console, root on vda, and the SSH key for the guest init.

    `panic=-1` + on_reboot=destroy is the fallback for kernels without pvpanic: a panic then
    stops the domain instead of hanging until the run timeout.
    """
    return " ".join(
        [
            "console=ttyS0,115200",
            "root=/dev/vda",
            "rw",
            "panic=-1",
            "net.ifnames=0",
            "biosdevname=0",
            "random.trust_cpu=on",
            key_arg,
        ]
    )


def prepare_machine(kernel: UnpackedKernel, opts: GuestOptions, run: vmmod.Run, *,
                    show_progress: bool = True) -> Machine:
    """Boot files, root image and accelerator for `kernel`, and a VM with its own overlay.

    The one-time KVM test (a short boot) overlaps the one-time image build.
    """
    boot = bootfiles.ensure(kernel)
    found: dict[str, object] = {}

    def detect() -> None:
        try:
            found["accel"] = accelmod.resolve(opts.accel, boot.vmlinuz, boot.initrd)
        except BaseException as exc:  # any failure, re-raised in the caller's thread below
            found["error"] = exc

    detector = threading.Thread(target=detect, name="accel-detect", daemon=True)
    detector.start()
    img = image.ensure(progress=show_progress)
    detector.join()
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    acc = str(found["accel"])
    vm = vmmod.VM(
        run=run,
        vmlinuz=boot.vmlinuz,
        initrd=boot.initrd,
        modules_disk=boot.modules_disk,
        base_image=img.path,
        cmdline=build_cmdline(ssh.cmdline_key_arg()),
        cfg=vmmod.VMConfig(uri=opts.uri, accel=acc, memory_mb=opts.memory_mb, cpus=opts.cpus),
    )
    try:
        vm.create_overlay()
    except BaseException:  # any failure (also Ctrl-C): the VM's directory must not stay behind
        vm.destroy()
        raise
    return Machine(vm=vm, accel=acc, connect=partial(_ssh_login, img.host_key))


def _ssh_login(host_key: str, port: int, deadline: float, blocker: Callable[[], str | None]) -> ssh.Guest:
    """Wait for the guest's SSH banner, then log in on the same socket."""
    sock = ssh.wait_banner(port, deadline, blocker)
    return ssh.Guest(port, host_key, sock=sock)


def silent_limit(accel: str, boot_timeout: float) -> float:
    """Seconds without any console output after which a boot is given up as never started."""
    return min(boot_timeout, max(SILENT_BOOT.get(accel, SILENT_BOOT["tcg"]), boot_timeout * SILENT_FRACTION))


def run_command(bug: Bug) -> str:
    """The reproducer's command line in the guest; dmesg is saved in the same session (one round
    trip fewer than a second exec). The marker written to /dev/kmsg at debug level (below the
    console's log level, so only dmesg has it) is where the run's part of dmesg begins."""
    return (
        "i=0; while [ ! -e /run/kbisect/ready ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
        f"echo '<7>{RUN_MARKER}' > /dev/kmsg 2>/dev/null; "
        f"cd {REMOTE_DIR} && timeout -k 5 {int(bug.timeout)} bash {shlex.quote(bug.entry)}; "
        f"rc=$?; dmesg > {DMESG_FILE} 2>&1; exit $rc"
    )


def _quiet(_text: str) -> None:
    """Phase announcements nobody listens to."""


class ProbeSession:
    """One throw-away guest for one reproducer run; call the steps in order, teardown always."""

    def __init__(
        self,
        bug: Bug,
        prepare: Callable[[], Machine],
        probe_dir: Path,
        *,
        upload_dirs: Sequence[Path] | None = None,
        boot_timeout: float | None = None,  # None: DEFAULT_BOOT_TIMEOUT for the accelerator
        phase: Callable[[str], None] = _quiet,
        on_output: Callable[[str, str], None] | None = None,
        console: Callable[[object], consolemod.Console] = consolemod.for_vm,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.bug = bug
        self.probe_dir = probe_dir
        self.observation = Observation()
        self._prepare = prepare
        self._upload_dirs = list(upload_dirs) if upload_dirs is not None else catalog.guest_dirs(bug)
        self._boot_timeout = boot_timeout
        self._phase = phase
        self._on_output = on_output
        self._console_for = console
        self._console: consolemod.Console | None = None
        self._machine: Machine | None = None
        self._guest: ssh.Guest | None = None
        self._run_offset = 0  # console byte offset where the reproducer's part begins
        self._aborted: str | None = None
        self._cancelled = cancelled  # the caller wants the guest gone now (a stopped parallel sweep)
        self._runs = 0  # reproducers begun in this guest (a shared guest runs several in turn)
        self._closed = False  # the current run's console part is already saved

    # -- a shared guest ------------------------------------------------------------------------
    def next_run(self, bug: Bug, probe_dir: Path, upload_dirs: Sequence[Path] | None = None) -> None:
        """Close the current run (its console part saved in its own probe directory) and begin
        `bug` in the same guest: a fresh Observation that starts booted, its console part from
        its own upload on. Used by the sweep's one boot per kernel; `observation` before the
        call belongs to the run that just ended."""
        self.finish_run()
        self.bug, self.probe_dir = bug, probe_dir
        self._upload_dirs = list(upload_dirs) if upload_dirs is not None else catalog.guest_dirs(bug)
        self.observation = Observation(booted=True)
        self._aborted = None
        self._closed = False

    def finish_run(self) -> None:
        """Save the current run's console part (from its start to now) beside its record."""
        if self._machine is not None and not self._closed:
            self._keep_console(end=self._need_console().size())
            self._closed = True

    # -- steps ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Boot files, root image, accelerator, overlay (InstallationError on machine trouble)."""
        t = time.monotonic()
        self._phase("preparing (root image, boot files)")
        self._machine = self._prepare()
        self._console = self._console_for(self._machine.vm)
        self._timed("prepare", t)

    def boot(self) -> bool:
        """Start the domain and log in over SSH; False (with the reason observed) if it never came up."""
        m = self._need_machine()
        t = time.monotonic()
        self._phase(f"booting {m.vm.name} ({m.accel})")
        try:
            m.vm.start()
            self._guest = self._login(m)
            self.observation.booted = True
        except BootFailure as exc:
            self.observation.boot_reason = str(exc)
        self._timed("boot", t)
        return self.observation.booted

    def upload(self) -> bool:
        """SFTP the reproducer (and the shared library); False, observed as lost, if it failed."""
        vm, guest = self._need_machine().vm, self._need_guest()
        t = time.monotonic()
        self._phase("uploading reproducer")
        self._run_offset = self._need_console().size()  # provisional: a guest dying during upload counts
        ok = False
        try:
            if self._runs:  # a shared guest: the previous reproducer's files and dmesg go first
                guest.run(f"rm -rf {REMOTE_DIR} {DMESG_FILE}", 30)
            self._runs += 1
            for local in self._upload_dirs:
                guest.upload_dir(local, REMOTE_DIR)
            guest.mkdirs(f"{REMOTE_DIR}/out")
            ok = True
        except GuestInfra as exc:  # the guest went away (or the directory is unreadable)
            self.observation.lost = f"upload failed: {exc}"
            self.observation.crashed = vm.state() == "crashed"
        self._timed("upload", t)
        return ok

    def run(self) -> None:
        """Run the reproducer under its timeout; stop early when the guest dies or panics."""
        guest = self._need_guest()
        obs = self.observation
        t = time.monotonic()
        self._phase(f"running {self.bug.entry} (timeout {self.bug.timeout}s)")
        self._run_offset = self._need_console().size()
        try:
            result = guest.run(run_command(self.bug), self.bug.timeout + RUN_GRACE,
                               on_output=self._on_output, should_abort=self._abort_reason)
        except GuestInfra as exc:  # connection dropped mid-run (guest died)
            obs.lost = str(exc)
        else:
            obs.exit_code, obs.timed_out = result.exit_code, result.timed_out
            obs.stdout, obs.stderr = result.stdout, result.stderr
            if result.aborted:
                obs.lost = self._aborted = result.aborted
        self._timed("run", t)

    def collect(self) -> None:
        """Fetch /root/repro/out/* and dmesg from a guest still running; read its crash state."""
        vm, guest = self._need_machine().vm, self._need_guest()
        t = time.monotonic()
        self._phase("collecting artefacts")
        st = vm.state()
        self.observation.crashed = st == "crashed"
        if st == "running" and not self._aborted:
            self.observation.artefacts += _collect(guest, self.probe_dir)
            self.observation.dmesg = _read_dmesg(self.probe_dir, self.observation.artefacts)
        else:
            time.sleep(CONSOLE_SETTLE)
        self._timed("collect", t)

    def teardown(self, background: bool = True) -> None:
        """Close SSH, keep the console, destroy the domain. Runs after any step, even a failed one.

        background=True (normal end) lets libvirt's slow stop overlap what the caller does next
        (joined before exit, see vm.VM.destroy); after a failure or interrupt it is done now.
        """
        t = time.monotonic()
        self._phase("tearing down")
        if self._guest is not None:
            self._guest.close()
        if self._machine is not None:
            if not self._closed:
                self._keep_console()
                self._closed = True
            self._machine.vm.destroy(background=background)
        self._timed("teardown", t)

    # -- helpers -------------------------------------------------------------------------------
    def _login(self, m: Machine) -> ssh.Guest:
        """SSH into the started guest, giving up early when it is clearly dead or silent.

        The boot timeout counts from the domain's start: libvirt itself can take a minute to
        create it on a misconfigured host (see vm._warn_kvm_mode).
        """
        limit = self._boot_timeout or DEFAULT_BOOT_TIMEOUT[m.accel]
        deadline = time.monotonic() + limit
        self._phase(f"waiting for ssh on 127.0.0.1:{m.vm.port}")
        since = time.monotonic()
        silent = silent_limit(m.accel, limit)
        con = self._need_console()

        def blocker() -> str | None:
            if self._cancelled():
                return "stopped"
            why = _boot_blocker(m.vm, con)
            if why is None and time.monotonic() - since > silent and con.size() == 0:
                why = f"no console output within {silent:.0f}s (the kernel never started)"
            return why

        return m.connect(m.vm.port, deadline, blocker)

    def _abort_reason(self) -> str | None:
        """Why waiting for the reproducer is pointless (the guest is dead or panicked), or None."""
        if self._cancelled():
            return "stopped"
        vm = self._need_machine().vm
        st = vm.state()
        if st in DEAD_STATES:
            return f"guest {st}"
        if PANIC_RE.search(self._need_console().text(self._run_offset)):
            return "kernel panic on console"
        return None

    def _keep_console(self, end: int | None = None) -> None:
        """Split the console at the run's start and save it beside the record (console.log first,
        every rotated part joined in order); note any text lost after the run started. `end`
        (a shared guest): where this run's part stops, the next reproducer's begins there.

        The offset is a byte offset applied to the decoded text: exact for the ASCII a kernel
        console prints.
        """
        obs = self.observation
        con = self._need_console()
        text = con.text()[:end]
        if obs.booted:
            obs.console_boot, obs.console_run = text[: self._run_offset], text[self._run_offset:]
            obs.console_lost = con.lost_after(self._run_offset)
        else:
            obs.console_boot, obs.console_run = text, ""
        try:
            self.probe_dir.mkdir(parents=True, exist_ok=True)
            (self.probe_dir / "console.log").write_text(text)
            obs.artefacts.insert(0, str(self.probe_dir / "console.log"))
        except OSError:  # results disk trouble: the verdict still stands, the copy is a convenience
            pass

    def _timed(self, step: str, since: float) -> None:
        self.observation.phases[step] = round(time.monotonic() - since, 3)

    def _need_machine(self) -> Machine:
        if self._machine is None:
            raise RuntimeError("ProbeSession: prepare() has not run")
        return self._machine

    def _need_console(self) -> consolemod.Console:
        if self._console is None:
            raise RuntimeError("ProbeSession: prepare() has not run")
        return self._console

    def _need_guest(self) -> ssh.Guest:
        if self._guest is None:
            raise RuntimeError("ProbeSession: boot() did not log in")
        return self._guest


def _boot_blocker(vm: vmmod.VM, console: consolemod.Console) -> str | None:
    """Why waiting for SSH is pointless, or None while the guest may still come up."""
    st = vm.state()
    con = console.text()
    if st in DEAD_STATES:
        time.sleep(0.3)
        con = console.text()
        return f"guest {st} before ssh: {_last_meaningful(con)}"
    m = INITRAMFS_FAILED_RE.search(con)
    if m:
        return m.group(0)
    if PANIC_RE.search(con):
        time.sleep(0.3)
        return _last_meaningful(console.text(), prefer_panic=True)
    return None


def _last_meaningful(console: str, prefer_panic: bool = False) -> str:
    """The console line that explains a dead boot: the panic, the initramfs failure, the last line."""
    if prefer_panic:
        m = PANIC_LINE_RE.search(console)
        if m:
            return m.group(0).strip()[:REASON_MAX_CHARS]
    found = BOOT_DEATH_RE.findall(console)
    if found:
        return found[-1].strip()[:REASON_MAX_CHARS]
    return last_line(console) or "no console output"


def _collect(guest: ssh.Guest, probe_dir: Path) -> list[str]:
    """Fetch /root/repro/out/* and dmesg into the probe's result directory; what arrived.

    Artefacts are best effort: a guest that drops now has already given its verdict."""
    got: list[str] = []
    try:
        got += [str(p) for p in guest.fetch_dir(f"{REMOTE_DIR}/out", probe_dir / "out")]
    except (GuestInfra, OSError):  # session dropped, or the results disk refused the copy
        pass
    dest = probe_dir / "dmesg.txt"
    try:
        guest.get(DMESG_FILE, dest)
    except GuestInfra:  # the run did not get to save it (host-side timeout): ask now
        try:
            dest.write_text(guest.run("dmesg", 30).stdout)
        except (GuestInfra, OSError):
            return got
    got.append(str(dest))
    return got


def _read_dmesg(probe_dir: Path, artefacts: list[str]) -> str:
    """The dmesg saved beside the record, when it arrived ("" otherwise): classify scans it too."""
    path = probe_dir / "dmesg.txt"
    if str(path) not in artefacts:
        return ""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""
