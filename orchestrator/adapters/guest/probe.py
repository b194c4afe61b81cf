"""One probe: boot one kernel in a fresh VM, run one reproducer over SSH, read one verdict.

Phases (each timed into ProbeRecord.phases): prepare (kernel fetch, root image, boot files,
accelerator, overlay), boot (domain start to SSH login), upload (SFTP the reproducer), run,
collect (artefacts and dmesg), teardown (destroy the domain, drop the overlay).

Verdict rules, in order (the kernel's own word wins):
1. the guest never reached SSH            -> SKIP "boot failure: ..." (console tail kept)
2. a panic during the run (pvpanic crash state or "Kernel panic" on the console)
                                           -> BAD, with the console excerpt
3. an Oops / BUG: / WARNING: trace on the console during the run -> BAD, excerpt kept
   (only console text written after the run started counts, not boot noise)
4. the reproducer's exit code, as `git bisect run`: 0 GOOD, 1 BAD, 125 SKIP; anything else,
   a timeout or a lost connection -> SKIP with the reason.
The reason for GOOD/BAD/125 is the last non-empty stdout line of the reproducer.

Python API for the bisection engine: `run_probe(kernel_spec, bug)` and
`run_probe_kernel(kernel, bug)`, plus `run_repeated(...)` for the repeat loop.
"""

from __future__ import annotations

import atexit
import json
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from orchestrator.adapters import catalog, config
from orchestrator.core.bug import Bug
from orchestrator.core.errors import KbisectError
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.core.verdict import ProbeRecord, Verdict

REMOTE_DIR = "/root/repro"
DMESG_FILE = "/root/.kbisect-dmesg"
TRACE_RE = re.compile(
    r"Kernel panic - not syncing|\bOops\b|\bBUG: |kernel BUG at|\bWARNING: |general protection fault"
    r"|Unable to handle kernel|BUG: unable to handle"
)
PANIC_RE = re.compile(r"Kernel panic - not syncing")
EXCERPT_LINES_BEFORE = 3
EXCERPT_LINES_AFTER = 45
EXCERPT_MAX_CHARS = 8000
TAIL_LINES = 40
DEFAULT_BOOT_TIMEOUT = {"kvm": 90.0, "tcg": 180.0}
# A kernel that prints nothing at all this long after start never will (corrupt image; a good
# one prints its banner within ~1 s, even under TCG on a loaded host).
SILENT_BOOT = {"kvm": 15.0, "tcg": 30.0}
RUN_GRACE = 30.0  # host-side slack over the guest-side `timeout`


# -- pure verdict logic (unit-tested) -------------------------------------------------------

def last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""


