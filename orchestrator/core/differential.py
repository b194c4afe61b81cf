"""The mainline-vs-stable/distro differential, as stages on top of the pure engine.

The differential is the write-up's twist done automatically. The user says "good 4.15, bad 5.4";
mainline 5.4 turns out good, so the 5.4 the user ran was not mainline 5.4. kbisect then

(a) bisects the lineage of that base the user most plausibly ran (the distro series named with
    ``--distro``, else stable-5.4 up to its newest available release) to its first bad release;
(b) walks mainline forward from the base release by release until the bug appears, and bisects
    that release's rc's (v5.6 good .. v5.7 bad → v5.7-rcK);
(c) names the origin: ``mainline`` (regression between the given mainline ends),
    ``stable-backport`` (a stable or distro line got it by backporting a later mainline change),
    ``distro`` (only distro kernels show it: a distro-only patch), or ``stable-only`` (a stable
    line shows it but no mainline release after the base does: a stable-specific breakage).

Skips never decide anything. An origin is named only when the kernels that decide it were really
probed good or bad: a mainline release that was unavailable or skipped may be the very release that
went bad (a regression fixed by the next release looks like a gap followed by good releases), so
"no mainline release shows it" needs every release after the base probed good. When unavailable or
skipped kernels leave the answer open, the result says ``inconclusive``, ``origin`` stays None, the
kernels are listed in ``undecided`` and ``advice`` says how to decide them (``ADVICE``).

Each step is a stage function (here `given_range`, `base_check`, `lineage_of_bad`,
`stable_behind_distro`; steps (b) and (c) in core/upstream.py) that returns a `StageOutcome` saying
what it established and which stage comes next; `run_stages` follows them and
`diffresult.assemble` builds the answer. The stages share only a `probing.Probing` context (the
listing, the injected probe, the verdicts already established, the probe log). Everything is
pure, so the differential is tested with replayed verdicts on a generated mirror.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.diffresult import (
    ADVICE,
    Boundary,
    Carrier,
    DiffResult,
    Next,
    Origin,
    Stage,
    StageOutcome,
    Stop,
    Undecided,
    assemble,
)
from orchestrator.core.engine import BisectResult, BisectStatus, End, Probe, ProbeFn
from orchestrator.core.errors import KbisectError
from orchestrator.core.lineages import (
    DISTRO_SERIES,
    Kernel,
    KernelIndex,
    Lineage,
    canonical,
    debian_lineage,
    distro_lineage,
    kernel_of,
    make_kernel,
)
from orchestrator.core.probing import MAX_WALK, Probing, moved_over
from orchestrator.core.upstream import mainline_walk, upstream_rcs
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import KernelVersion, parse_spec

# Callers import the listing side and the answer's types from here too (cli/bisect.py, tests).
__all__ = [
    "ADVICE", "DISTRO_SERIES", "MAX_WALK", "Carrier", "DiffResult", "Differential", "Kernel", "KernelIndex",
    "Lineage", "Origin", "Probing", "Stage", "StageOutcome", "Undecided", "base_check", "canonical",
    "debian_lineage", "distro_lineage", "given_range", "lineage_of_bad", "mainline_walk", "make_kernel",
    "kernel_of", "run_stages", "stable_behind_distro", "upstream_rcs",
]


def carrier_of(lineage: Lineage) -> Carrier:
    """The line a boundary in `lineage` says carried the change."""
    return Carrier.STABLE if lineage.is_stable else Carrier.DISTRO


# -- (a) the lineage the user ran -------------------------------------------------------------

def given_range(ctx: Probing, g: Kernel, b: Kernel, distro: str | None) -> StageOutcome:
    """--good and --bad in one lineage: bisect between them.

    A mainline boundary is a mainline origin, a patched variant's boundary is its patch, a stable
    or distro boundary goes on to find where mainline got it (UPSTREAM). A good mainline bad end
    means the user's bad kernel was not mainline: the lineage of its base follows (LINEAGE, the
    write-up's case). Other disagreements stop, open when untested kernels could explain them."""
    out = StageOutcome()
    given = ctx.index.between(g.lineage, g, b)
    r = ctx.bisect(out, "given range", given, g.lineage)
    if r.status.settled:
        out.take(r, g.lineage)
        if g.lineage.is_mainline:
            out.origin = Origin.MAINLINE
        elif not _variant_is_the_difference(ctx, r, out):
            out.next, out.via = Next.UPSTREAM, carrier_of(g.lineage)
        return out
    moved = moved_over(r, given)
    out.undecided.extend(ctx.undecided(moved))
    if r.disagreeing_end is End.GOOD:
        end = r.good_end.label if r.good_end else g.label
        if moved:
            out.stop = Stop(r, f"--good {g.label} could not be tested and the next testable kernel, {end}, "
                               "is already bad: the first bad is it or an untested kernel before it")
        else:
            out.stop = Stop(r, f"good end {end} is already bad: "
                               "the regression is older than the range; give an older --good")
        return out
    if r.disagreeing_end is End.BAD and b.lineage.is_mainline:
        seen = (f"mainline {b.label} is good" if not moved else
                f"mainline {b.label} could not be tested and {r.bad_end.label if r.bad_end else '?'} "
                f"before it is good")
        out.notes.append(
            f"{seen}, so the bad {b.label} the user ran was {'probably ' if moved else ''}not "
            f"mainline {b.label}: "
            f"it was a stable or distro kernel built on {b.label}. Taking the "
            + (f"{distro} series" if distro else f"newest available stable-{b.base} release")
            + " as the bad kernel and comparing lineages (write-up's case).")
        out.results.append(r)
        out.next = Next.LINEAGE
        return out
    out.stop = Stop(r, r.stopped)
    return out


