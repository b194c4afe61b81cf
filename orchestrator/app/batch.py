"""The sweep's probes of one kernel: fetched once, booted as few times as core.sharing allows,
and several kernels at once (`--jobs`).

`KernelBatcher` is the real world behind core.sharing.probe_batch: one shared guest (adapters'
run_probe_shared) or one guest per reproducer (run_probe_kernel), the records stamped with the
spec the sweep asked for. `run_batches` runs one batch per kernel, `jobs` at a time in worker
threads, and hands each finished batch back to the caller's thread, which alone writes the
store (SQLite connections stay in the thread that opened them). A stop (SIGTERM, Ctrl-C) in the
caller's thread sets the shared `stopped` event: workers start no new VM, their running guests
give up at the next check, every VM is torn down by its own worker before the stop goes on.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Sequence

from orchestrator.adapters.guest.probe import run_probe_kernel, run_probe_shared
from orchestrator.app.kernels import fetch_kernel
from orchestrator.app.run import stamped
from orchestrator.core.bug import Bug
from orchestrator.core.sharing import Batch, SharedRun, probe_batch
from orchestrator.core.verdict import ProbeRecord

VM_MEMORY_GIB = 2  # a probe guest's 1 GiB plus QEMU's own, rounded up


def default_jobs(cpus: int | None = None, mem_gib: float | None = None) -> int:
    """VMs at once when `--jobs` is not given: one per core (a guest has one vCPU; the host's own
    share, SSH and the store, is small: measured on 2 cores under TCG, a sweep of 3 kernels x 6
    reproducers took 145 s with 2 VMs at once, every verdict as with one), no more than memory
    holds, and at least one."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    mem_gib = mem_gib if mem_gib is not None else _mem_gib()
    return max(1, min(cpus, int(mem_gib // VM_MEMORY_GIB)))


def _mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float(VM_MEMORY_GIB)


# (spec, bugs, stopped, on_final) -> their first runs on that kernel (core.sharing.probe_batch)
BatchProbe = Callable[[str, Sequence[Bug], Callable[[], bool], Callable[[ProbeRecord], None]], Batch]


@dataclass
class KernelBatcher:
    """One kernel's batch on real guests; `share=False` boots one VM per reproducer (the design
    before one boot per kernel, kept for `--vm-per-cell` and the benchmark)."""

    share: bool = True
    echo: Callable[[str], None] = lambda _line: None

    def __call__(self, spec: str, bugs: Sequence[Bug], stopped: Callable[[], bool],
                 on_final: Callable[[ProbeRecord], None]) -> Batch:
        kernel = fetch_kernel(spec)

        def said(rec: ProbeRecord) -> None:
            self.echo(f"  vm {spec}: {rec.bug} {rec.verdict.value} ({rec.seconds:.1f}s) {rec.reason}")

        def shared(group: Sequence[Bug]) -> list[SharedRun]:
            self.echo(f"  vm {spec}: booting one VM for {', '.join(b.id for b in group)}")
            runs = run_probe_shared(kernel, group, cancelled=stopped, on_run=said)
            return [SharedRun(stamped(r.record, spec, kernel), r.taint) for r in runs]

        def alone(bug: Bug) -> ProbeRecord:
            self.echo(f"  vm {spec}: booting a VM of its own for {bug.id}")
            rec = stamped(run_probe_kernel(kernel, bug, progress=False, echo_output=False, cancelled=stopped),
                          spec, kernel)
            said(rec)
            return rec

        return probe_batch(bugs, shared, alone, share=self.share, stopped=stopped, on_final=on_final)


@dataclass
class Handlers:
    """What the caller's thread does with a batch's news: each final record, then the batch's end
    (the Batch, or the error that ended it)."""

    record: Callable[[str, ProbeRecord], None]
    done: Callable[[str, Batch | None, Exception | None], None]


def run_batches(work: dict[str, list[Bug]], probe: BatchProbe, jobs: int, handle: Handlers) -> None:
    """One batch per kernel of `work`, `jobs` at a time; `handle` is always called in the
    caller's thread. With one job everything runs in the caller's thread (a stop is then its
    own signal handling, as in a single probe)."""
    todo = {spec: bugs for spec, bugs in work.items() if bugs}
    if jobs <= 1:
        for spec, bugs in todo.items():
            try:
                batch = probe(spec, bugs, lambda: False, lambda rec, spec=spec: handle.record(spec, rec))
            except Exception as exc:  # a KbisectError, or a fault the caller judges per kernel
                handle.done(spec, None, exc)
            else:
                handle.done(spec, batch, None)
        return
    _run_parallel(todo, probe, jobs, handle)


def _run_parallel(todo: dict[str, list[Bug]], probe: BatchProbe, jobs: int, handle: Handlers) -> None:
    """Workers boot; their final records come back through a queue, drained here."""
    stopped = threading.Event()
    news: queue.Queue[tuple[str, ProbeRecord]] = queue.Queue()
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="kbisect-vm")
    futures: dict[Future, str] = {
        pool.submit(probe, spec, bugs, stopped.is_set, lambda rec, spec=spec: news.put((spec, rec))): spec
        for spec, bugs in todo.items()}
    try:
        pending = set(futures)
        while pending or not news.empty():
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while not news.empty():
                handle.record(*news.get())
            for fut in sorted(done, key=list(futures).index):
                exc = fut.exception()
                if exc is not None and not isinstance(exc, Exception):
                    raise exc  # KeyboardInterrupt in a worker: the stop goes on here
                handle.done(futures[fut], None if exc else fut.result(), exc)  # type: ignore[arg-type]
    finally:
        stopped.set()  # workers still running start no VM and give up the guest they have
        pool.shutdown(wait=True, cancel_futures=True)
