"""The results database, replay files and the resuming probe (no VMs)."""

from __future__ import annotations

import pytest

from orchestrator.core.engine import Candidate
from orchestrator.adapters.catalog import resolve
from orchestrator.core.errors import KbisectError
from orchestrator.app.prober import ResumingProbe, load_replay
from orchestrator.adapters.store import Store, reproducer_hash
from orchestrator.core.verdict import ProbeRecord, Verdict
from orchestrator.core.differential import canonical


def test_replay_files_yaml_and_json(tmp_path) -> None:
    y = tmp_path / "v.yaml"
    y.write_text('"mainline:5.7-rc5": bad\nv5.6: good\n"mainline:5.4.41": [bad, 0, skip]\n5.5: 125\n')
    data = load_replay(y)
    assert data["mainline:5.7-rc5"] == [Verdict.BAD]
    assert data["v5.6"] == [Verdict.GOOD]
    assert data["mainline:5.4.41"] == [Verdict.BAD, Verdict.GOOD, Verdict.SKIP]
    assert data["5.5"] == [Verdict.SKIP]
    j = tmp_path / "v.json"
    j.write_text('{"mainline:5.7-rc5": "bad"}')
    assert load_replay(j) == {"mainline:5.7-rc5": [Verdict.BAD]}


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "expected an object"),
    ("a: maybe", "verdict must be good, bad or skip"),
    ("a: [", "not YAML or JSON"),
    ("a: []", "empty list"),
])
def test_bad_replay_files_are_one_line_errors(tmp_path, text, message) -> None:
    f = tmp_path / "v.yaml"
    f.write_text(text)
    with pytest.raises(KbisectError, match=message):
        load_replay(f)
    with pytest.raises(KbisectError, match="no such file"):
        load_replay(tmp_path / "missing.yaml")


def test_resuming_probe_order_replay_store_real(kbisect_home) -> None:
    bug = resolve("gretap-ecn")
    store = Store()
    calls: list[str] = []

    def real(spec: str) -> ProbeRecord:
        calls.append(spec)
        return ProbeRecord(spec, bug.id, Verdict.BAD, "dst 18:bd:92:a0:ee:26", {"run": 1.5})

    replay = {"v5.6": [Verdict.GOOD]}  # user-typed keys are canonicalised like candidates
    probe = ResumingProbe(bug, real, store=store, replay=replay, canon=canonical)
    assert probe(Candidate("mainline:5.6")).origin == "replay"
    first = probe(Candidate("mainline:5.7"))
    second = probe(Candidate("mainline:5.7"))  # a boundary re-run is a new probe (seq 1)
    assert (first.origin, second.origin) == ("probe", "probe") and calls == ["mainline:5.7"] * 2
    rows = store.all(bug.id)
    assert [(r[1], r[3], r[4]) for r in rows] == [("mainline:5.7", 0, "bad"), ("mainline:5.7", 1, "bad")]

    # a new run (same store): both stored probes come back in order, the third is real
    again = ResumingProbe(bug, real, store=Store(), canon=canonical)
    outs = [again(Candidate("mainline:5.7")) for _ in range(3)]
    assert [o.origin for o in outs] == ["store", "store", "probe"]
    assert outs[0].record.reason == "dst 18:bd:92:a0:ee:26" and outs[0].seconds == 1.5
    assert len(calls) == 3
    # --fresh: stored verdicts ignored
    fresh = ResumingProbe(bug, real, store=Store(), fresh=True, canon=canonical)
    assert fresh(Candidate("mainline:5.7")).origin == "probe"


def test_reproducer_hash_changes_with_the_reproducer(tmp_path) -> None:
    from orchestrator.core.bug import Bug

    d = tmp_path / "r"
    d.mkdir()
    (d / "run.sh").write_text("exit 0\n")
    h1 = reproducer_hash(Bug(id="r", dir=d))
    (d / "run.sh").write_text("exit 1\n")
    assert reproducer_hash(Bug(id="r", dir=d)) != h1


def test_a_kernel_that_cannot_be_fetched_is_a_skip_not_an_abort(kbisect_home) -> None:
    from orchestrator.core.errors import UnavailableError

    bug = resolve("gretap-ecn")

    def real(spec: str) -> ProbeRecord:
        raise UnavailableError(f"{spec}: Gone")

    store = Store()
    out = ResumingProbe(bug, real, store=store)(Candidate("mainline:6.5.8"))
    assert out.verdict is Verdict.SKIP and "Gone" in out.reason
    assert store.all(bug.id) == []  # not remembered: it may be had next time


def test_two_runs_in_the_same_second_get_their_own_report(tmp_path) -> None:
    from orchestrator.adapters import report

    a, b = report.new_run_id("gretap-ecn", tmp_path), report.new_run_id("gretap-ecn", tmp_path)
    assert a != b and (tmp_path / a).is_dir() and (tmp_path / b).is_dir()
    out = report.write({"bug": "x", "status": "found", "probes": [], "stages": [], "notes": [],
                        "confidence": 1.0}, a, out_dir=tmp_path / a)
    assert (out / "report.html").is_file() and (out / "result.json").is_file()