def _variant_is_the_difference(ctx: Probing, r: BisectResult, out: StageOutcome) -> bool:
    """First bad is the last good kernel rebuilt with a patch: that patch is the origin."""
    fb = ctx.index.get(r.first_bad.spec) if r.first_bad else None
    lg = ctx.index.get(r.last_good.spec) if r.last_good else None
    if fb is None or lg is None or not fb.variant or lg.variant or str(fb.version) != str(lg.version):
        return False
    out.origin = Origin.VARIANT
    out.notes.append(f"first bad {fb.label} is {lg.label} rebuilt with the patch {fb.variant!r}: that patch is "
                     "the whole difference, so no upstream search is needed")
    return True


def base_check(ctx: Probing, g: Kernel, b: Kernel) -> StageOutcome:
    """--bad is a stable or distro kernel: is mainline at its base already bad?

    Bad: the regression is in mainline; bisect mainline --good .. base (origin mainline). Good or
    untestable: bisect the lineage of the bad kernel (LINEAGE); untestable leaves "did mainline
    have it already" open, which the mainline walk later says."""
    if b.base is None:
        raise KbisectError(f"--bad {b.label}: cannot tell which mainline release it is built on")
    out = StageOutcome(next=Next.LINEAGE)
    root = ctx.index.mainline_release(b.base)
    walk = Stage("base check")
    out.stages.append(walk)
    if root is None or not root.available or not g.lineage.is_mainline or not g.sort_key < root.sort_key:
        return out
    verdict = ctx.judge(root, walk)
    if verdict is Verdict.BAD:
        out.notes.append(f"mainline {root.label} (the base of {b.label}) is already bad: "
                         f"the regression is in mainline; bisecting mainline {g.label}..{root.label}")
        out.next = Next.DONE
        r = ctx.bisect(out, "mainline", ctx.index.between("mainline", g, root), Lineage.mainline())
        if r.status.settled:
            out.take(r, Lineage.mainline())
            out.origin = Origin.MAINLINE
        else:
            out.stop = Stop(r, r.stopped)
    elif verdict is Verdict.GOOD:
        out.notes.append(f"mainline {root.label} (the base of {b.label}) is good: "
                         f"bisecting the {b.lineage} lineage, then finding where mainline went bad")
    else:
        out.notes.append(f"mainline {root.label} (the base of {b.label}) could not be tested: "
                         f"bisecting the {b.lineage} lineage, but whether mainline had it already stays open")
    return out


