"""One probe: boot one kernel in a fresh VM, run one reproducer over SSH, read one verdict.

The steps on the guest are `session.ProbeSession`'s (prepare, boot, upload, run, collect,
teardown, each timed into ProbeRecord.phases); the verdict is `core.classify.classify` of what
they observed (rules in that module's docstring). This module runs them in this process: the
progress line, SIGTERM/Ctrl-C turned into a teardown, the process's run of VMs (and the reaping
of dead runs' leftovers), and the record with its files beside the console.

Python API for the bisection engine: `run_probe_kernel(kernel, bug)`, and `aggregate(...)` for
the repeat loop.
"""

from __future__ import annotations

import atexit
import json
import signal
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

from orchestrator.adapters.progress import StatusLine
from orchestrator.adapters import config
from orchestrator.adapters.guest import vm as vmmod
from orchestrator.adapters.guest.session import GuestOptions, Machine, ProbeSession, prepare_machine
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.core.bug import Bug
from orchestrator.core.classify import Judgement, Observation, classify, tail
from orchestrator.core.errors import KbisectError
from orchestrator.core.sharing import SharedRun, taint
from orchestrator.core.verdict import ProbeRecord, Verdict

OUTPUT_TAIL_LINES = 200
VERDICT_COLOUR = {Verdict.GOOD: "green", Verdict.BAD: "red", Verdict.SKIP: "yellow"}


def aggregate(records: list[ProbeRecord], bad_needed: int = 1) -> Verdict:
    """One verdict from repeated probes: BAD once `bad_needed` runs were bad or one run was bad on
    the kernel's own word (a trace with the bug's signature, `ProbeRecord.decisive`: a flaky
    reproducer needs several bad exits, a matching oops is not flaky), else GOOD if any run was
    good, else SKIP."""
    if any(r.decisive for r in records):
        return Verdict.BAD
    bad = sum(r.verdict == Verdict.BAD for r in records)
    if bad >= max(1, bad_needed):
        return Verdict.BAD
    if any(r.verdict == Verdict.GOOD for r in records):
        return Verdict.GOOD
    return Verdict.SKIP


# -- signal handling ------------------------------------------------------------------------

@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so every `finally` destroys its VM.

    The CLI installs its own handler for the whole command (cli.base.Terminated, exit 143);
    this one is for callers of the Python API and stands aside when a handler is set."""
    if threading.current_thread() is not threading.main_thread() or callable(signal.getsignal(signal.SIGTERM)):
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
        previous = old.get(pending[0])
        if callable(previous):  # the handler the signal had (the CLI's Terminated, Ctrl-C's)
            previous(pending[0], None)
        raise KeyboardInterrupt(f"signal {pending[0]}")


# -- this process's run of VMs --------------------------------------------------------------

_run_lock = threading.Lock()
_current_run: vmmod.Run | None = None


def current_run() -> vmmod.Run:
    """This process's Run (state file + VM names), created on first use, closed at exit."""
    global _current_run
    with _run_lock:
        if _current_run is None:
            _current_run = vmmod.Run()
            atexit.register(_close_run, _current_run)
        return _current_run


def _close_run(run: vmmod.Run) -> None:
    vmmod.wait_pending()
    vmmod._atexit_destroy()
    run.close()


_reaped: set[str] = set()


def _reap_stale(uri: str | None) -> None:
    """Once per process and URI: destroy domains/overlays whose owner process is dead.

    libvirt unreachable raises InstallationError (no probe could run). Anything else is best
    effort: a leftover that cannot be removed now is retried by the next run or `kbisect gc`.
    """
    key = uri or ""
    if key in _reaped:
        return
    _reaped.add(key)
    import libvirt  # slow import (~0.15 s), deferred like everywhere in the guest runtime

    try:
        vmmod.gc(uri)
    except (libvirt.libvirtError, OSError):  # a domain or run dir went away under us
        pass


def _machine(kernel: UnpackedKernel, opts: GuestOptions, run: vmmod.Run, show_progress: bool) -> Machine:
    """Reap dead runs' leftovers (part of the prepare phase, as before), then prepare the VM."""
    _reap_stale(opts.uri)
    return prepare_machine(kernel, opts, run, show_progress=show_progress)


# -- the probe ------------------------------------------------------------------------------

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
    cancelled: Callable[[], bool] = lambda: False,
) -> ProbeRecord:
    """Boot `kernel` in a fresh VM, run `bug`'s reproducer, return the verdict record.

    Trouble that concerns this kernel or its guest (cannot boot, no SSH, session lost) is a
    SKIP record; trouble that concerns the installation (no libvirt, cannot build the image)
    raises InstallationError, because retrying other kernels would fail the same way. The VM is
    destroyed on every way out, SIGTERM and Ctrl-C included.
    """
    _check_entry(bug)
    opts = GuestOptions(accel=accel, uri=uri or vmmod.DEFAULT_URI, memory_mb=memory_mb, cpus=cpus)
    started_at = time.time()
    prog = StatusLine(progress, f"{kernel.spec} × {bug.id}")
    run = current_run()
    session = ProbeSession(
        bug, partial(_machine, kernel, opts, run, progress), _probe_dir(results_dir, run.id),
        boot_timeout=boot_timeout, phase=prog.phase, on_output=_output(prog, echo_output, on_output),
        cancelled=cancelled,
    )
    finished = False
    try:
        with terminate_as_interrupt():
            session.prepare()
            if session.boot() and session.upload():
                session.run()
                session.collect()
        finished = True
    finally:
        if not finished:
            prog.stop()
        with _no_interrupts():
            session.teardown(background=finished)
    obs = session.observation
    judgement = classify(obs, bug)
    rec = _record(kernel, bug, started_at, obs, judgement)
    _save(session.probe_dir, rec, obs)
    prog.done(f"[bold {VERDICT_COLOUR[rec.verdict]}]{rec.verdict.value.upper()}[/] ",
              f"{kernel.spec} × {bug.id}: {rec.reason} ({rec.seconds:.1f}s)")
    return rec


