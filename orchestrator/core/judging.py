"""One verdict on one kernel: run the injected probe as the repeat policy needs, fold the runs.

The bisection engine judges every kernel it visits this way, and so does everything that needs a
verdict outside a bisection (the differential's base check, bad-end search and mainline walk, a
sweep cell, the revert check); `judge` is a free function so none of them needs an engine.

Flaky reproducers are run several times per kernel (the reproducer's RepeatPolicy): BAD needs
``bad_needed`` bad runs, GOOD needs enough good runs that ``bad_needed`` can no longer be reached,
and a kernel that reaches neither within `max_attempts` runs is SKIP. Pure: the probe function
carries everything that touches the world (VMs, the results database, replayed verdicts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.textenum import TextEnum
from orchestrator.core.verdict import ProbeRecord, Verdict
from orchestrator.core.versions import KernelRef


class Phase(TextEnum):
    """Why a kernel was judged; each probe records it (the report's `phase` column)."""

    ENDS = "ends"  # confirming a bisection's ends
    BISECT = "bisect"  # a midpoint
    VERIFY = "verify"  # re-running the boundary (never replaces the verdict it verifies)
    WALK = "walk"  # the differential outside a bisection: base check, bad-end search, mainline walk
    SWEEP = "sweep"  # one cell of `kbisect sweep`
    REVERT = "revert"  # `--verify-revert`: the first bad kernel with the culprit reverted


@dataclass
class Candidate:
    """One kernel to judge: a point of the lineage being bisected, or a kernel judged alone."""

    ref: KernelRef  # the kernel handed to the probe; a spec string is read with KernelRef.of
    label: str = ""  # display form as in `kernels list`, e.g. "5.7-rc5"
    available: bool = True
    reason: str = ""  # why it is unavailable (failed build, gone...)

    def __post_init__(self) -> None:
        if isinstance(self.ref, str):  # callers holding a spec string ("mainline:5.7-rc5")
            self.ref = KernelRef.of(self.ref)
        if not self.label:
            self.label = self.ref.cache_name

    @property
    def spec(self) -> str:
        """The full spec, e.g. "mainline:5.7-rc5": what the probe and JSON records name."""
        return str(self.ref)


@dataclass
class RunOutcome:
    """One reproducer run on one kernel, whatever produced it (VM, replay file, database)."""

    verdict: Verdict
    seconds: float = 0.0
    reason: str = ""
    origin: str = "probe"  # probe | replay | store
    record: ProbeRecord | None = None  # the full record when a VM produced it


# A probe function: given a candidate, do ONE reproducer run (or return several runs at once).
ProbeResult = Verdict | RunOutcome | ProbeRecord | Sequence[Verdict | RunOutcome | ProbeRecord]
ProbeFn = Callable[[Candidate], ProbeResult]


@dataclass
class Probe:
    """One verdict on one kernel: the runs the repeat policy needed, folded into a verdict."""

    kernel: str  # spec
    label: str
    verdict: Verdict
    runs: int
    good_runs: int
    bad_runs: int
    skip_runs: int
    seconds: float
    reason: str
    phase: Phase
    origins: list[str] = field(default_factory=list)  # where each run came from
    records: list[ProbeRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "label": self.label,
            "verdict": self.verdict.value,
            "runs": self.runs,
            "good_runs": self.good_runs,
            "bad_runs": self.bad_runs,
            "skip_runs": self.skip_runs,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
            "phase": self.phase.value,
            "origins": sorted(set(self.origins)),
            # a verdict on a kernel fetched without checksums (--allow-unverified) says so
            "unverified": any(r.unverified for r in self.records),
            "upstream_commit": next((r.upstream_commit for r in self.records if r.upstream_commit), None),
        }


def _as_runs(result: ProbeResult) -> list[RunOutcome]:
    """Normalise whatever the probe returned into run outcomes (one call may carry several runs)."""
    items: Iterable[Any]
    if isinstance(result, (str, RunOutcome, ProbeRecord)):  # one run (a Verdict is a str)
        items = [result]
    else:
        items = list(result)
    runs: list[RunOutcome] = []
    for item in items:
        if isinstance(item, RunOutcome):
            runs.append(item)
        elif isinstance(item, ProbeRecord):
            runs.append(RunOutcome(item.verdict, item.seconds, item.reason, "probe", item))
        elif isinstance(item, Verdict):
            runs.append(RunOutcome(item))
        elif isinstance(item, str):
            runs.append(RunOutcome(Verdict(item)))
        else:
            raise TypeError(f"probe returned {type(item).__name__}, expected a Verdict, RunOutcome or ProbeRecord")
    if not runs:
        raise ValueError("probe returned no runs")
    return runs


def good_needed(policy: RepeatPolicy) -> int:
    """Good runs needed for GOOD: enough that `bad_needed` bad runs are out of reach in `runs`."""
    return max(1, policy.runs - policy.bad_needed + 1)


def decide(policy: RepeatPolicy, good: int, bad: int, skip: int) -> Verdict | None:
    """Fold run counts into a verdict, or None while more runs are needed."""
    if bad >= policy.bad_needed:
        return Verdict.BAD
    if good >= good_needed(policy):
        return Verdict.GOOD
    if good + bad + skip >= max_attempts(policy):
        return Verdict.SKIP
    return None


def max_attempts(policy: RepeatPolicy) -> int:
    """Flaky reproducers get up to twice their runs so a few skipped runs do not waste a kernel."""
    return policy.runs * 2 if policy.flaky else policy.runs


@dataclass
class _Tally:
    """The runs on one kernel so far, as `judge` folds them."""

    good: int = 0
    bad: int = 0
    skip: int = 0
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    records: list[ProbeRecord] = field(default_factory=list)
    decisive: bool = False  # a run was bad with the bug's own trace signature

    def add(self, run: RunOutcome) -> None:
        if run.verdict is Verdict.GOOD:
            self.good += 1
        elif run.verdict is Verdict.BAD:
            self.bad += 1
        else:
            self.skip += 1
        self.seconds += run.seconds
        self.origins.append(run.origin)
        if run.record is not None:
            self.records.append(run.record)
            self.decisive = self.decisive or run.record.decisive
        if run.reason and run.reason not in self.reasons:
            self.reasons.append(run.reason)

    @property
    def runs(self) -> int:
        return self.good + self.bad + self.skip

    def reason(self) -> str:
        summary = f"{self.bad}/{self.good + self.bad} bad runs" if self.runs > 1 else ""
        return "; ".join(filter(None, [summary, *self.reasons[:3]]))


def judge(policy: RepeatPolicy, probe: ProbeFn, kernel: Candidate, phase: Phase | str, *,
          on_probe: Callable[[Probe], None] | None = None) -> Probe:
    """One verdict on one kernel: run `probe` as often as `policy` needs and fold the runs.

    A free function because a verdict outside a bisection (the differential's walk, a sweep cell,
    the revert check) needs no lineage and no engine; the engine uses it for every kernel it
    judges. `on_probe` sees the folded probe. Wall time counts only when real probes ran and
    reported no time of their own (replayed and stored verdicts cost nothing)."""
    phase = Phase(phase)
    tally = _Tally()
    verdict: Verdict | None = None
    started = time.monotonic()
    while verdict is None:
        for run in _as_runs(probe(kernel)):
            tally.add(run)
        # The kernel's own word with the bug's signature decides on its own, whatever
        # `bad_needed` asks of runs that only the reproducer's exit code judged (syzbot's rule).
        verdict = Verdict.BAD if tally.decisive else decide(policy, tally.good, tally.bad, tally.skip)
    seconds = tally.seconds
    if not seconds:
        seconds = time.monotonic() - started if "probe" in tally.origins else 0.0
    out = Probe(kernel.spec, kernel.label, verdict, tally.runs, tally.good, tally.bad, tally.skip, seconds,
                tally.reason(), phase, tally.origins, tally.records)
    if on_probe:
        on_probe(out)
    return out
