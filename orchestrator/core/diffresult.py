"""The differential's answer: what each stage established, and the result assembled from them.

Each stage of the differential (core/differential.py) returns a `StageOutcome`: the engine runs
and walks it made, its notes, the kernels it could not hear from, and the parts of the answer it
decided (the boundary, the origin, the upstream range ...). Stages share no result object;
`assemble` folds their outcomes, in the order they ran, into the `DiffResult` that result.json,
the report and the exit status are made of. Its fields and values are a contract other tools
read: they are the same as when the differential mutated one shared result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, Sequence

from orchestrator.core.engine import CONFIDENCE_THRESHOLD, BisectResult, BisectStatus, Probe
from orchestrator.core.lineages import Kernel, Lineage
from orchestrator.core.textenum import TextEnum
from orchestrator.core.verdict import Verdict

ADVICE = ("to decide, try another --mirror, --allow-unverified for builds without CHECKSUMS, "
          "or give verdicts for the undecided kernels with --verdicts")


class Origin(TextEnum):
    """Where the bug came from (result.json's `origin`)."""

    MAINLINE = "mainline"  # a regression between the given mainline ends
    STABLE_BACKPORT = "stable-backport"  # a stable or distro line backported a later mainline change
    STABLE_ONLY = "stable-only"  # a stable line shows it, no mainline release after its base does
    DISTRO = "distro"  # only distro kernels show it: a distro-only patch
    VARIANT = "variant"  # the first bad kernel is the last good one rebuilt with a patch


class Carrier(TextEnum):
    """The line that carried a backported change to the kernel the user ran (`carrier`)."""

    STABLE = "stable"
    DISTRO = "distro"


class Missing(TextEnum):
    """Why a kernel the answer needed has no verdict (`undecided[].why`)."""

    UNAVAILABLE = "unavailable"  # listed, but not installable (failed build, gone ...)
    SKIP = "skip"  # probed, and the probe could not tell
    NOT_LISTED = "not listed"
    NOT_WALKED = "not walked"  # beyond the mainline walk's limit


class WalkStep(NamedTuple):
    """One kernel judged outside a bisection: a verdict, or `Missing.UNAVAILABLE` (never probed)."""

    kernel: str  # label
    verdict: Verdict | Missing


@dataclass
class Stage:
    """One engine run or walk inside the differential, kept for the report."""

    name: str  # "given range", "lineage of the bad kernel", "mainline walk", "upstream rc's" ...
    result: BisectResult | None = None
    walk: list[WalkStep] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.result is not None:
            r = self.result.to_json()
            r.pop("probes", None)
            data.update(r)
        if self.walk:
            data["walk"] = [{"kernel": k, "verdict": str(v)} for k, v in self.walk]
        return data


@dataclass
class Undecided:
    """A kernel whose verdict the answer needed but never got (why the result is not `found`)."""

    kernel: str  # label, as `kernels list` prints it
    spec: str
    why: Missing
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.kernel} ({self.why}{': ' + self.reason if self.reason else ''})"

    def to_json(self) -> dict[str, str]:
        return {"kernel": self.kernel, "spec": self.spec, "why": self.why.value, "reason": self.reason}


@dataclass
class Boundary:
    """Where it broke in one lineage: labels of the last good and first bad kernels, or the set
    the first bad is one of (`suspects`) when untestable kernels left it open."""

    lineage: Lineage | None = None
    last_good: str | None = None
    first_bad: str | None = None
    suspects: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, r: BisectResult, lineage: Lineage | None = None) -> "Boundary":
        return cls(lineage, r.last_good.label if r.last_good else None,
                   r.first_bad.label if r.first_bad else None,
                   [c.label for c in r.suspects] if r.status is BisectStatus.INCONCLUSIVE else [])


@dataclass
class Stop:
    """The procedure ends at this engine result, for this reason (no boundary to report)."""

    result: BisectResult
    why: str


class Next(Enum):
    """What the differential does after a stage (not part of the answer)."""

    DONE = "done"
    LINEAGE = "lineage"  # bisect the lineage of the bad kernel's base (the differential proper)
    STABLE = "stable"  # bisect the stable line behind a distro kernel, then UPSTREAM
    UPSTREAM = "upstream"  # walk mainline forward from the base to its first bad release
    RCS = "rcs"  # bisect that release's rc's


