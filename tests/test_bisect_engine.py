"""Engine tables with simulated probes: no VMs, no files, only the bisection rules."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.core.engine import (
    ENDS_DISAGREE,
    FOUND,
    INCONCLUSIVE,
    NO_CANDIDATES,
    UNSTABLE,
    Candidate,
    RunOutcome,
    bisect,
    clean_bound,
    decide,
)
from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.verdict import ProbeRecord, Verdict

G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP


def lineage(n: int, unavailable: set[int] = frozenset()) -> list[Candidate]:
    return [Candidate(f"mainline:k{i}", f"k{i}", available=i not in unavailable,
                      reason="failed build" if i in unavailable else "") for i in range(n)]


class Sim:
    """A simulated reproducer: kernels at or after `first_bad` are bad (with detection
    probability p per run); `skips` always skip; every call is logged."""

    def __init__(self, first_bad: int, p: float = 1.0, skips: set[int] = frozenset(),
                 seed: int = 0, fixed: int | None = None) -> None:
        self.first_bad, self.p, self.skips = first_bad, p, set(skips)
        self.fixed = fixed  # a fix landed at this index: bad again becomes good
        self.rng = random.Random(seed)
        self.calls: list[str] = []

    def __call__(self, cand: Candidate) -> Verdict:
        self.calls.append(cand.label)
        i = int(cand.label[1:])
        if i in self.skips:
            return S
        bad = i >= self.first_bad and (self.fixed is None or i < self.fixed)
        if bad and self.rng.random() < self.p:
            return B
        return G


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9, 16, 17, 33, 100, 257])
def test_clean_verdicts_find_every_boundary_within_the_probe_bound(n: int) -> None:
    for first_bad in range(1, n):
        sim = Sim(first_bad)
        res = bisect(lineage(n), sim, verify=3)
        assert res.status == FOUND, (n, first_bad, res.stopped)
        assert res.last_good.label == f"k{first_bad - 1}"
        assert res.first_bad.label == f"k{first_bad}"
        distinct = len(set(sim.calls))
        assert distinct <= math.ceil(math.log2(n)) + 2 == clean_bound(n), (n, first_bad, distinct)
        assert res.confidence == 1.0 and not res.flagged


def test_boundary_is_verified_n_times_before_reporting() -> None:
    sim = Sim(5)
    res = bisect(lineage(10), sim, verify=3)
    assert sim.calls.count("k4") == 1 + 3 and sim.calls.count("k5") == 1 + 3
    verify = [p for p in res.probes if p.phase == "verify"]
    assert [(p.label, p.verdict) for p in verify] == [("k4", G)] * 3 + [("k5", B)] * 3


def test_verification_contradiction_makes_the_result_unstable() -> None:
    answers = {"k4": [G, B, G, G]}

    def probe(c: Candidate) -> Verdict:
        queue = answers.get(c.label)
        if queue:
            return queue.pop(0)
        return B if int(c.label[1:]) >= 5 else G

    res = bisect(lineage(10), probe, verify=3)
    assert res.status == UNSTABLE
    assert "k4 was bad on re-run" in res.stopped
    assert res.flagged


@pytest.mark.parametrize("end,verdicts,expected", [
    ("bad", {"k9": G}, "bad end k9 is good"),
    ("good", {"k0": B}, "good end k0 is bad"),
])
def test_disagreeing_ends_stop_without_bisecting(end, verdicts, expected) -> None:
    calls: list[str] = []

    def probe(c: Candidate) -> Verdict:
        calls.append(c.label)
        return verdicts.get(c.label, B if c.label == "k9" else G)

    res = bisect(lineage(10), probe)
    assert res.status == ENDS_DISAGREE
    assert res.disagreeing_end == end
    assert expected in res.stopped
    assert res.first_bad is None
    assert set(calls) <= {"k0", "k9"}  # nothing in between was probed


def test_unavailable_kernels_move_to_the_nearest_available_neighbour() -> None:
    sim = Sim(6)
    res = bisect(lineage(12, unavailable={5, 6, 3}), sim, verify=0)
    # 6 is unavailable: 5 too, so the boundary can only be narrowed to {k5, k6, k7}
    assert res.status == INCONCLUSIVE
    assert [c.label for c in res.suspects] == ["k5", "k6", "k7"]
    assert res.last_good.label == "k4"
    assert "first bad could be any of k5, k6, k7" in res.stopped
    assert not {"k3", "k5", "k6"} & set(sim.calls)


def test_unavailable_kernels_away_from_the_boundary_do_not_stop_it_being_found() -> None:
    sim = Sim(8)
    res = bisect(lineage(12, unavailable={5, 6, 3}), sim, verify=0)
    assert res.status == FOUND
    assert (res.last_good.label, res.first_bad.label) == ("k7", "k8")
    assert not {"k3", "k5", "k6"} & set(sim.calls)
    # k4 good and k7 bad with only unavailable kernels between: the honest answer is a set
    res2 = bisect(lineage(12, unavailable={5, 6, 3}), Sim(7), verify=0)
    assert res2.status == INCONCLUSIVE
    assert [c.label for c in res2.suspects] == ["k5", "k6", "k7"]
    assert "k5 (unavailable: failed build)" in " ".join(res2.notes)


def test_skip_verdicts_are_routed_around_and_reported_as_a_set() -> None:
    sim = Sim(8, skips={7, 8})
    res = bisect(lineage(16), sim, verify=0)
    assert res.status == INCONCLUSIVE
    assert [c.label for c in res.suspects] == ["k7", "k8", "k9"]
    assert res.last_good.label == "k6"
    skipped = [p for p in res.probes if p.verdict is S]
    assert skipped and all(p.label in {"k7", "k8"} for p in skipped)


def test_unavailable_or_skipped_ends_move_inwards_with_a_note() -> None:
    sim = Sim(5, skips={9})
    res = bisect(lineage(10, unavailable={0}), sim, verify=0)
    assert res.status == FOUND and res.first_bad.label == "k5"
    assert res.good_end.label == "k1" and res.bad_end.label == "k8"
    assert any("good end k0 untestable" in n for n in res.notes)
    assert any("bad end k9 untestable" in n for n in res.notes)


def test_everything_unavailable_says_so() -> None:
    res = bisect(lineage(5, unavailable={0, 1, 2, 3, 4}), Sim(2))
    assert res.status == NO_CANDIDATES
    assert bisect(lineage(1), Sim(0)).status == NO_CANDIDATES


def test_repeat_policy_folding() -> None:
    pol = RepeatPolicy(runs=10, bad_needed=2, flaky=True)
    assert decide(pol, 0, 2, 0) is B
    assert decide(pol, 8, 1, 0) is None
    assert decide(pol, 9, 1, 0) is G
    assert decide(pol, 5, 1, 14) is S  # 20 attempts used, still undecided
    det = RepeatPolicy()
    assert decide(det, 1, 0, 0) is G and decide(det, 0, 1, 0) is B and decide(det, 0, 0, 1) is S


@pytest.mark.parametrize("p,runs,bad_needed", [(0.9, 4, 1), (0.5, 10, 2), (0.3, 20, 2)])
def test_flaky_reproducers_find_the_boundary_with_repeats(p, runs, bad_needed) -> None:
    pol = RepeatPolicy(runs=runs, bad_needed=bad_needed, flaky=True)
    found = 0
    for seed in range(20):
        sim = Sim(11, p=p, seed=seed)
        res = bisect(lineage(24), sim, policy=pol, verify=3)
        assert res.confidence <= 1.0
        if res.status == FOUND and res.first_bad.label == "k11":
            found += 1
            # each decided good kernel needed enough good runs
            for probe in res.probes:
                if probe.verdict is G:
                    assert probe.good_runs >= runs - bad_needed + 1
                if probe.verdict is B:
                    assert probe.bad_runs >= bad_needed
    assert found >= 17, found


def test_flaky_confidence_is_lower_and_flagged_when_runs_are_too_few() -> None:
    # p = 0.3 with a single run per kernel: a "good" verdict means little
    weak = RepeatPolicy(runs=1, bad_needed=1, flaky=True)
    res = bisect(lineage(32), Sim(20, p=1.0), policy=weak, p=0.3, verify=0)
    assert res.status == FOUND
    assert res.confidence == pytest.approx(0.3 ** len({p.kernel for p in res.probes if p.verdict is G}))
    assert res.flagged
    strong = RepeatPolicy(runs=10, bad_needed=2, flaky=True)
    res2 = bisect(lineage(32), Sim(20, p=1.0), policy=strong, p=0.3, verify=0)
    assert res2.confidence > 0.66 and not res2.flagged
    assert res2.confidence == pytest.approx(
        math.prod(1 - 0.7 ** p.good_runs for p in res2.probes if p.verdict is G))


def test_estimated_detection_probability_from_bad_runs() -> None:
    pol = RepeatPolicy(runs=10, bad_needed=2, flaky=True)
    res = bisect(lineage(8), Sim(4, p=0.5, seed=3), policy=pol, verify=0)
    assert 0 < res.confidence < 1.0


def test_probe_may_return_several_runs_or_records() -> None:
    pol = RepeatPolicy(runs=3, bad_needed=2, flaky=True)

    def probe(c: Candidate):
        i = int(c.label[1:])
        if i >= 3:
            return [RunOutcome(B, 1.5, "dst 18:bd"), ProbeRecord(c.spec, "x", B, "oops", {"run": 2.0})]
        return [G, G, G]

    res = bisect(lineage(6), probe, policy=pol, verify=1)
    assert res.status == FOUND and res.first_bad.label == "k3"
    bad = [p for p in res.probes if p.label == "k3"][0]
    assert bad.runs == 2 and bad.bad_runs == 2 and bad.seconds == pytest.approx(3.5)
    assert bad.records and bad.records[0].reason == "oops"


def test_known_verdicts_are_not_reprobed() -> None:
    sim = Sim(3)
    res = bisect(lineage(6), sim, known={"mainline:k5": B, "mainline:k0": G}, verify=0)
    assert res.status == FOUND and res.first_bad.label == "k3"
    assert "k5" not in sim.calls and "k0" not in sim.calls


def test_known_verdicts_inside_the_range_narrow_it_before_the_search() -> None:
    """A ranking's guesses probed before the search (k6 good, k7 bad) are the boundary: the
    search only confirms the ends and verifies; nothing between is probed."""
    sim = Sim(7)
    res = bisect(lineage(40), sim, known={"mainline:k6": G, "mainline:k7": B}, verify=1)
    assert res.status == FOUND and (res.last_good.label, res.first_bad.label) == ("k6", "k7")
    assert sim.calls == ["k0", "k39", "k6", "k7"]  # the ends, then the boundary verified once each


def test_a_wrong_known_verdict_is_caught_by_the_boundary_verification() -> None:
    """Contradictory guesses (k12 "good" while the bug is in from k10, k4 "bad"): the range is cut
    at the newest good only; the boundary found from it (k12/k13) is re-run, k12 is bad now, and
    the result says unstable instead of reporting a wrong commit."""
    sim = Sim(10)
    res = bisect(lineage(20), sim, known={"mainline:k12": G, "mainline:k4": B}, verify=1)
    assert (res.last_good.label, res.first_bad.label) == ("k12", "k13")
    assert res.status == UNSTABLE


def test_json_shape() -> None:
    res = bisect(lineage(6), Sim(3), verify=1, lineage="mainline")
    data = res.to_json()
    assert data["status"] == "found" and data["last_good"] == "k2" and data["first_bad"] == "k3"
    assert {"kernel", "verdict", "runs", "seconds", "reason"} <= set(data["probes"][0])