def _line_of(ctx: Probing, out: StageOutcome, base: KernelVersion, distro: str | None,
             bad: Kernel | None) -> tuple[list[Kernel], Lineage]:
    """The kernels of the lineage the user ran, up to `bad` when it is of that lineage."""
    if not distro:
        upto = bad if bad is not None and bad.lineage.is_stable else None
        return ctx.index.stable_line(base, upto), Lineage.stable(base)
    source, dbase = distro_lineage(distro)
    if dbase != base:
        out.notes.append(f"--distro {distro} carries {dbase}, not {base}: using its series anyway")
    lineage = Lineage.distro(source, dbase)
    line = ctx.index.distro_line(distro, dbase)
    if bad is not None and bad.lineage == lineage:
        line = [k for k in line if k.sort_key <= bad.sort_key]
    return line, lineage


def lineage_of_bad(ctx: Probing, base: KernelVersion, distro: str | None, bad: Kernel | None) -> StageOutcome:
    """(a) Bisect the lineage of `base` the user ran: the `distro` series, else stable-`base`;
    up to `bad`, or (when the user named only a base) up to a picked bad end.

    A boundary goes on to the stable line behind a distro kernel (STABLE) or to mainline
    (UPSTREAM). A distro series bad from its first upload still compares with mainline; other
    disagreements stop."""
    out = StageOutcome()
    line, lineage = _line_of(ctx, out, base, distro, bad)
    if len([k for k in line if k.available]) < 2:
        out.status = BisectStatus.NO_CANDIDATES
        out.stopped = f"the {lineage} lineage has fewer than two available kernels: nothing to compare"
        return out
    pick = pick_bad_end(ctx, out, line, lineage) if bad is None else None
    if pick is not None:
        line = pick.line
    r = ctx.bisect(out, "lineage of the bad kernel", line, lineage)
    if r.status.settled:
        out.take(r, lineage)
        out.next = Next.STABLE if distro else Next.UPSTREAM
        out.via = carrier_of(lineage)
        return out
    moved = moved_over(r, line, pick.newest if pick else None)
    out.undecided.extend(ctx.undecided(moved + (pick.skipped if pick and r.disagreeing_end is End.BAD else [])))
    if r.disagreeing_end is End.BAD:
        msg = (f"no kernel of {lineage} up to {r.bad_end.label if r.bad_end else '?'} shows the bug either; "
               "cannot tell which kernel was bad"
               + ("" if distro else " (if the bad kernel was a distro build, pass --distro ubuntu:SERIES)"))
    elif r.disagreeing_end is End.GOOD:
        msg = (f"the oldest kernel of {lineage} ({r.good_end.label if r.good_end else '?'}) is already bad: "
               "the distro carried it from its first upload")
        if distro:
            # the whole series is bad: still compare with mainline to name the origin
            _whole_series_bad(out, r, lineage, moved, msg)
            return out
    else:
        msg = r.stopped
    out.stop = Stop(r, msg)
    return out


def _whole_series_bad(out: StageOutcome, r: BisectResult, lineage: Lineage, moved: list[Kernel], msg: str) -> None:
    """The distro series is bad from its oldest testable upload. If older uploads could not be
    tested, the first bad is that upload or one of them: inconclusive, not a guess."""
    out.notes.append(msg)
    oldest = r.good_end.label if r.good_end else None
    out.boundary = Boundary(lineage)
    if moved:
        out.status = BisectStatus.INCONCLUSIVE
        out.boundary.suspects = [k.label for k in moved] + ([oldest] if oldest else [])
        out.notes.append("first bad could be any of " + ", ".join(out.boundary.suspects))
    else:
        out.boundary.first_bad = oldest
    out.results.append(r)
    out.next, out.via = Next.UPSTREAM, Carrier.DISTRO


@dataclass
class BadEnd:
    """The bad-end search over a line: the line cut at the chosen bad end, and what it skipped."""

    line: list[Kernel]
    newest: Kernel
    skipped: list[Kernel] = field(default_factory=list)


