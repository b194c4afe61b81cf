"""What the differential's stages share: how they get verdicts, and nothing of the answer.

`Probing` holds the kernel listing, the injected probe with its repeat policy and verification
count, the verdicts established so far (a kernel is probed once outside boundary verification,
whichever stage asks) and every probe in the order it ran. Stages record what they did in their
own `StageOutcome`; the probe log is the one list all of them append to, because a kernel's skip
reason is wherever that kernel was first probed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.diffresult import Missing, Stage, StageOutcome, Undecided, WalkStep
from orchestrator.core.engine import BisectResult, BisectStatus, End, Engine, Phase, Probe, ProbeFn, judge
from orchestrator.core.lineages import Kernel, KernelIndex
from orchestrator.core.verdict import Verdict

MAX_WALK = 40  # mainline releases walked forward from the base before giving up


def _silent(message: str) -> None:
    """The default progress sink: say nothing."""


@dataclass
class Probing:
    """The probing side of one differential run (see the module docstring)."""

    index: KernelIndex
    probe: ProbeFn
    policy: RepeatPolicy = field(default_factory=RepeatPolicy)
    verify: int = 3
    on_probe: Callable[[Probe], None] | None = None
    on_event: Callable[[str], None] = _silent
    max_walk: int = MAX_WALK
    known: dict[str, Verdict] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)

    def bisect(self, out: StageOutcome, name: str, kernels: Sequence[Kernel], lineage: str) -> BisectResult:
        """Bisect one lineage and record the run in the stage's outcome `out`: its stage, and
        the suspects that never spoke (they end with the oldest kernel probed bad)."""
        self.on_event(f"[{name}] {lineage}: {kernels[0].label} .. {kernels[-1].label} ({len(kernels)} kernels)"
                      if kernels else f"[{name}] {lineage}: no kernels")
        engine = Engine([k.candidate() for k in kernels], self.probe, policy=self.policy, lineage=lineage,
                        verify=self.verify, on_probe=self.on_probe, on_event=self.on_event, known=self.known)
        result = engine.run()
        self.known.update(engine.verdicts)
        self.probes.extend(result.probes)
        out.stages.append(Stage(name, result))
        if result.status is BisectStatus.INCONCLUSIVE:
            silent = (self.index.by_spec.get(c.spec) for c in result.suspects[:-1])
            out.undecided.extend(self.undecided(k for k in silent if k is not None))
        return result

    def judge(self, kernel: Kernel, stage: Stage) -> Verdict:
        """One verdict outside a bisection (base check, bad-end search, mainline walk), noted in
        `stage`'s walk. An unavailable kernel is never probed: it is a skip, walked as unavailable."""
        if kernel.spec in self.known:
            return self.known[kernel.spec]
        if not kernel.available:
            stage.walk.append(WalkStep(kernel.label, Missing.UNAVAILABLE))
            return Verdict.SKIP
        probe = judge(self.policy, self.probe, kernel.candidate(), Phase.WALK, on_probe=self.on_probe)
        self.known[kernel.spec] = probe.verdict
        self.probes.append(probe)
        stage.walk.append(WalkStep(kernel.label, probe.verdict))
        return probe.verdict

    def undecided(self, kernels: Iterable[Kernel], why: Missing | None = None, reason: str = "") -> list[Undecided]:
        """Kernels the answer needed but could not get a verdict for: unavailable or skipped,
        unless `why` says otherwise."""
        out: list[Undecided] = []
        for k in kernels:
            if why is not None:
                out.append(Undecided(k.label, k.spec, why, reason))
            elif not k.available:
                out.append(Undecided(k.label, k.spec, Missing.UNAVAILABLE, k.reason))
            else:
                out.append(Undecided(k.label, k.spec, Missing.SKIP, self._skip_reason(k)))
        return out

    def _skip_reason(self, kernel: Kernel) -> str:
        """The reason the probe gave for its skip (the first run that gave one)."""
        for p in self.probes:
            if p.kernel == kernel.spec and p.verdict is Verdict.SKIP and "known" not in p.origins:
                return p.reason or "the probe said skip"
        return "the probe said skip"


def moved_over(r: BisectResult, kernels: Sequence[Kernel], newest: Kernel | None = None) -> list[Kernel]:
    """The untestable kernels the engine stepped over at the end that disagreed. The end the user
    named may be any of them, so the disagreement is not established: it stays open. With a
    picked bad end (`newest`, the newest available kernel, stood in for "the line" from the
    start), the unavailable kernels past it are no such end."""
    if r.status is not BisectStatus.ENDS_DISAGREE:
        return []
    end = r.good_end if r.disagreeing_end is End.GOOD else r.bad_end
    specs = [k.spec for k in kernels]
    if end is None or end.spec not in specs:
        return []
    i = specs.index(end.spec)
    if r.disagreeing_end is End.GOOD:
        return list(kernels[:i])
    return [k for k in kernels[i + 1:] if newest is None or k.sort_key <= newest.sort_key]