def console_trace(text: str) -> tuple[str, str] | None:
    """First kernel trace in `text`: (headline, excerpt), or None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = TRACE_RE.search(line)
        if m:
            lo = max(0, i - EXCERPT_LINES_BEFORE)
            excerpt = "\n".join(lines[lo : i + EXCERPT_LINES_AFTER])[:EXCERPT_MAX_CHARS]
            return line[m.start():].strip()[:300], excerpt
    return None


def tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-n:])[-EXCERPT_MAX_CHARS:]


def classify(
    *,
    booted: bool,
    boot_reason: str = "",
    console_boot: str = "",
    console_run: str = "",
    crashed: bool = False,
    exit_code: int | None = None,
    timed_out: bool = False,
    stdout: str = "",
    timeout: int | float = 0,
    lost: str | None = None,
) -> tuple[Verdict, str, str]:
    """(verdict, reason, console excerpt) from what a probe observed. See module docstring."""
    if not booted:
        return Verdict.SKIP, f"boot failure: {boot_reason}".strip().rstrip(":"), tail(console_boot)
    trace = console_trace(console_run)
    if crashed or (trace and PANIC_RE.search(console_run)):
        panic = re.search(r"Kernel panic - not syncing.*", console_run)
        headline = panic.group(0).strip()[:300] if panic else (trace[0] if trace else "guest crashed")
        excerpt = trace[1] if trace else tail(console_run)
        return Verdict.BAD, f"kernel panic: {headline}", excerpt
    if trace:
        return Verdict.BAD, f"kernel trace: {trace[0]}", trace[1]
    if timed_out or exit_code in (124, 137):
        return Verdict.SKIP, f"reproducer timed out after {timeout:g}s", ""
    if exit_code is None:
        return Verdict.SKIP, f"reproducer lost: {lost or 'no exit status'}", tail(console_run)
    line = last_line(stdout)
    if exit_code == 0:
        return Verdict.GOOD, line or "exit 0", ""
    if exit_code == 1:
        return Verdict.BAD, line or "exit 1", ""
    if exit_code == 125:
        return Verdict.SKIP, line or "reproducer asked to skip (125)", ""
    return Verdict.SKIP, f"reproducer error: exit {exit_code}" + (f": {line}" if line else ""), ""


def aggregate(records: list[ProbeRecord], bad_needed: int = 1) -> Verdict:
    """One verdict from repeated probes: BAD once `bad_needed` runs were bad, else GOOD if any
    run was good, else SKIP."""
    bad = sum(r.verdict == Verdict.BAD for r in records)
    if bad >= max(1, bad_needed):
        return Verdict.BAD
    if any(r.verdict == Verdict.GOOD for r in records):
        return Verdict.GOOD
    return Verdict.SKIP


# -- progress -------------------------------------------------------------------------------

class Progress:
    """Phase names on stderr (rich status line), reproducer output streamed beneath it."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self._status = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)
            self._status = self.console.status(f"{label}: starting")
            try:
                self._status.start()
            except Exception:  # another probe in this process owns the live display
                self._status = None

    def phase(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"[bold]{self.label}[/]: {text}")

    def line(self, text: str) -> None:
        if self.enabled:
            from rich.markup import escape

            self.console.print(f"[dim]  | {escape(text)}[/]")

    def done(self, text: str) -> None:
        if self.enabled:
            self.stop()
            self.console.print(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


# -- signal handling ------------------------------------------------------------------------

@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so every `finally` destroys its VM."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Shield teardown from a second Ctrl-C / SIGTERM (the VM must still be destroyed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, lambda n, _f: pending.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if pending:
        raise KeyboardInterrupt(f"signal {pending[0]}")


# -- the probe ------------------------------------------------------------------------------

_run_lock = threading.Lock()
_current_run = None


def current_run():
    """This process's Run (state file + VM names); reaps dead runs' leftovers when created."""
    global _current_run
    from orchestrator.adapters.guest import vm as vmmod

    with _run_lock:
        if _current_run is None:
            _current_run = vmmod.Run()
            atexit.register(_close_run, _current_run)
        return _current_run


def _close_run(run) -> None:
    from orchestrator.adapters.guest import vm as vmmod

    vmmod.wait_pending()
    vmmod._atexit_destroy()
    run.close()


_reaped: set[str] = set()


def _reap_stale(uri: str | None) -> None:
    """Once per process and URI: destroy domains/overlays whose owner process is dead."""
    from orchestrator.adapters.guest import vm as vmmod

    key = uri or ""
    if key in _reaped:
        return
    _reaped.add(key)
    try:
        vmmod.gc(uri)
    except KbisectError:
        raise
    except Exception:
        pass


def run_probe_kernel(
    kernel: UnpackedKernel,
    bug: Bug,
    *,
    accel: str | None = None,
    uri: str | None = None,
    memory_mb: int = 1024,
    cpus: int = 1,
    boot_timeout: float | None = None,
    results_dir: Path | None = None,
    progress: bool = True,
    echo_output: bool = True,
    on_output: Callable[[str, str], None] | None = None,
) -> ProbeRecord:
    """Boot `kernel` in a fresh VM, run `bug`'s reproducer, return the verdict record.

    Infrastructure trouble that concerns this kernel (cannot boot, no SSH) is a SKIP record;
    trouble that concerns the installation (no libvirt, cannot build the image) raises
    KbisectError, because retrying other kernels would fail the same way.
    """
    from orchestrator.adapters.guest import accel as accelmod
    from orchestrator.adapters.guest import bootfiles, image, ssh
    from orchestrator.adapters.guest import vm as vmmod

    if not (Path(bug.dir) / bug.entry).is_file():
        raise KbisectError(f"reproducer {bug.id}: no entry script {bug.entry} in {bug.dir}")
    uri = uri or vmmod.DEFAULT_URI
    started_at = time.time()
    phases: dict[str, float] = {}
    prog = Progress(progress, f"{kernel.spec} × {bug.id}")
    t = time.monotonic()
    run = current_run()
    probe_dir = _probe_dir(results_dir, run.id)
    artefacts: list[str] = []
    rec = ProbeRecord(kernel=kernel.spec, bug=bug.id, verdict=Verdict.SKIP, reason="", started_at=started_at)
    vm = None
    guest = None
    booted = False
    boot_reason = ""
    result = None
    console_offset = 0
    crashed = False
    lost = None
    uploaded = False
    try:
        with terminate_as_interrupt():
            prog.phase("preparing (root image, boot files)")
            _reap_stale(uri)
            boot = bootfiles.ensure(kernel)
            # The one-time KVM test (a short boot) overlaps the one-time image build.
            acc_box: dict[str, object] = {}

            def detect() -> None:
                try:
                    acc_box["accel"] = accelmod.resolve(accel, boot.vmlinuz, boot.initrd)
                except BaseException as exc:  # re-raised in the caller's thread
                    acc_box["error"] = exc

            detector = threading.Thread(target=detect, name="accel-detect", daemon=True)
            detector.start()
            img = image.ensure(progress=progress)
            detector.join()
            if "error" in acc_box:
                raise acc_box["error"]  # type: ignore[misc]
            acc = str(acc_box["accel"])
            cfg = vmmod.VMConfig(uri=uri, accel=acc, memory_mb=memory_mb, cpus=cpus)
            cmdline = build_cmdline(ssh.cmdline_key_arg())
            vm = vmmod.VM(
                run=run,
                vmlinuz=boot.vmlinuz,
                initrd=boot.initrd,
                modules_disk=boot.modules_disk,
                base_image=img.path,
                cmdline=cmdline,
                cfg=cfg,
            )
            vm.create_overlay()
            phases["prepare"] = round(time.monotonic() - t, 3)

            t = time.monotonic()
            prog.phase(f"booting {vm.name} ({acc})")
            try:
                vm.start()
                # The boot timeout counts from the domain's start: libvirt itself can take
                # a minute to create it on a misconfigured host (see vm._warn_kvm_mode).
                deadline = time.monotonic() + (boot_timeout or DEFAULT_BOOT_TIMEOUT[acc])
                prog.phase(f"waiting for ssh on 127.0.0.1:{vm.port}")
                booting_since = time.monotonic()
                silent_limit = min(SILENT_BOOT[acc], boot_timeout or DEFAULT_BOOT_TIMEOUT[acc])

                def blocker() -> str | None:
                    why = _boot_blocker(vm)
                    if why is None and time.monotonic() - booting_since > silent_limit and vm.console_size() == 0:
                        why = f"no console output within {silent_limit:.0f}s (the kernel never started)"
                    return why

                sock = ssh.wait_banner(vm.port, deadline, blocker)
                guest = ssh.Guest(vm.port, img.host_key, sock=sock)
                booted = True
            except (vmmod.BootError, ssh.SSHUnavailable) as exc:
                boot_reason = str(exc)
            phases["boot"] = round(time.monotonic() - t, 3)

            if booted:
                t = time.monotonic()
                prog.phase("uploading reproducer")
                console_offset = vm.console_size()  # provisional: a guest dying during upload counts
                uploaded = False
                try:
                    # The overlay is fresh, so /root/repro is empty: no remote rm needed.
                    for local in catalog.guest_dirs(bug):
                        guest.upload_dir(local, REMOTE_DIR)
                    guest.mkdirs(f"{REMOTE_DIR}/out")
                    uploaded = True
                except Exception as exc:  # the guest went away (or the directory is unreadable)
                    lost = f"upload failed: {exc.__class__.__name__}: {exc}"
                    st = vm.state()
                    crashed = st == "crashed"
                phases["upload"] = round(time.monotonic() - t, 3)

            if booted and uploaded:
                t = time.monotonic()
                prog.phase(f"running {bug.entry} (timeout {bug.timeout}s)")
                console_offset = vm.console_size()
                # dmesg is saved in the same session (one round trip fewer than a second exec).
                cmd = (
                    "i=0; while [ ! -e /run/kbisect/ready ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
                    f"cd {REMOTE_DIR} && timeout -k 5 {int(bug.timeout)} bash {shlex.quote(bug.entry)}; "
                    f"rc=$?; dmesg > {DMESG_FILE} 2>&1; exit $rc"
                )

                def output(which: str, line: str) -> None:
                    if echo_output:
                        prog.line(line)
                    if on_output is not None:
                        on_output(which, line)

                def abort() -> str | None:
                    st = vm.state()
                    if st in ("crashed", "shutoff", "gone"):
                        return f"guest {st}"
                    if PANIC_RE.search(vm.console(console_offset)):
                        return "kernel panic on console"
                    return None

                try:
                    result = guest.run(cmd, bug.timeout + RUN_GRACE, on_output=output, should_abort=abort)
                except Exception as exc:  # connection dropped mid-run (guest died)
                    lost = f"{exc.__class__.__name__}: {exc}"
                if result is not None and result.aborted:
                    lost = result.aborted
                phases["run"] = round(time.monotonic() - t, 3)

                t = time.monotonic()
                prog.phase("collecting artefacts")
                st = vm.state()
                crashed = st == "crashed"
                if st == "running" and not (result and result.aborted):
                    artefacts += _collect(guest, probe_dir)
                else:
                    time.sleep(0.5)  # let the console file receive the whole trace
                phases["collect"] = round(time.monotonic() - t, 3)
    except BaseException:
        prog.stop()
        raise
    finally:
        t = time.monotonic()
        with _no_interrupts():
            prog.phase("tearing down")
            if guest is not None:
                guest.close()
            console_all = vm.console() if vm is not None else ""
            if vm is not None:
                # Interrupted or failed: destroy now. Normal end: let libvirt's slow stop run in
                # the background (joined before exit, see vm.VM.destroy).
                vm.destroy(background=sys.exc_info()[0] is None)
                try:
                    probe_dir.mkdir(parents=True, exist_ok=True)
                    (probe_dir / "console.log").write_text(console_all)
                    artefacts.insert(0, str(probe_dir / "console.log"))
                except OSError:
                    pass
        phases["teardown"] = round(time.monotonic() - t, 3)

    console_boot = console_all[:console_offset] if booted else console_all
    console_run = console_all[console_offset:] if booted else ""
    verdict, reason, excerpt = classify(
        booted=booted,
        boot_reason=boot_reason,
        console_boot=console_boot,
        console_run=console_run,
        crashed=crashed,
        exit_code=result.exit_code if result else None,
        timed_out=bool(result and result.timed_out),
        stdout=result.stdout if result else "",
        timeout=bug.timeout,
        lost=lost,
    )
    rec.verdict, rec.reason, rec.console_excerpt = verdict, reason, excerpt
    rec.phases = phases
    if result is not None:
        rec.output = tail(result.stdout + ("\n" + result.stderr if result.stderr else ""), 200)
    rec.artefacts = artefacts
    try:
        (probe_dir / "output.txt").write_text((result.stdout + result.stderr) if result else "")
        (probe_dir / "record.json").write_text(json.dumps(rec.to_json(), indent=2))
    except OSError:
        pass
    colour = {"good": "green", "bad": "red", "skip": "yellow"}[verdict.value]
    prog.done(f"[bold {colour}]{verdict.value.upper()}[/] {kernel.spec} × {bug.id}: {_esc(reason)} ({rec.seconds:.1f}s)")
    return rec


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


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


def _boot_blocker(vm) -> str | None:
    """Why waiting for SSH is pointless, or None while the guest may still come up."""
    st = vm.state()
    con = vm.console()
    if st in ("crashed", "shutoff", "gone"):
        time.sleep(0.3)
        con = vm.console()
        return f"guest {st} before ssh: {_last_meaningful(con)}"
    m = re.search(r"kbisect-initramfs: FAILED: .*", con)
    if m:
        return m.group(0)
    if PANIC_RE.search(con):
        time.sleep(0.3)
        return _last_meaningful(vm.console(), prefer=PANIC_RE)
    return None


def _last_meaningful(console: str, prefer: re.Pattern | None = None) -> str:
    if prefer is not None:
        m = prefer.search(console)
        if m:
            end = console.find("\n", m.start())
            return console[m.start(): end if end >= 0 else None].strip()[:300]
    m = re.findall(r"kbisect-initramfs: FAILED: .*|Kernel panic - not syncing.*", console)
    if m:
        return m[-1].strip()[:300]
    return last_line(console) or "no console output"


def _collect(guest, probe_dir: Path) -> list[str]:
    """Fetch /root/repro/out/* and dmesg into the probe's result directory."""
    got: list[str] = []
    try:
        files = guest.fetch_dir(f"{REMOTE_DIR}/out", probe_dir / "out")
        got += [str(p) for p in files]
    except Exception:
        pass
    dest = probe_dir / "dmesg.txt"
    try:
        guest.sftp.get(DMESG_FILE, str(dest))
    except Exception:  # the run did not get to save it (host-side timeout): ask now
        try:
            dest.write_text(guest.run("dmesg", 30).stdout)
        except Exception:
            return got
    got.append(str(dest))
    return got


_probe_counter = 0
_probe_counter_lock = threading.Lock()


def _probe_dir(results_dir: Path | None, run_id: str) -> Path:
    global _probe_counter
    with _probe_counter_lock:
        _probe_counter += 1
        n = _probe_counter
    base = Path(results_dir) if results_dir else config.results_dir() / "probes"
    d = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id}-{n}"
    d.mkdir(parents=True, exist_ok=True)
    return d


