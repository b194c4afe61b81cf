"""The differential's steps (b) and (c): where did mainline get it, so where does it come from?

`mainline_walk` judges the mainline releases after the base of the bad kernel, oldest first, up
to the first bad one; `upstream_rcs` bisects that release's rc's for the upstream range and names
the origin a stable backport. When no walked release is bad, the origin is "stable-only" or
"distro" only if every release after the base up to the newest listed was probed good: a release
that was unavailable, skipped or beyond the walk limit may be the very one that went bad (the
bug may be fixed by the next release, as gretap-ecn was by 5.14), so it leaves the origin open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.diffresult import Boundary, Carrier, Missing, Next, Origin, Stage, StageOutcome, Undecided
from orchestrator.core.engine import BisectStatus
from orchestrator.core.lineages import Kernel, Lineage
from orchestrator.core.probing import Probing
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import KernelVersion


@dataclass
class Walk:
    """What the mainline walk saw: the newest good release before the first bad one, and the
    releases that could not speak (gaps: unavailable or skipped; unwalked: past `max_walk`)."""

    last_good: Kernel
    first_bad: Kernel | None = None
    good: list[Kernel] = field(default_factory=list)
    gaps: list[Kernel] = field(default_factory=list)
    unwalked: list[Kernel] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every listed release after the base, up to the newest, was probed good."""
        return self.first_bad is None and bool(self.good) and not self.gaps and not self.unwalked


def mainline_walk(ctx: Probing, base: KernelVersion | None, carrier: Carrier | None) -> StageOutcome:
    """Judge mainline `base` (it must be good), then walk forward to the first bad release.

    `carrier` is the line that carries the change ("stable" or "distro"), None when the stable
    line behind a distro kernel was left undecided. A first bad release hands over to
    `upstream_rcs` (`next` RCS, `window`, `via` the carrier)."""
    out = StageOutcome(via=carrier)
    if base is None:
        return out
    stage = Stage("mainline walk")
    out.stages.append(stage)
    prev = ctx.index.mainline_release(base)
    if prev is None:
        out.undecided.append(Undecided(str(base), f"mainline:{base}", Missing.NOT_LISTED))
        return out.open_origin(f"mainline {base} is not listed: cannot tell whether mainline had it already")
    verdict = ctx.judge(prev, stage)
    if verdict is Verdict.BAD:
        # should not happen after the checks before this stage; say so rather than guess
        out.notes.append(f"mainline {prev.label} is bad: the regression is in mainline, not a backport")
        out.origin = Origin.MAINLINE
        return out
    if verdict is not Verdict.GOOD:
        out.undecided.extend(ctx.undecided([prev]))
        return out.open_origin(f"mainline {prev.label} could not be tested: cannot tell whether "
                               "mainline had it already (origin mainline) or got it later")
    ctx.on_event(f"[mainline walk] forward from {prev.label}")
    walk = _walk(ctx, out, base, prev, stage)
    if walk.first_bad is None:
        return _no_bad_release(ctx, out, base, walk, carrier)
    out.next, out.window = Next.RCS, (walk.last_good, walk.first_bad)
    return out


def _walk(ctx: Probing, out: StageOutcome, base: KernelVersion, prev: Kernel, stage: Stage) -> Walk:
    """Judge mainline releases after `base`, oldest first, up to the first bad one. An
    unavailable or skipped release is stepped over but kept as a gap, never counted as good."""
    walk = Walk(prev)
    releases = ctx.index.releases_after(base)
    for i, rel in enumerate(releases):
        if i >= ctx.max_walk:
            walk.unwalked = releases[i:]
            out.notes.append(f"stopped walking mainline after {ctx.max_walk} releases")
            break
        verdict = ctx.judge(rel, stage)
        if verdict is Verdict.GOOD:
            walk.last_good = rel
            walk.good.append(rel)
        elif verdict is Verdict.BAD:
            walk.first_bad = rel
            break
        else:
            walk.gaps.append(rel)
    return walk


def _no_bad_release(ctx: Probing, out: StageOutcome, base: KernelVersion, walk: Walk,
                    carrier: Carrier | None) -> StageOutcome:
    """No walked mainline release is bad. "stable-only" / "distro" claim mainline never got the
    change, so they need the walk complete and, with --distro, the carrier decided (stable-only
    vs distro). Anything less leaves the origin open, the gaps listed as undecided."""
    if walk.complete and carrier is not None:
        out.origin = Origin.DISTRO if carrier is Carrier.DISTRO else Origin.STABLE_ONLY
        out.notes.append(
            f"no mainline release after {base} up to {walk.last_good.label} shows the bug "
            f"({len(walk.good)} releases, all probed good): "
            + ("a distro-only patch" if carrier is Carrier.DISTRO else
               "a stable-specific breakage (or a mainline bug fixed before its release)"))
        return out
    out.undecided.extend(ctx.undecided(walk.gaps))
    out.undecided.extend(ctx.undecided(walk.unwalked, Missing.NOT_WALKED,
                                       f"beyond the walk limit of {ctx.max_walk} releases"))
    if walk.complete:
        why = (f"no mainline release after {base} shows the bug, but whether stable-{base} does is "
               "undecided: distro or stable-only")
    elif not (walk.good or walk.gaps):
        why = f"no mainline release after {base} is listed: nothing shows whether mainline ever got it"
    else:
        open_ = walk.gaps + walk.unwalked
        why = (f"no mainline release after {base} was probed bad, but {len(open_)} could not be tested "
               f"({', '.join(k.label for k in open_[:6])}{', ...' if len(open_) > 6 else ''}) "
               "and any of them may be the first bad one")
    return out.open_origin(why)


def upstream_rcs(ctx: Probing, prev: Kernel, release: Kernel, boundary: Boundary,
                 carrier: Carrier | None) -> StageOutcome:
    """`prev` release probed good, `release` probed bad: the origin is a backport of a later
    mainline change; bisect the rc's between them for the upstream range. `boundary` is where
    the lineage the user ran went bad (for the closing note)."""
    out = StageOutcome(origin=Origin.STABLE_BACKPORT, carrier=carrier)
    r = ctx.bisect(out, "upstream rc's", ctx.index.release_window(prev, release), Lineage.mainline())
    out.results.append(r)
    if r.status in (BisectStatus.FOUND, BisectStatus.UNSTABLE):
        out.upstream = Boundary.of(r)
    elif r.status is BisectStatus.INCONCLUSIVE:
        up = Boundary.of(r)
        up.first_bad = r.suspects[-1].label if r.suspects else None
        out.upstream = up
        out.notes.append("upstream boundary " + r.stopped)
    else:
        out.upstream = Boundary(None, prev.label, release.label)
        out.notes.append(f"upstream rc bisection did not settle ({r.stopped}); "
                         f"upstream range is the release pair {prev.label}..{release.label}")
    up = out.upstream
    got = boundary.first_bad or ("one of " + ", ".join(boundary.suspects) if boundary.suspects else "?")
    via = f"via the {carrier} line" if carrier else "via a line left undecided (stable or the distro itself)"
    out.notes.append(f"mainline went bad between {up.last_good} and {up.first_bad}; "
                     f"{boundary.lineage} got it at {got}: origin stable-backport {via}")
    return out