def run_probe_shared(
    kernel: UnpackedKernel,
    bugs: Sequence[Bug],
    *,
    opts: GuestOptions = GuestOptions(),
    boot_timeout: float | None = None,
    results_dir: Path | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    on_run: Callable[[ProbeRecord], None] | None = None,
) -> list[SharedRun]:
    """Boot `kernel` once and run `bugs` in that guest one after another (core.sharing's rules).

    Each run gets its own probe directory, console part and record. The guest is given up after
    the first run that taints it (core.sharing.taint): that run is the last one returned, and
    the caller decides what the others get. A guest that never boots gives every bug the same
    boot-failure record. The VM is destroyed on every way out, as in run_probe_kernel."""
    for bug in bugs:
        _check_entry(bug)
    run = current_run()
    session = ProbeSession(bugs[0], partial(_machine, kernel, opts, run, False), _probe_dir(results_dir, run.id),
                           boot_timeout=boot_timeout, cancelled=cancelled)
    out: list[SharedRun] = []
    finished = False
    try:
        with terminate_as_interrupt():
            session.prepare()
            booted = session.boot()
            for n, bug in enumerate(bugs if booted else []):
                if n:
                    session.next_run(bug, _probe_dir(results_dir, run.id))
                started_at = time.time()
                if session.upload():
                    session.run()
                    session.collect()
                session.finish_run()
                out.append(_shared_run(kernel, bug, started_at, session, on_run))
                if out[-1].taint:
                    break
        finished = True
    finally:
        with _no_interrupts():
            session.teardown(background=finished)
    if not session.observation.booted:  # one boot failure, the same answer for every reproducer
        out = [_shared_run(kernel, bug, time.time(), session, on_run) for bug in bugs]
    return out


def _check_entry(bug: Bug) -> None:
    """Before any VM: a reproducer without its entry script is the user's error, not a skip."""
    if not (Path(bug.dir) / bug.entry).is_file():
        raise KbisectError(f"reproducer {bug.id}: no entry script {bug.entry} in {bug.dir}")


def _shared_run(kernel: UnpackedKernel, bug: Bug, started_at: float, session: ProbeSession,
                on_run: Callable[[ProbeRecord], None] | None) -> SharedRun:
    obs = session.observation
    judgement = classify(obs, bug)
    rec = _record(kernel, bug, started_at, obs, judgement)
    _save(session.probe_dir, rec, obs)
    if on_run is not None:
        on_run(rec)
    return SharedRun(rec, taint(obs, judgement))


def _output(prog: StatusLine, echo: bool, on_output: Callable[[str, str], None] | None) -> Callable[[str, str], None]:
    """The reproducer's output lines: echoed under the status line, and handed to the caller."""

    def output(which: str, line: str) -> None:
        if echo:
            prog.line(line)
        if on_output is not None:
            on_output(which, line)

    return output


def _record(kernel: UnpackedKernel, bug: Bug, started_at: float, obs: Observation, j: Judgement) -> ProbeRecord:
    output = obs.stdout + ("\n" + obs.stderr if obs.stderr else "")
    return ProbeRecord(
        kernel=kernel.spec, bug=bug.id, verdict=j.verdict, reason=j.reason, phases=obs.phases,
        console_excerpt=j.excerpt, output=tail(output, OUTPUT_TAIL_LINES), artefacts=obs.artefacts,
        started_at=started_at, signature=j.signature, unrelated_trace=j.unrelated_trace,
    )


def _save(probe_dir: Path, rec: ProbeRecord, obs: Observation) -> None:
    """The reproducer's full output and the record, beside the console."""
    try:
        (probe_dir / "output.txt").write_text(obs.stdout + obs.stderr)
        (probe_dir / "record.json").write_text(json.dumps(rec.to_json(), indent=2))
    except OSError:  # results disk trouble: the record is returned (and stored) all the same
        pass


_probe_counter = 0
_probe_counter_lock = threading.Lock()


def _probe_dir(results_dir: Path | None, run_id: str) -> Path:
    """A fresh directory for this probe's console, artefacts and record."""
    global _probe_counter
    with _probe_counter_lock:
        _probe_counter += 1
        n = _probe_counter
    base = Path(results_dir) if results_dir else config.results_dir() / "probes"
    d = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id}-{n}"
    d.mkdir(parents=True, exist_ok=True)
    return d