@dataclass
class StageOutcome:
    """What one stage established. Unset parts say nothing; `assemble` folds outcomes in order."""

    stages: list[Stage] = field(default_factory=list)
    results: list[BisectResult] = field(default_factory=list)  # engine runs the answer rests on
    notes: list[str] = field(default_factory=list)
    undecided: list[Undecided] = field(default_factory=list)
    boundary: Boundary | None = None  # in the lineage the user ran
    stable: Boundary | None = None  # the stable line behind a distro kernel
    upstream: Boundary | None = None  # where mainline went bad, for a stable-backport
    origin: Origin | None = None
    carrier: Carrier | None = None  # reported with a stable-backport origin
    origin_open: str = ""  # why no origin can be named
    status: BisectStatus | None = None  # decided by the stage (else derived from `results`)
    stopped: str = ""  # the one-line answer, when the stage decided it
    stop: Stop | None = None
    next: Next = Next.DONE
    via: Carrier | None = None  # for the stages after this one: the line that carries the change
    window: tuple[Kernel, Kernel] | None = None  # for Next.RCS: (last good, first bad) mainline release

    def take(self, r: BisectResult, lineage: Lineage) -> Boundary:
        """The engine's boundary is the answer's boundary, with its notes."""
        self.boundary = Boundary.of(r, lineage)
        self.results.append(r)
        if r.status is BisectStatus.INCONCLUSIVE:
            self.notes.append(r.stopped)
        self.notes.extend(n for n in r.notes if n not in self.notes)
        return self.boundary

    def open_origin(self, why: str) -> "StageOutcome":
        """Untested kernels would decide the origin: name none, say why."""
        self.status = BisectStatus.INCONCLUSIVE
        self.origin_open = why
        self.notes.append(f"origin undecided: {why}")
        return self


@dataclass
class DiffResult:
    """What the user asked for: where it broke, in which lineage, and where it came from."""

    bug: str
    status: BisectStatus
    lineage: Lineage | None = None
    last_good: str | None = None
    first_bad: str | None = None
    origin: Origin | None = None
    carrier: Carrier | None = None  # for stable-backport: "stable" or "distro"
    stable_last_good: str | None = None  # with --distro: the stable line behind the distro kernel
    stable_first_bad: str | None = None
    upstream_last_good: str | None = None
    upstream_first_bad: str | None = None
    suspects: list[str] = field(default_factory=list)
    upstream_suspects: list[str] = field(default_factory=list)
    confidence: float = 0.0
    stopped: str = ""
    notes: list[str] = field(default_factory=list)
    undecided: list[Undecided] = field(default_factory=list)  # kernels the answer is missing
    origin_undecided: str = ""  # why no origin is named, when one would have been
    advice: str = ""  # what to do about `undecided`
    stages: list[Stage] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)  # every one in order

    @property
    def flagged(self) -> bool:
        return self.confidence < CONFIDENCE_THRESHOLD

    def git_ranges(self) -> dict[str, tuple[str, str]]:
        """Version ranges for git narrowing: {"range": (good, bad), "upstream": (good, bad)}."""
        out: dict[str, tuple[str, str]] = {}
        if self.last_good and self.first_bad:
            out["range"] = (self.last_good, self.first_bad)
        if self.upstream_last_good and self.upstream_first_bad:
            out["upstream"] = (self.upstream_last_good, self.upstream_first_bad)
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "bug": self.bug,
            "status": self.status.value,
            "lineage": str(self.lineage) if self.lineage is not None else None,
            "last_good": self.last_good,
            "first_bad": self.first_bad,
            "origin": self.origin.value if self.origin else None,
        }
        if self.origin and self.origin is not Origin.MAINLINE:
            data["upstream_last_good"] = self.upstream_last_good
            data["upstream_first_bad"] = self.upstream_first_bad
        if self.carrier:
            data["carrier"] = self.carrier.value
        if self.stable_first_bad:
            data["stable_last_good"] = self.stable_last_good
            data["stable_first_bad"] = self.stable_first_bad
        if self.suspects:
            data["suspects"] = self.suspects
        if self.upstream_suspects:
            data["upstream_suspects"] = self.upstream_suspects
        data.update({
            "confidence": round(self.confidence, 4),
            "flagged": self.flagged,
            "stopped": self.stopped,
            "notes": self.notes,
            "undecided": [u.to_json() for u in self.undecided],
        })
        if self.advice:
            data["advice"] = self.advice
        data.update({
            "stages": [s.to_json() for s in self.stages],
            "probes": [p.to_json() for p in self.probes],
        })
        return data


# -- assembly ---------------------------------------------------------------------------------

