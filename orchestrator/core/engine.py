"""The bisection engine: pure logic over one lineage, no I/O.

Like syzkaller's pkg/bisect, the engine never boots anything itself. It is handed an ordered
list of candidate kernels of ONE lineage (oldest first, each available or not) and a probe
function, and returns an explicit result: last good, first bad, every probe, a confidence and
why it stopped. Everything that touches the world (VMs, the results database, replayed
verdicts) lives in the probe function the caller injects, so every rule here is testable with
simulated probes.

Rules, and why:

* The ends are confirmed first. Bisecting between two kernels that do not show good and bad is
  bisecting nonsense; the result then says ``ends-disagree`` so the differential can look
  elsewhere (the gretap-ECN case: the user's "bad 5.4" was a distro kernel, mainline 5.4 is good).
* Unavailable kernels and skip verdicts never decide anything; the search moves to the nearest
  testable neighbour of the midpoint. When nothing testable is left the result names the set of
  kernels the first bad could be (syzkaller's "inconclusive: the first bad commit could be any of").
* Flaky reproducers are run several times per kernel (`judging.judge` folds the runs the
  reproducer's RepeatPolicy asks for into one verdict). Confidence is syzkaller's
  ∏(1 − (1 − p)^good_runs) over the kernels called good, with p the per-run detection
  probability (1 for deterministic reproducers, estimated from the bad runs otherwise); results
  below 0.66 are flagged.
* The boundary is verified (last good and first bad re-run ``verify`` times, default 3) before
  it is reported, because one lucky good run on a flaky bug moves the boundary silently.
* With clean verdicts at most ⌈log2 n⌉ + 2 distinct kernels are probed.
* A fix bisection (`fix=True`) is the same search with the states swapped: the old end shows the
  bug, the new end does not, and the boundary is the last bad and the first good kernel. Only
  the search's two states are swapped; the verdicts recorded are the reproducer's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.judging import (  # re-exported: callers import the probe side from here too
    Candidate,
    Phase,
    Probe,
    ProbeFn,
    ProbeResult,
    RunOutcome,
    decide,
    good_needed,
    judge,
    max_attempts,
)
from orchestrator.core.textenum import TextEnum
from orchestrator.core.verdict import Verdict

__all__ = [
    "CONFIDENCE_THRESHOLD", "DEFAULT_VERIFY", "BisectStatus", "End", "BisectResult", "Engine", "bisect",
    "confidence", "detection_p",
    "clean_bound", "search_states", "Candidate", "Phase", "Probe", "ProbeFn", "ProbeResult", "RunOutcome", "decide",
    "good_needed", "judge", "max_attempts",
    "FOUND", "INCONCLUSIVE", "ENDS_DISAGREE", "UNSTABLE", "NO_CANDIDATES",
]

CONFIDENCE_THRESHOLD = 0.66
DEFAULT_VERIFY = 3


class BisectStatus(TextEnum):
    """How a bisection (or the whole differential) ended; the values are result.json's `status`
    and decide the exit status of `kbisect bisect`."""

    FOUND = "found"  # last good and first bad are adjacent testable kernels
    INCONCLUSIVE = "inconclusive"  # the first bad is one of a set of untestable kernels
    ENDS_DISAGREE = "ends-disagree"  # the good end is not good or the bad end is not bad
    UNSTABLE = "unstable"  # boundary verification contradicted the bisection
    NO_CANDIDATES = "no-candidates"  # nothing testable at one of the ends

    @property
    def settled(self) -> bool:
        """A boundary (or the set it lies in) was found: the bisection has an answer to report."""
        return self in (BisectStatus.FOUND, BisectStatus.INCONCLUSIVE, BisectStatus.UNSTABLE)


class End(TextEnum):
    """Which end of a bisection disagreed (result.json's `disagreeing_end`)."""

    GOOD = "good"
    BAD = "bad"


# The statuses as module constants, for callers outside the core that still import them
# (orchestrator/cli/bisect.py `exit_code`); the core compares with BisectStatus.
FOUND = BisectStatus.FOUND
INCONCLUSIVE = BisectStatus.INCONCLUSIVE
ENDS_DISAGREE = BisectStatus.ENDS_DISAGREE
UNSTABLE = BisectStatus.UNSTABLE
NO_CANDIDATES = BisectStatus.NO_CANDIDATES


@dataclass
class BisectResult:
    """Everything the engine concluded about one lineage."""

    status: BisectStatus
    lineage: str
    last_good: Candidate | None
    first_bad: Candidate | None
    probes: list[Probe]
    confidence: float
    stopped: str  # one line: why the engine stopped
    suspects: list[Candidate] = field(default_factory=list)  # when inconclusive: first bad is one of these
    good_end: Candidate | None = None  # the ends actually used (may have moved inwards)
    bad_end: Candidate | None = None
    disagreeing_end: End | None = None  # when status is ends-disagree
    notes: list[str] = field(default_factory=list)
    size: int = 0  # number of candidates the engine was given
    fix: bool = False  # a fix bisection: last_good holds the last BAD kernel, first_bad the first GOOD
    # a commit-graph search: every parent of first_bad, each proven in the old state (last_good is
    # the first of them); two or more when first_bad is a merge
    parents: list[Candidate] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Below the confidence threshold: say so rather than present a guess as a finding."""
        return self.confidence < CONFIDENCE_THRESHOLD

    @property
    def distinct_kernels(self) -> int:
        return len({p.kernel for p in self.probes})

    def to_json(self) -> dict[str, Any]:
        old, new = ("last_bad", "first_good") if self.fix else ("last_good", "first_bad")
        return {
            "status": self.status.value,
            "lineage": self.lineage,
            old: self.last_good.label if self.last_good else None,
            new: self.first_bad.label if self.first_bad else None,
            "suspects": [c.label for c in self.suspects],
            "confidence": round(self.confidence, 4),
            "flagged": self.flagged,
            "stopped": self.stopped,
            "disagreeing_end": self.disagreeing_end.value if self.disagreeing_end else None,
            "notes": list(self.notes),
            "probes": [p.to_json() for p in self.probes],
            **({"parents": [c.label for c in self.parents]} if self.parents else {}),
        }


def search_states(fix: bool) -> tuple[Verdict, Verdict]:
    """A search's two states, the old end's verdict and the new end's: good then bad, or for a
    fix bisection bad then good."""
    return (Verdict.BAD, Verdict.GOOD) if fix else (Verdict.GOOD, Verdict.BAD)


class Engine:
    """Bisect one lineage. Construct, then call `run()`; the engine keeps no global state."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        probe: ProbeFn,
        *,
        policy: RepeatPolicy | None = None,
        lineage: str = "",
        verify: int = DEFAULT_VERIFY,
        p: float | None = None,
        on_probe: Callable[[Probe], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        known: dict[str, Verdict] | None = None,
        fix: bool = False,
    ) -> None:
        """`known` carries verdicts already established elsewhere (e.g. by the differential) so an
        end is not probed twice; `p` fixes the per-run detection probability (else estimated);
        `fix` searches for the first kernel without the bug after kernels with it."""
        self.candidates = list(candidates)
        self.probe_fn = probe
        self.policy = policy or RepeatPolicy()
        self.lineage = lineage
        self.verify = max(0, verify)
        self.fixed_p = p
        self.on_probe = on_probe
        self.on_event = on_event
        self.known: dict[str, Verdict] = dict(known or {})
        self.probes: list[Probe] = []
        self.verdicts: dict[str, Verdict] = {}
        self.untestable: set[int] = {i for i, c in enumerate(self.candidates) if not c.available}
        self.notes: list[str] = []
        self.fix = fix
        self.old, self.new = search_states(fix)

    # -- probing ---------------------------------------------------------------------------
    def _event(self, message: str) -> None:
        if self.on_event:
            self.on_event(message)

    def judge(self, cand: Candidate, phase: Phase | str) -> Probe:
        """`judge` for this bisection: a verdict in `known` is reused (except when verifying),
        and every verdict is kept in `probes` and `verdicts`."""
        phase = Phase(phase)
        if cand.spec in self.known and phase is not Phase.VERIFY:
            verdict = self.known[cand.spec]
            self.verdicts[cand.spec] = verdict
            return Probe(cand.spec, cand.label, verdict, 0, 0, 0, 0, 0.0,
                         "established earlier in this run", phase, ["known"])
        probe = judge(self.policy, self.probe_fn, cand, phase)
        self.probes.append(probe)
        if phase is not Phase.VERIFY:
            self.verdicts[cand.spec] = probe.verdict
        if self.on_probe:
            self.on_probe(probe)
        return probe

    # -- the search ------------------------------------------------------------------------
    def _testable(self, i: int) -> bool:
        return i not in self.untestable

    def _nearest(self, lo: int, hi: int) -> int | None:
        """The testable index strictly inside (lo, hi) nearest the midpoint; lower one on ties
        (a good verdict there still halves the rest)."""
        mid = (lo + hi) // 2
        for delta in range(0, hi - lo):
            for i in (mid - delta, mid + delta):
                if lo < i < hi and self._testable(i):
                    return i
        return None

    def _confirm_end(self, start: int, step: int, stop: int, want: Verdict) -> tuple[int | None, Probe | None]:
        """Probe the end at `start`; unavailable or skipped ends move inwards by `step`."""
        i = start
        while i != stop:
            cand = self.candidates[i]
            if not self._testable(i):
                i += step
                continue
            probe = self.judge(cand, Phase.ENDS)
            if probe.verdict is Verdict.SKIP:
                self.untestable.add(i)
                i += step
                continue
            return i, probe
        return None, None

    def run(self) -> BisectResult:
        """Confirm the ends, bisect, verify the boundary, and explain the outcome."""
        n = len(self.candidates)
        if n < 2:
            return self._result(BisectStatus.NO_CANDIDATES, None, None, f"need at least two kernels in the lineage, got {n}")
        self._event(f"{self.lineage or 'lineage'}: {n} candidates, "
                    f"{self.candidates[0].label} .. {self.candidates[-1].label}")

        old, new = self.old.value, self.new.value
        gi, gprobe = self._confirm_end(0, +1, n - 1, self.old)
        if gi is None or gprobe is None:
            return self._result(BisectStatus.NO_CANDIDATES, None, None,
                                f"no testable kernel at the {old} end (all unavailable or skipped)")
        if gi != 0:
            self.notes.append(f"{old} end {self.candidates[0].label} untestable; "
                              f"used {self.candidates[gi].label} instead")
        if gprobe.verdict is self.new:
            why = ("the fix is older than the range" if self.fix else "the regression is older than the range")
            res = self._result(BisectStatus.ENDS_DISAGREE, None, None,
                               f"{old} end {self.candidates[gi].label} is {new}: {why}")
            res.disagreeing_end = End.GOOD
            res.good_end = self.candidates[gi]
            res.bad_end = self.candidates[-1]
            return res

        bi, bprobe = self._confirm_end(n - 1, -1, gi, self.new)
        if bi is None or bprobe is None:
            return self._result(BisectStatus.NO_CANDIDATES, self.candidates[gi], None,
                                f"no testable kernel at the {new} end (all unavailable or skipped)")
        if bi != n - 1:
            self.notes.append(f"{new} end {self.candidates[-1].label} untestable; "
                              f"used {self.candidates[bi].label} instead")
        if bprobe.verdict is self.old:
            why = ("the bug is still there at the new end" if self.fix
                   else "the bug is not in this lineage between the given ends")
            res = self._result(BisectStatus.ENDS_DISAGREE, self.candidates[bi], None,
                               f"{new} end {self.candidates[bi].label} is {old}: {why}")
            res.disagreeing_end = End.BAD
            res.good_end, res.bad_end = self.candidates[gi], self.candidates[bi]
            return res

        lo, hi = self._narrow_by_known(gi, bi)
        while hi - lo > 1:
            i = self._nearest(lo, hi)
            if i is None:
                break
            probe = self.judge(self.candidates[i], Phase.BISECT)
            if probe.verdict is self.old:
                lo = i
            elif probe.verdict is self.new:
                hi = i
            else:
                self.untestable.add(i)
                self._event(f"{self.candidates[i].label}: skip ({probe.reason}); trying a neighbour")

        good_end, bad_end = self.candidates[gi], self.candidates[bi]
        if hi - lo > 1:
            suspects = self.candidates[lo + 1: hi + 1]
            res = self._result(BisectStatus.INCONCLUSIVE, self.candidates[lo], None,
                               f"inconclusive: first {new} could be any of "
                               + ", ".join(c.label for c in suspects))
            res.suspects = suspects
            res.good_end, res.bad_end = good_end, bad_end
            # the verified part of the answer still helps: the newest old-state and oldest new-state known
            res.notes.append(f"untestable between {self.candidates[lo].label} and {self.candidates[hi].label}: "
                             + ", ".join(self._why_untestable(j) for j in range(lo + 1, hi)))
            self._verify(self.candidates[lo], self.candidates[hi], res)
            return res

        res = self._result(BisectStatus.FOUND, self.candidates[lo], self.candidates[hi],
                           f"boundary found: {self.candidates[lo].label} {old}, {self.candidates[hi].label} {new}")
        res.good_end, res.bad_end = good_end, bad_end
        self._verify(self.candidates[lo], self.candidates[hi], res)
        return res

    def _narrow_by_known(self, lo: int, hi: int) -> tuple[int, int]:
        """The range shrunk to the newest kernel known good and the oldest known bad inside it
        (verdicts established before the search, such as a ranking's guesses already probed):
        the search would reach the same boundary through them, at no cost."""
        goods = [i for i in range(lo + 1, hi) if self.known.get(self.candidates[i].spec) is self.old]
        bads = [i for i in range(lo + 1, hi) if self.known.get(self.candidates[i].spec) is self.new]
        new_lo = max(goods, default=lo)
        new_hi = min([i for i in bads if i > new_lo], default=hi)
        if (new_lo, new_hi) != (lo, hi):
            self._event(f"known verdicts narrow the search to {self.candidates[new_lo].label} .. "
                        f"{self.candidates[new_hi].label}")
            for i in (new_lo, new_hi):
                if i not in (lo, hi):
                    self.judge(self.candidates[i], Phase.BISECT)  # recorded as known, no probe
        return new_lo, new_hi

    def _why_untestable(self, j: int) -> str:
        cand = self.candidates[j]
        if not cand.available:
            return f"{cand.label} (unavailable{': ' + cand.reason if cand.reason else ''})"
        return f"{cand.label} (skip)"

    def _verify(self, last_good: Candidate, first_bad: Candidate, res: BisectResult) -> None:
        """Re-run both sides of the boundary; any contradiction makes the result `unstable`."""
        if not self.verify:
            res.confidence = self.confidence()
            return
        self._event(f"verifying boundary: {last_good.label} and {first_bad.label}, {self.verify}x each")
        contradictions: list[str] = []
        for cand, want in ((last_good, self.old), (first_bad, self.new)):
            for _ in range(self.verify):
                probe = self.judge(cand, Phase.VERIFY)
                if probe.verdict is not want and probe.verdict is not Verdict.SKIP:
                    contradictions.append(f"{cand.label} was {probe.verdict.value} on re-run")
        if contradictions:
            res.status = BisectStatus.UNSTABLE
            res.stopped = "boundary verification failed: " + "; ".join(contradictions)
        res.confidence = self.confidence()
        if contradictions:
            res.confidence = min(res.confidence, 0.5)

    # -- confidence ------------------------------------------------------------------------
    def detection_p(self) -> float:
        return detection_p(self.probes, self.policy, self.fixed_p)

    def confidence(self) -> float:
        return confidence(self.probes, self.policy, self.fixed_p)

    def _result(self, status: BisectStatus, last_good: Candidate | None, first_bad: Candidate | None,
                stopped: str) -> BisectResult:
        self._event(stopped)
        return BisectResult(
            status=status,
            lineage=self.lineage,
            last_good=last_good,
            first_bad=first_bad,
            probes=self.probes,
            confidence=self.confidence(),
            stopped=stopped,
            notes=self.notes,
            size=len(self.candidates),
            fix=self.fix,
        )


def detection_p(probes: Sequence[Probe], policy: RepeatPolicy, fixed_p: float | None = None) -> float:
    """Per-run probability the reproducer shows the bug on a bad kernel.

    A deterministic policy (one run, not flaky) means p = 1. Otherwise estimate from every
    run on kernels called bad, shrunk towards uncertainty (bad / (runs + 1)) so that a
    handful of bad runs never claims certainty."""
    if fixed_p is not None:
        return fixed_p
    if not policy.flaky and policy.runs <= 1:
        return 1.0
    bad = total = 0
    for probe in probes:
        if probe.verdict is Verdict.BAD or (probe.phase is Phase.VERIFY and probe.bad_runs):
            bad += probe.bad_runs
            total += probe.good_runs + probe.bad_runs
    if not total:
        return 0.5
    return bad / (total + 1)


def confidence(probes: Sequence[Probe], policy: RepeatPolicy, fixed_p: float | None = None) -> float:
    """∏ over kernels called good of P(a bad kernel would have shown at least one bad run):
    syzkaller's confidence, shared by the linear engine and the commit-graph search."""
    p = detection_p(probes, policy, fixed_p)
    good_runs: dict[str, int] = {}
    for probe in probes:
        if probe.good_runs and probe.bad_runs < policy.bad_needed:
            good_runs[probe.kernel] = good_runs.get(probe.kernel, 0) + probe.good_runs
    conf = 1.0
    for runs in good_runs.values():
        conf *= 1.0 - (1.0 - p) ** runs
    return conf


def bisect(candidates: Sequence[Candidate], probe: ProbeFn, **kwargs: Any) -> BisectResult:
    """Convenience wrapper: `Engine(candidates, probe, **kwargs).run()`."""
    return Engine(candidates, probe, **kwargs).run()


def clean_bound(n: int) -> int:
    """The most distinct kernels a clean bisection of n candidates may probe: ⌈log2 n⌉ + 2."""
    return math.ceil(math.log2(max(n, 1))) + 2
