"""The free `judge` (one verdict on one kernel, no engine) and the engine's str-valued enums."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.engine import (
    BisectStatus,
    Candidate,
    End,
    Engine,
    Phase,
    Probe,
    RunOutcome,
    bisect,
    judge,
)
from orchestrator.core.verdict import Verdict

G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP
FLAKY = RepeatPolicy(runs=3, bad_needed=2, flaky=True)


class Queue:
    """A probe answering from a list, one run per call, logging the kernels it was asked about."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, cand: Candidate):
        self.calls.append(cand.label)
        return self.answers.pop(0)


def test_judge_folds_runs_by_the_policy_without_an_engine() -> None:
    seen: list[Probe] = []
    probe = Queue(RunOutcome(G, 1.0, "clean", "replay"), RunOutcome(B, 2.0, "dst 18:bd", "replay"),
                  RunOutcome(B, 3.0, "dst 18:bd", "store"))
    out = judge(FLAKY, probe, Candidate("mainline:5.7-rc4"), Phase.SWEEP, on_probe=seen.append)
    assert (out.verdict, out.runs, out.good_runs, out.bad_runs, out.skip_runs) == (B, 3, 1, 2, 0)
    assert (out.kernel, out.label, out.phase) == ("mainline:5.7-rc4", "5.7-rc4", Phase.SWEEP)
    assert out.seconds == pytest.approx(6.0) and out.reason == "2/3 bad runs; clean; dst 18:bd"
    assert out.origins == ["replay", "replay", "store"]
    assert seen == [out] and probe.calls == ["5.7-rc4"] * 3


def test_judge_keeps_no_state_between_calls() -> None:
    # unlike Engine.judge (which reuses verdicts it was given as `known`), every call probes
    probe = Queue(G, G)
    first = judge(RepeatPolicy(), probe, Candidate("mainline:5.4"), "walk")
    again = judge(RepeatPolicy(), probe, Candidate("mainline:5.4"), "walk")
    assert first.verdict is again.verdict is G and probe.calls == ["5.4", "5.4"]
    assert first.phase is Phase.WALK  # a phase given as its old string is recorded as the enum
    with pytest.raises(ValueError):
        judge(RepeatPolicy(), Queue(G), Candidate("mainline:5.4"), "nonsense")


def test_judge_says_skip_when_the_policy_runs_out() -> None:
    probe = Queue(S, G, S, S, B, S)
    out = judge(FLAKY, probe, Candidate("debian:6.1.0-54-cloud-amd64"), Phase.REVERT)
    assert (out.verdict, out.runs, out.skip_runs) == (S, 6, 4)


def test_a_probe_may_answer_with_a_plain_verdict_string() -> None:
    assert judge(RepeatPolicy(), lambda c: "bad", Candidate("mainline:5.7"), Phase.WALK).verdict is B


def test_engine_judge_is_the_free_judge_plus_known_verdicts() -> None:
    cand = Candidate("mainline:5.7")
    engine = Engine([cand], Queue(B, G, B, B), policy=FLAKY, known={"mainline:5.6": G})
    mine = engine.judge(cand, "bisect")
    free = judge(FLAKY, Queue(B, G, B, B), cand, Phase.BISECT)
    assert (mine.verdict, mine.runs, mine.good_runs, mine.bad_runs, mine.reason, mine.phase) == (
        free.verdict, free.runs, free.good_runs, free.bad_runs, free.reason, free.phase)
    assert engine.probes == [mine] and engine.verdicts == {"mainline:5.7": B}
    known = engine.judge(Candidate("mainline:5.6"), Phase.ENDS)
    assert known.verdict is G and known.origins == ["known"] and len(engine.probes) == 1


def test_statuses_phases_and_ends_are_str_valued_enums_with_unchanged_json() -> None:
    assert BisectStatus.FOUND == "found" and f"{BisectStatus.ENDS_DISAGREE}" == "ends-disagree"
    assert f"{Phase.ENDS:<7}|" == "ends   |" and str(Verdict.BAD) == "bad"
    assert {BisectStatus.INCONCLUSIVE: 4}.get("inconclusive") == 4  # old string keys still find them
    cands = [Candidate(f"mainline:k{i}") for i in range(6)]
    res = bisect(cands, lambda c: B if int(c.label[1:]) >= 3 else G, verify=1)
    assert res.status is BisectStatus.FOUND
    data = json.loads(json.dumps(res.to_json()))
    assert data["status"] == "found" and type(res.to_json()["status"]) is str
    assert [p["phase"] for p in data["probes"]][:2] == ["ends", "ends"]
    assert all(type(p.to_json()["phase"]) is str for p in res.probes)
    flat = bisect(cands, lambda c: G, verify=0)
    assert flat.disagreeing_end is End.BAD and flat.to_json()["disagreeing_end"] == "bad"
    assert type(flat.to_json()["disagreeing_end"]) is str


def test_a_run_with_the_bugs_own_trace_decides_whatever_bad_needed_says() -> None:
    """syzbot's rule (issue 11, item 5): a panic with the bug's signature is bad on its own; a
    bad only the exit code judged still needs `bad_needed` of them."""
    from orchestrator.core.verdict import ProbeRecord

    strict = RepeatPolicy(runs=3, bad_needed=3, flaky=True)
    panic = ProbeRecord("mainline:5.7", "b", B, "kernel panic: Kernel panic - not syncing: Fatal exception",
                        signature=r"\bskb_gso_transport_seglen\b")
    probe = Queue(RunOutcome(B, 1.0, panic.reason, record=panic), RunOutcome(G, 1.0, "clean"),
                  RunOutcome(G, 1.0, "clean"))
    out = judge(strict, probe, Candidate("mainline:5.7"), Phase.SWEEP)
    assert out.verdict is B and out.bad_runs == 1 and out.runs == 1
    exit_code_bad = ProbeRecord("mainline:5.7", "b", B, "exit 1")
    probe = Queue(RunOutcome(B, 1.0, "exit 1", record=exit_code_bad), RunOutcome(G, 1.0, "clean"),
                  RunOutcome(G, 1.0, "clean"))
    assert judge(strict, probe, Candidate("mainline:5.7"), Phase.SWEEP).verdict is G