def assemble(bug: str, outcomes: Sequence[StageOutcome], probes: Sequence[Probe]) -> DiffResult:
    """The answer from the stages' outcomes, in the order the stages ran.

    Each part of the answer is decided by at most one stage; the lists (stages, notes, undecided
    kernels, the engine results the confidence rests on) are concatenated, an undecided kernel
    kept once, the results in the order the product has always been taken in. The last outcome says how the procedure ended: at an engine result (`stop`) or
    with an answer (`_finish`)."""
    res = DiffResult(bug=bug, status=BisectStatus.NO_CANDIDATES, probes=list(probes))
    results: list[BisectResult] = []
    held: list[BisectResult] = []
    status: BisectStatus | None = None
    for o in outcomes:
        _fold(res, o)
        if o.next is Next.STABLE:
            # a distro line's result counts after the stable line's: the confidence is a float
            # product, whose last digit (and result.json's rounding) depends on its order
            held = o.results
        else:
            results.extend(o.results + held)
            held = []
        status = o.status or status
    last = outcomes[-1] if outcomes else StageOutcome()
    if last.stop is not None:
        return _stop(res, last.stop)
    return _finish(res, results, status)


def _fold(res: DiffResult, o: StageOutcome) -> None:
    res.stages.extend(o.stages)
    res.notes.extend(o.notes)
    seen = {u.spec for u in res.undecided}
    for u in o.undecided:
        if u.spec not in seen:
            seen.add(u.spec)
            res.undecided.append(u)
    if o.boundary is not None:
        b = o.boundary
        res.lineage, res.last_good, res.first_bad, res.suspects = b.lineage, b.last_good, b.first_bad, b.suspects
    if o.stable is not None:
        res.stable_last_good, res.stable_first_bad = o.stable.last_good, o.stable.first_bad
    if o.upstream is not None:
        up = o.upstream
        res.upstream_last_good, res.upstream_first_bad, res.upstream_suspects = up.last_good, up.first_bad, up.suspects
    res.origin = o.origin or res.origin
    res.carrier = o.carrier or res.carrier
    res.origin_undecided = o.origin_open or res.origin_undecided
    res.stopped = o.stopped or res.stopped


def _stop(res: DiffResult, stop: Stop) -> DiffResult:
    """Stop at an engine result. A disagreement that untested kernels could explain (an end moved
    past unavailable or skipped kernels, a skipped sample) is not established: it is reported as
    inconclusive, with those kernels."""
    r = stop.result
    disputed = r.status is BisectStatus.ENDS_DISAGREE and res.undecided
    res.status = BisectStatus.INCONCLUSIVE if disputed else r.status
    res.stopped = stop.why
    res.notes.append(stop.why)
    res.confidence = r.confidence
    if res.undecided:
        res.stopped += f"; untested: {', '.join(u.kernel for u in res.undecided)}"
        res.advice = ADVICE
        res.notes.append(ADVICE)
    return res


def _finish(res: DiffResult, results: list[BisectResult], status: BisectStatus | None) -> DiffResult:
    statuses = [r.status for r in results]
    if status is not None:
        res.status = status
    elif BisectStatus.UNSTABLE in statuses:
        res.status = BisectStatus.UNSTABLE
    elif BisectStatus.INCONCLUSIVE in statuses:
        res.status = BisectStatus.INCONCLUSIVE
    elif res.first_bad:
        res.status = BisectStatus.FOUND
    else:
        res.status = BisectStatus.NO_CANDIDATES
    res.confidence = functools.reduce(lambda a, r: a * r.confidence, results, 1.0) if results else 0.0
    if res.undecided:
        res.advice = ADVICE
        res.notes.append(f"undecided: {', '.join(str(u) for u in res.undecided)}; {ADVICE}")
    if not res.stopped:
        res.stopped = summary_line(res) or (results[-1].stopped if results else "nothing to bisect")
    if res.status is BisectStatus.UNSTABLE:
        # the answer line must say what made it unstable, not only the boundary it doubts
        why = next((r.stopped for r in results if r.status is BisectStatus.UNSTABLE and r.stopped), "")
        if why and why not in res.stopped:
            res.stopped += f"; unstable: {why}"
    return res


def summary_line(res: DiffResult) -> str:
    """The one-line answer: boundary, origin (or why it is open), upstream range."""
    parts = []
    if res.first_bad:
        parts.append(f"{res.lineage}: {res.last_good} good, {res.first_bad} bad")
    elif res.suspects:
        parts.append(f"{res.lineage}: {res.last_good} good, first bad one of {', '.join(res.suspects)}")
    if res.origin:
        parts.append(f"origin {res.origin}")
    elif res.origin_undecided:
        parts.append(f"origin undecided: {res.origin_undecided}")
    if res.upstream_first_bad:
        parts.append(f"upstream {res.upstream_last_good} good, {res.upstream_first_bad} bad")
    if res.undecided:
        parts.append(ADVICE)
    return "; ".join(parts)
