"""One boot per kernel: several reproducers in one guest, without letting them lie for each other.

The sweep runs every reproducer of a kernel in one VM, one after another (each in its own network
namespaces, the reproducers' own rule). Sharing a guest saves a boot per cell but opens a door
for cross-talk: state one reproducer leaves behind (a module, a sysctl, a dying timer) could make
the next one fail. So sharing is allowed to save time, never to decide a regression:

- a reproducer marked `isolate: true` never shares (it loads tracing programs, or crashes by
  design);
- after a run that leaves the guest in doubt (a kernel trace, a crash, a lost console or
  session, a timeout whose cleanup never ran: `taint`) the guest is not used again; the
  reproducers still waiting get a fresh shared VM;
- a run that said BAD in a shared guest, or whose verdict the doubt itself decided, is run again
  alone in a fresh VM, and that run is the answer. A shared GOOD or a reproducer's own skip
  (exit 125, e.g. a missing kernel feature) stands: cross-talk that hides a bug would need the
  earlier reproducer to repair the kernel, and nothing a reproducer does can.

`probe_batch` is the whole rule, with the world behind two callables (a shared run over a list of
bugs, an alone run of one), so it is tested on fakes and the sweep and the benchmark share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from orchestrator.core.bug import Bug
from orchestrator.core.classify import PANIC_RE, TIMEOUT_EXIT_CODES, Judgement, Observation, run_traces
from orchestrator.core.verdict import ProbeRecord, Verdict

SHARED, ISOLATED, ALONE, RECHECKED = "shared", "isolated", "alone", "rechecked"


def taint(obs: Observation, judgement: Judgement) -> str:
    """Why the guest must not run another reproducer after this run ("" when it may).

    A boot failure is not a taint: nothing ran, and every reproducer gets the same answer
    (the kernel does not boot), so the batch records it for all of them at once."""
    if not obs.booted:
        return ""
    if obs.crashed or PANIC_RE.search(obs.console_run):
        return "the guest crashed"
    traces = run_traces(obs)
    if traces:
        return f"kernel trace: {traces[0].headline}"
    if obs.console_lost:
        return f"console lost: {obs.console_lost}"
    if obs.lost:
        return f"session lost: {obs.lost}"
    if obs.timed_out or obs.exit_code in TIMEOUT_EXIT_CODES:
        return "the reproducer timed out (its cleanup may not have run)"
    if obs.exit_code is None:
        return "no exit status"
    return ""


@dataclass
class SharedRun:
    """One reproducer's run in a shared guest: its record and why the guest is spent ("": it is not)."""

    record: ProbeRecord
    taint: str = ""


# (bugs in order) -> their runs in one guest, in order, up to and including the first that taints
# it (a boot failure gives a record for every bug); [] only when the guest could not be had at all
SharedProbe = Callable[[Sequence[Bug]], list[SharedRun]]
AloneProbe = Callable[[Bug], ProbeRecord]  # one reproducer in a fresh guest of its own


@dataclass
class Batch:
    """Every bug's first run on one kernel, how it was run, and what it cost."""

    records: dict[str, ProbeRecord] = field(default_factory=dict)  # bug id -> the record that counts
    boots: dict[str, int] = field(default_factory=lambda: {SHARED: 0, ISOLATED: 0, ALONE: 0, RECHECKED: 0})

    on_final: Callable[[ProbeRecord], None] = lambda _rec: None

    @property
    def total_boots(self) -> int:
        return sum(self.boots.values())

    def answer(self, record: ProbeRecord) -> None:
        self.records[record.bug] = record
        self.on_final(record)


def probe_batch(bugs: Sequence[Bug], shared: SharedProbe, alone: AloneProbe, *, share: bool = True,
                stopped: Callable[[], bool] = lambda: False,
                on_final: Callable[[ProbeRecord], None] = lambda _rec: None) -> Batch:
    """Each bug's first run on one kernel, sharing guests as far as the module docstring allows.

    `share=False` is the one-VM-per-cell design (every bug alone), kept for comparison and for a
    user who suspects cross-talk. `stopped` is asked before every boot: a stopped sweep starts
    no VM (KeyboardInterrupt, like Ctrl-C). `on_final` gets each record the moment it is the
    answer (a shared BAD only after its re-check), so the caller can store it before the next
    boot: a kill loses at most the runs in flight."""
    batch = Batch(on_final=on_final)
    waiting = [b for b in bugs if share and not b.isolate]
    recheck: list[tuple[Bug, ProbeRecord, str]] = []
    while waiting:
        _check(stopped)
        runs = shared(waiting)
        batch.boots[SHARED] += 1
        if not runs:  # the guest could not be had: the rest go alone, where the trouble shows per bug
            break
        for run in runs:
            bug = next(b for b in waiting if b.id == run.record.bug)
            waiting.remove(bug)
            rec = replace(run.record, vm=SHARED)
            if rec.verdict == Verdict.BAD or run.taint:
                recheck.append((bug, rec, run.taint))
            else:
                batch.answer(rec)
    for bug in bugs:
        if bug.id in batch.records or any(b is bug for b, _r, _t in recheck):
            continue
        _check(stopped)
        kind = ISOLATED if share and bug.isolate else ALONE
        batch.boots[kind] += 1
        batch.answer(replace(alone(bug), vm=kind))
    for bug, first, why in recheck:
        _check(stopped)
        rec = alone(bug)
        batch.boots[RECHECKED] += 1
        batch.answer(replace(rec, vm=RECHECKED, note=_recheck_note(first, why)))
    return batch


def _recheck_note(first: ProbeRecord, why: str) -> str:
    said = f"in the shared VM: {first.verdict.value} ({first.reason})"
    return f"re-checked alone; {said}" + (f"; guest not reused: {why}" if why else "")


def _check(stopped: Callable[[], bool]) -> None:
    if stopped():
        raise KeyboardInterrupt("stopped")