def pick_bad_end(ctx: Probing, out: StageOutcome, line: list[Kernel], lineage: Lineage, samples: int = 8) -> BadEnd:
    """The user named only a base ("bad 5.4"): which kernel of its line did they run?

    The newest available release is the first guess (what an up-to-date machine runs). If
    that one is good the bug may since have been fixed in the line (gretap-ecn: 5.4.41 bad,
    5.4.138 good again), so up to `samples` evenly spaced releases are probed, oldest first,
    and the first bad one becomes the bad end. Bisecting from the line's root to that kernel
    then finds the first bad release. If no sample is bad the line is returned unchanged and
    the engine reports the disagreement. A skipped newest release is sampled past like a good
    one; every skip is returned, so an unheard line is never mistaken for a good one."""
    available = [k for k in line if k.available]
    newest = available[-1]
    pick = BadEnd(line, newest)
    stage = Stage("bad-end search")
    out.stages.append(stage)
    verdict = ctx.judge(newest, stage)
    if verdict is Verdict.BAD:
        out.notes.append(f"bad end of {lineage}: newest available release, {newest.label}")
        pick.line = [x for x in line if x.sort_key <= newest.sort_key]
        return pick
    if verdict is Verdict.SKIP:
        pick.skipped.append(newest)
    inner = available[1:-1]
    if not inner:
        return pick
    step = max(1, len(inner) // samples)
    picks = inner[step - 1::step][:samples]
    for k in picks:
        verdict = ctx.judge(k, stage)
        if verdict is Verdict.BAD:
            out.notes.append(
                f"newest {lineage} release {newest.label} is "
                + ("skipped" if newest in pick.skipped else "good (fixed since?)")
                + f"; sampled the line and took {k.label}, the oldest bad sample, as the bad end")
            pick.line = [x for x in line if x.sort_key <= k.sort_key]
            return pick
        if verdict is Verdict.SKIP:
            pick.skipped.append(k)
    good = len(picks) + 1 - len(pick.skipped)
    out.notes.append(f"newest {lineage} release {newest.label} and {len(picks)} sampled releases: "
                     f"{good} good" + (f", {len(pick.skipped)} skipped" if pick.skipped else ""))
    return pick


def stable_behind_distro(ctx: Probing, base: KernelVersion) -> StageOutcome:
    """Did the distro get it through a stable update? (The write-up's Ubuntu kernel had taken
    stable 5.4.41.) If the stable line of the same base shows the bug, bisect it too and
    report its first bad release beside the distro's; else the distro took it on its own.

    The outcome's `via` is the carrier: "stable" when the stable line was probed bad, "distro"
    only when it was really probed good (`_line_clean`), and None when unavailable or skipped
    kernels left it undecided: then the distro may have taken the change itself or through
    stable, and the result does not say which."""
    out = StageOutcome(next=Next.UPSTREAM)
    lineage = Lineage.stable(base)
    line = ctx.index.stable_line(base)
    if len([k for k in line if k.available]) < 2:
        out.undecided.extend(ctx.undecided(k for k in line if not k.available))
        out.notes.append(f"{lineage} has fewer than two available kernels: cannot tell whether the distro "
                         "got it via stable or took it itself")
        return out
    pick = pick_bad_end(ctx, out, line, lineage)
    r = ctx.bisect(out, "stable line behind the distro", pick.line, lineage)
    if r.status.settled:
        out.via, out.stable = Carrier.STABLE, Boundary.of(r)
        out.results.append(r)
        out.notes.append(f"{lineage} shows it too, from {r.first_bad.label}: the distro took it with a stable update"
                         if r.first_bad is not None else
                         f"{lineage} shows it too ({r.stopped}): the distro took it with a stable update")
        return out
    if r.disagreeing_end is End.GOOD and r.good_end is not None:
        out.undecided.extend(ctx.undecided(moved_over(r, pick.line)))
        out.via, out.stable = Carrier.STABLE, Boundary(None, None, r.good_end.label)
        out.notes.append(f"{lineage} is bad from its oldest testable kernel, {r.good_end.label}: "
                         "the distro took it with a stable update")
        return out
    if _line_clean(r, pick):
        out.via = Carrier.DISTRO
        out.notes.append(f"{lineage} does not show it ({r.stopped}): the distro took the change itself")
        return out
    untested = pick.skipped + moved_over(r, pick.line, pick.newest)
    out.undecided.extend(ctx.undecided(untested))
    out.notes.append(f"{lineage} is undecided ({r.stopped}; untested: "
                     + (", ".join(k.label for k in untested) or "its ends")
                     + "): cannot tell whether the distro got it with a stable update or on its own")
    return out


def _line_clean(r: BisectResult, pick: BadEnd) -> bool:
    """May "this line does not show it" be said? Only when the line's newest release and every
    sampled release were probed good: the engine's bad end is the newest available kernel
    (not a neighbour it fell back to) and the bad-end search met no skip. A skipped sample
    may be exactly the bad window (gretap-ecn: 5.4.41 .. 5.4.137)."""
    return (r.status is BisectStatus.ENDS_DISAGREE and r.disagreeing_end is End.BAD and not pick.skipped
            and r.bad_end is not None and r.bad_end.spec == pick.newest.spec)


# -- the procedure ----------------------------------------------------------------------------

def resolve_kernel(index: KernelIndex, text: str, role: str) -> Kernel:
    spec = parse_spec(text)
    k = index.get(str(spec))
    if k is None and spec.variant:
        raise KbisectError(f"--{role} {text}: variant kernels are not in any listing")
    if k is None:
        raise KbisectError(f"--{role} {text}: {spec} is not in the {spec.source} listing")
    return k


def run_stages(ctx: Probing, good: str, bad: str, distro: str | None = None) -> list[StageOutcome]:
    """Every stage's outcome for one `kbisect bisect`, in the order the stages ran: the first
    stage from the ends the user gave, then each stage the previous one asks for (`next`)."""
    g, b = resolve_kernel(ctx.index, good, "good"), resolve_kernel(ctx.index, bad, "bad")
    if g.lineage == b.lineage and not g.sort_key < b.sort_key:
        raise KbisectError(f"--good {g.label} is not older than --bad {b.label}")
    if distro:
        distro_lineage(distro)  # validate early: one clear line
    if g.lineage == b.lineage:
        outcomes, line_distro, bad_kernel = [given_range(ctx, g, b, distro)], distro, None
    else:
        outcomes, bad_kernel = [base_check(ctx, g, b)], b
        if b.lineage.is_stable:
            line_distro = None
        elif distro is None and b.source in ("ubuntu", "debian"):
            line_distro = f"{b.source}:{b.base}"
        else:
            line_distro = distro
    return _follow(ctx, outcomes, b.base, line_distro, bad_kernel)


def _follow(ctx: Probing, outcomes: list[StageOutcome], base: KernelVersion | None, distro: str | None,
            bad: Kernel | None) -> list[StageOutcome]:
    """Run the stage the last outcome asks for until one is done. `base` is the mainline release
    the bad kernel is built on; `distro` and `bad` say which lineage of it the user ran."""
    while outcomes[-1].next is not Next.DONE:
        last = outcomes[-1]
        if last.next is Next.LINEAGE and base is not None:
            outcomes.append(lineage_of_bad(ctx, base, distro, bad))
        elif last.next is Next.STABLE and base is not None:
            outcomes.append(stable_behind_distro(ctx, base))
        elif last.next is Next.UPSTREAM:
            outcomes.append(mainline_walk(ctx, base, last.via))
        elif last.next is Next.RCS and last.window is not None:
            boundary = next(o.boundary for o in reversed(outcomes) if o.boundary is not None)
            outcomes.append(upstream_rcs(ctx, *last.window, boundary, last.via))
        else:
            raise AssertionError(f"stage asked for {last.next} without what it needs")
    return outcomes


class Differential:
    """Run the whole decision procedure for one `kbisect bisect` invocation."""

    def __init__(self, bug: str, index: KernelIndex, probe: ProbeFn, *,
                 policy: RepeatPolicy | None = None, verify: int = 3,
                 on_probe: Callable[[Probe], None] | None = None, on_event: Callable[[str], None] | None = None,
                 max_walk: int = MAX_WALK) -> None:
        self.bug = bug
        self.index = index
        self.probe = probe
        self.policy = policy or RepeatPolicy()
        self.verify = verify
        self.on_probe = on_probe
        self.on_event = on_event
        self.max_walk = max_walk

    def probing(self) -> Probing:
        """A fresh probing context: a run shares verdicts across its stages, not across runs."""
        ctx = Probing(self.index, self.probe, self.policy, self.verify, self.on_probe, max_walk=self.max_walk)
        if self.on_event is not None:
            ctx.on_event = self.on_event
        return ctx

    def run(self, good: str, bad: str, distro: str | None = None) -> DiffResult:
        ctx = self.probing()
        return assemble(self.bug, run_stages(ctx, good, bad, distro), ctx.probes)
