"""Bisection over a commit graph, the way `git bisect` walks it: pure logic, no I/O.

A kernel range such as v5.7-rc4..v5.7-rc5 is dozens of merges, not a line. Listing it oldest
first and bisecting the list (as the linear engine does for package versions) names a wrong
commit whenever the culprit sits on a side branch and its list neighbour belongs to another
branch: that neighbour was never its parent. So this search keeps the graph:

* The commits still undecided are those of the range (`bad ^good`, git's own definition, so a
  side branch forked before the good end is in) that are ancestors of the newest commit known
  bad and of no commit known good. A bad verdict keeps the candidate's ancestors; a good one
  removes them (git's assumption: the bug, once in, stays in along every descendant).
* The next commit is the one whose ancestors among the undecided are closest to half of them
  (`git rev-list --bisect`); a commit that cannot be built or booted is a skip and the next best
  is tried (`git bisect skip`); ties go to the older commit, as in the linear engine.
* Cheap first guesses: the commits a ranking puts first, and the commits touching the bug's
  paths (`git bisect -- PATHS`); once such a commit shows the bug, its own parents are probed
  next, since the commit itself is the likely culprit.
* The answer is a commit proven bad whose every parent was itself probed and proven good: a
  parent only implied good by the history (a side branch's fork point, say) is probed before
  the answer stands. A merge is the answer only when all its parents are good, and the result
  says what that means. A parent that shows the bug contradicts the history's monotony and the
  result is `unstable`; a parent that cannot be tested leaves the answer `inconclusive` between
  them. The answer and its parents are then re-run `verify` times, as the linear engine does.
* `fix=True` swaps the two states (the first commit without the bug, after commits with it).

Bit masks (Python ints, one bit per commit of the range) keep each step linear in the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.engine import (
    DEFAULT_VERIFY,
    BisectResult,
    BisectStatus,
    End,
    confidence,
    search_states,
)
from orchestrator.core.judging import Candidate, Phase, Probe, ProbeFn, judge
from orchestrator.core.verdict import Verdict


@dataclass
class CommitGraph:
    """A commit range as the search needs it.

    `order` is every commit of the range (`bad ^good`), parents before children; `parents` maps
    each of them to its parents (which may lie outside the range: the good end, a fork point);
    `candidates` has a Candidate for every commit of the range and every such outside parent."""

    good: str
    bad: str
    order: list[str]
    parents: dict[str, tuple[str, ...]]
    candidates: dict[str, Candidate]

    def __post_init__(self) -> None:
        if self.bad not in self.parents:
            raise ValueError(f"the bad end {self.bad[:12]} is not in the range")
        missing = [s for s in self.order if s not in self.candidates]
        missing += [p for s in self.order for p in self.parents[s] if p not in self.candidates]
        if missing or self.good not in self.candidates:
            raise ValueError(f"no candidate for {', '.join(m[:12] for m in missing) or self.good[:12]}")

    def label(self, sha: str) -> str:
        return self.candidates[sha].label


@dataclass
class _State:
    """The undecided set and the ends it lies between."""

    undecided: int  # bit mask over the range
    bad: str  # the commit in the new state whose ancestors hold the answer
    skipped: int = 0


class DagEngine:
    """Bisect one commit graph. Construct, then call `run()`.

    `guesses`: commits to probe first, best first (a ranking's top commit): a guess in the new
    state has its parents probed at once, and when they are all in the old state the guess is the
    answer without the range's ends ever being built. `priority`: commits searched before the
    others (those touching the bug's paths). `known` carries verdicts established elsewhere."""

    def __init__(self, graph: CommitGraph, probe: ProbeFn, *, policy: RepeatPolicy | None = None,
                 lineage: str = "", verify: int = DEFAULT_VERIFY, guesses: Sequence[str] = (),
                 priority: Iterable[str] = (), known: dict[str, Verdict] | None = None, fix: bool = False,
                 on_probe: Callable[[Probe], None] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.g = graph
        self.probe_fn = probe
        self.policy = policy or RepeatPolicy()
        self.lineage = lineage
        self.verify = max(0, verify)
        self.guesses = [s for s in guesses if s in graph.parents]
        self.on_probe, self.on_event = on_probe, on_event
        self.known: dict[str, Verdict] = dict(known or {})
        self.fix = fix
        self.old, self.new = search_states(fix)
        self.probes: list[Probe] = []
        self.verdicts: dict[str, Verdict] = {}  # sha -> verdict of this search
        self.notes: list[str] = []
        self.index = {sha: i for i, sha in enumerate(graph.order)}
        self.ancestors = self._ancestor_masks()
        self.priority = self._mask(s for s in priority if s in self.index)

    # -- the graph as bit masks ------------------------------------------------------------
    def _ancestor_masks(self) -> dict[str, int]:
        """Each range commit's ancestors inside the range, itself included."""
        masks: dict[str, int] = {}
        for sha in self.g.order:
            mask = 1 << self.index[sha]
            for parent in self.g.parents[sha]:
                mask |= masks.get(parent, 0)  # parents outside the range add nothing
            masks[sha] = mask
        return masks

    def _mask(self, shas: Iterable[str]) -> int:
        mask = 0
        for sha in shas:
            mask |= 1 << self.index[sha]
        return mask

    def _members(self, mask: int) -> list[str]:
        return [sha for sha in self.g.order if mask >> self.index[sha] & 1]

    # -- probing ---------------------------------------------------------------------------
    def _event(self, message: str) -> None:
        if self.on_event:
            self.on_event(message)

    def judge(self, sha: str, phase: Phase) -> Verdict:
        """A verdict for `sha`: one already had in this search or handed in as known, else probed."""
        if phase is not Phase.VERIFY:
            if sha in self.verdicts:
                return self.verdicts[sha]
            if sha in self.known:
                self.verdicts[sha] = self.known[sha]
                return self.known[sha]
        probe = judge(self.policy, self.probe_fn, self.g.candidates[sha], phase)
        self.probes.append(probe)
        if self.on_probe:
            self.on_probe(probe)
        if phase is not Phase.VERIFY:
            self.verdicts[sha] = probe.verdict
        return probe.verdict

    def _learn(self, state: _State, sha: str, verdict: Verdict) -> None:
        """Narrow the undecided set by one verdict (commits outside the range narrow nothing)."""
        if sha not in self.index:
            return
        bit = 1 << self.index[sha]
        if verdict is self.new and state.undecided & bit:
            state.bad = sha
            state.undecided &= self.ancestors[sha]
        elif verdict is self.old:
            state.undecided &= ~self.ancestors[sha]
        elif verdict is Verdict.SKIP:
            state.skipped |= bit

    def _probe_in(self, state: _State, sha: str, phase: Phase = Phase.BISECT) -> Verdict:
        verdict = self.judge(sha, phase)
        self._learn(state, sha, verdict)
        if verdict is Verdict.SKIP:
            self._event(f"{self.g.label(sha)}: skip; trying another commit")
        return verdict

    # -- the search ------------------------------------------------------------------------
    def run(self) -> BisectResult:
        g = self.g
        self._event(f"{self.lineage or 'commits'}: {len(g.order)} commits in {g.label(g.good)}..{g.label(g.bad)}")
        state = _State(undecided=self._mask(g.order), bad=g.bad)
        for sha, verdict in self.known.items():
            self._learn(state, sha, verdict)
        if self._guess(state):
            return self._answer(state)
        ended = self._confirm_ends(state)
        if ended is not None:
            return ended
        while True:
            sha = self._next(state)
            if sha is None:
                break
            if self._probe_in(state, sha) is self.new and self.priority >> self.index[sha] & 1:
                self._close(state, sha)
        return self._answer(state)

    def _close(self, state: _State, sha: str) -> None:
        """A priority commit showed the new state: it is the likely culprit, so its parents still
        undecided are probed next (`git bisect -- PATHS` would stop at it untested against them)."""
        undecided = [p for p in self.g.parents[sha] if p in self.index and state.undecided >> self.index[p] & 1]
        verdicts = {p: self._probe_in(state, p) for p in undecided}  # the others are checked with the answer
        said = ", ".join(f"{self.g.label(p)} is {v.value}" for p, v in verdicts.items())
        if all(v is self.old for v in verdicts.values()):
            self.notes.append(f"paths first: {self.g.label(sha)}, which touches the bug's paths, is {self.new.value}"
                              f"{'; its parent ' + said if said else ''}: they are neighbours")
        else:
            self.notes.append(f"paths first: {self.g.label(sha)}, which touches the bug's paths, is {self.new.value}; "
                              f"its parent {said}: the commits between were bisected too")

    def _guess(self, state: _State) -> bool:
        """The guesses, before anything else: True when one of them, with all its parents in the
        old state, is already a proven answer."""
        for sha in self.guesses:
            if not state.undecided >> self.index[sha] & 1 or sha == self.g.good:
                continue
            self._event(f"ranking first: {self.g.label(sha)}, then its parents")
            if self._probe_in(state, sha) is not self.new:
                continue
            for parent in self.g.parents[sha]:
                self._probe_in(state, parent)
            if state.bad == sha and state.undecided == 1 << self.index[sha] and self._parents_old(sha):
                self.notes.append(f"ranking-guided: the top-ranked commit {self.g.label(sha)} and its parents "
                                  "were probed first and showed the boundary; the range's own ends were not built")
                return True
        return False

    def _parents_old(self, sha: str) -> bool:
        return all(self.verdicts.get(p) is self.old for p in self.g.parents[sha])

    def _confirm_ends(self, state: _State) -> BisectResult | None:
        """The good end in the old state, and the bad end in the new one unless a commit inside
        the range already showed the new state (then the answer lies among its ancestors)."""
        g = self.g
        old, new = self.old.value, self.new.value
        verdict = self.judge(g.good, Phase.ENDS)
        if verdict is Verdict.SKIP:
            return self._result(BisectStatus.NO_CANDIDATES, None, None,
                                f"the {old} end {g.label(g.good)} could not be tested")
        if verdict is self.new:
            why = "the fix is older than the range" if self.fix else "the regression is older than the range"
            return self._result(BisectStatus.ENDS_DISAGREE, None, None,
                                f"{old} end {g.label(g.good)} is {new}: {why}", End.GOOD)
        if state.bad != g.bad:
            return None
        verdict = self.judge(g.bad, Phase.ENDS)
        if verdict is Verdict.SKIP:
            return self._result(BisectStatus.NO_CANDIDATES, g.candidates[g.good], None,
                                f"the {new} end {g.label(g.bad)} could not be tested")
        if verdict is self.old:
            why = ("the bug is still there at the new end" if self.fix
                   else "the bug is not in this history between the given ends")
            return self._result(BisectStatus.ENDS_DISAGREE, g.candidates[g.bad], None,
                                f"{new} end {g.label(g.bad)} is {old}: {why}", End.BAD)
        return None

    def _next(self, state: _State) -> str | None:
        """The next commit to probe: the best split among the undecided priority commits, else
        among all undecided; None when nothing testable is left."""
        open_ = state.undecided & ~(1 << self.index[state.bad]) & ~state.skipped
        if not open_:
            return None
        within = state.undecided & self.priority
        if open_ & within:
            return self._best(open_ & within, within)
        return self._best(open_, state.undecided)

    def _best(self, choices: int, universe: int) -> str:
        """`git rev-list --bisect`: the commit whose ancestors in `universe` are nearest half."""
        total = universe.bit_count()
        best, best_score = "", -1
        for sha in self._members(choices):
            weight = (self.ancestors[sha] & universe).bit_count()
            score = min(weight, total - weight)
            if score > best_score:
                best, best_score = sha, score
        return best

    # -- the answer ------------------------------------------------------------------------
    def _answer(self, state: _State) -> BisectResult:
        g = self.g
        new = self.new.value
        first = state.bad
        left = self._members(state.undecided & ~(1 << self.index[first]))
        if left:  # only skipped commits remain: the first bad is one of them or `first`
            suspects = [g.candidates[s] for s in left + [first]]
            res = self._result(BisectStatus.INCONCLUSIVE, None, None,
                               f"inconclusive: first {new} could be any of " + ", ".join(c.label for c in suspects))
            res.suspects = suspects
            return res
        for parent in g.parents[first]:
            self.judge(parent, Phase.BISECT)
        parents = [g.candidates[p] for p in g.parents[first]]
        shown = [p for p in g.parents[first] if self.verdicts.get(p) is self.new]
        untested = [p for p in g.parents[first] if self.verdicts.get(p) is Verdict.SKIP]
        if shown:
            return self._result(BisectStatus.UNSTABLE, None, g.candidates[first],
                                f"{g.label(first)} is {new} but so is its parent {g.label(shown[0])}, which the "
                                f"history says is {self.old.value}: the bug does not follow the history here "
                                "(flaky, or present on one branch and absent on another)")
        if untested:
            suspects = [g.candidates[p] for p in untested] + [g.candidates[first]]
            res = self._result(BisectStatus.INCONCLUSIVE, None, None,
                               f"inconclusive: {g.label(first)} is {new}, but its parent "
                               f"{', '.join(g.label(p) for p in untested)} could not be tested: first {new} "
                               "could be any of " + ", ".join(c.label for c in suspects))
            res.suspects = suspects
            return res
        res = self._result(BisectStatus.FOUND, parents[0], g.candidates[first],
                           f"boundary found: {', '.join(c.label for c in parents)} {self.old.value}, "
                           f"{g.label(first)} {new}")
        res.parents = parents
        if len(parents) > 1:
            res.notes.append(f"{g.label(first)} is a merge and every parent of it is {self.old.value} "
                             f"({', '.join(c.label for c in parents)}): no single commit of either branch "
                             f"is {new}; the way the branches combine is")
        self._verify(first, list(g.parents[first]), res)
        return res

    def _verify(self, first: str, parents: list[str], res: BisectResult) -> None:
        """Re-run the answer and each parent; any contradiction makes the result `unstable`."""
        if self.verify:
            self._event(f"verifying: {self.g.label(first)} and its parents, {self.verify}x each")
        contradictions = []
        for sha, want in [(p, self.old) for p in parents] + [(first, self.new)]:
            for _ in range(self.verify):
                verdict = self.judge(sha, Phase.VERIFY)
                if verdict is not want and verdict is not Verdict.SKIP:
                    contradictions.append(f"{self.g.label(sha)} was {verdict.value} on re-run")
        res.confidence = confidence(self.probes, self.policy)
        if contradictions:
            res.status = BisectStatus.UNSTABLE
            res.stopped = "boundary verification failed: " + "; ".join(contradictions)
            res.confidence = min(res.confidence, 0.5)

    def _result(self, status: BisectStatus, last: Candidate | None, first: Candidate | None, stopped: str,
                disagreeing: End | None = None) -> BisectResult:
        self._event(stopped)
        g = self.g
        return BisectResult(status=status, lineage=self.lineage, last_good=last, first_bad=first,
                            probes=self.probes, confidence=confidence(self.probes, self.policy), stopped=stopped,
                            good_end=g.candidates[g.good], bad_end=g.candidates[g.bad],
                            disagreeing_end=disagreeing, notes=self.notes, size=len(g.order) + 1, fix=self.fix)
