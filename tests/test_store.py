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


@pytest.mark.parametrize("data,message", [
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (b"a: 2020-13-45\n", "not YAML or JSON"),
    (b"[" * 5000, "not YAML or JSON"),
])
def test_undecodable_replay_files_are_one_line_errors_for_direct_callers(tmp_path, data, message) -> None:
    """The CLI checks --verdicts first; the app function must not leak a decode error either."""
    f = tmp_path / "v.yaml"
    f.write_bytes(data)
    with pytest.raises(KbisectError, match=message):
        load_replay(f)


def same_bytes(spec: str) -> str:
    """A fake kernel provider's content ids: every spec stands for bytes of its own, unchanged."""
    return "id-" + spec


def test_resuming_probe_order_replay_store_real(kbisect_home) -> None:
    bug = resolve("gretap-ecn")
    store = Store()
    calls: list[str] = []

    def real(spec: str) -> ProbeRecord:
        calls.append(spec)
        return ProbeRecord(spec, bug.id, Verdict.BAD, "dst 18:bd:92:a0:ee:26", {"run": 1.5})

    replay = {"v5.6": [Verdict.GOOD]}  # user-typed keys are canonicalised like candidates
    probe = ResumingProbe(bug, real, store=store, replay=replay, canon=canonical, kernel_id=same_bytes)
    assert probe(Candidate("mainline:5.6")).origin == "replay"
    first = probe(Candidate("mainline:5.7"))
    second = probe(Candidate("mainline:5.7"))  # a boundary re-run is a new probe (seq 1)
    assert (first.origin, second.origin) == ("probe", "probe") and calls == ["mainline:5.7"] * 2
    rows = store.all(bug.id)
    assert [(r[1], r[3], r[4]) for r in rows] == [("mainline:5.7", 0, "bad"), ("mainline:5.7", 1, "bad")]

    # a new run (same store): both stored probes come back in order, the third is real
    again = ResumingProbe(bug, real, store=Store(), canon=canonical, kernel_id=same_bytes)
    outs = [again(Candidate("mainline:5.7")) for _ in range(3)]
    assert [o.origin for o in outs] == ["store", "store", "probe"]
    assert outs[0].record.reason == "dst 18:bd:92:a0:ee:26" and outs[0].seconds == 1.5
    assert len(calls) == 3
    # --fresh: stored verdicts ignored
    fresh = ResumingProbe(bug, real, store=Store(), fresh=True, canon=canonical, kernel_id=same_bytes)
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
    out = ResumingProbe(bug, real, store=store, kernel_id=same_bytes)(Candidate("mainline:6.5.8"))
    assert out.verdict is Verdict.SKIP and "Gone" in out.reason
    assert store.all(bug.id) == []  # not remembered: it may be had next time


class Kernels:
    """A fake kernel provider: the content id each spec stands for now (tests rebuild them)."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.asked: list[str] = []

    def kernel_id(self, spec: str) -> str:
        self.asked.append(spec)
        return self.ids.get(spec, "id-" + spec)


def _counting_probe(bug, verdicts: dict[str, Verdict] | None = None):
    """A fake real probe: the verdict set per spec (good by default), and the specs it booted."""
    booted: list[str] = []

    def real(spec: str) -> ProbeRecord:
        booted.append(spec)
        verdict = (verdicts or {}).get(spec, Verdict.GOOD)
        return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})

    return real, booted


def test_a_stored_verdict_is_not_reused_when_the_kernels_bytes_changed(kbisect_home) -> None:
    bug = resolve("gretap-ecn")
    kernels = Kernels()
    real, booted = _counting_probe(bug)
    kernels.ids["local:build"] = "aaa"
    assert ResumingProbe(bug, real, store=Store(), kernel_id=kernels.kernel_id)(Candidate("local:build")).origin == "probe"
    assert ResumingProbe(bug, real, store=Store(), kernel_id=kernels.kernel_id)(Candidate("local:build")).origin == "store"
    kernels.ids["local:build"] = "bbb"  # rebuilt: the same name, other bytes
    out = ResumingProbe(bug, real, store=Store(), kernel_id=kernels.kernel_id)(Candidate("local:build"))
    assert out.origin == "probe" and booted == ["local:build", "local:build"]
    kernels.ids["local:build"] = "aaa"  # the first build back: its verdict is still known
    assert ResumingProbe(bug, real, store=Store(), kernel_id=kernels.kernel_id)(Candidate("local:build")).origin == "store"
    # the same bytes under another name are the same kernel; the record names the spec asked
    kernels.ids["local:copy"] = "aaa"
    copy = ResumingProbe(bug, real, store=Store(), kernel_id=kernels.kernel_id)(Candidate("local:copy"))
    assert copy.origin == "store" and copy.record.kernel == "local:copy" and len(booted) == 2
    # replay stays keyed by the name: the user's word needs no id (and fetches nothing)
    kernels.asked.clear()
    replayed = ResumingProbe(bug, real, store=Store(), kernel_id=kernels.kernel_id,
                             replay={"local:build": [Verdict.BAD]})(Candidate("local:build"))
    assert replayed.origin == "replay" and kernels.asked == []


def test_a_stored_skip_is_reused_only_by_the_run_that_stored_it(kbisect_home) -> None:
    bug = resolve("gretap-ecn")
    real, booted = _counting_probe(bug, {"mainline:6.5.8": Verdict.SKIP})

    def prober(run_key: str | None) -> ResumingProbe:
        return ResumingProbe(bug, real, store=Store(), kernel_id=same_bytes, run_key=run_key)

    assert prober("night-1")(Candidate("mainline:6.5.8")).verdict is Verdict.SKIP and len(booted) == 1
    resumed = prober("night-1")(Candidate("mainline:6.5.8"))
    assert (resumed.origin, resumed.verdict) == ("store", Verdict.SKIP) and len(booted) == 1
    assert prober("night-2")(Candidate("mainline:6.5.8")).origin == "probe" and len(booted) == 2
    assert prober(None)(Candidate("mainline:6.5.8")).origin == "probe"  # no scope: no skip reused
    # good and bad are reused by any later run
    real_good, booted_good = _counting_probe(bug)
    ResumingProbe(bug, real_good, store=Store(), kernel_id=same_bytes, run_key="night-1")(Candidate("mainline:6.6"))
    later = ResumingProbe(bug, real_good, store=Store(), kernel_id=same_bytes, run_key="night-9")
    assert later(Candidate("mainline:6.6")).origin == "store" and booted_good == ["mainline:6.6"]


def test_a_kernel_whose_id_cannot_be_had_is_an_unstored_skip(kbisect_home) -> None:
    from orchestrator.core.errors import UnavailableError

    bug = resolve("gretap-ecn")
    real, booted = _counting_probe(bug)

    def gone(spec: str) -> str:
        raise UnavailableError(f"{spec}: no directory /builds/x")

    store = Store()
    probe = ResumingProbe(bug, real, store=store, kernel_id=gone)
    out = probe(Candidate("local:x"))
    assert out.verdict is Verdict.SKIP and "no directory" in out.reason
    assert booted == [] and store.all() == [] and probe.seq == {"local:x": 0}


def test_bisection_runs_resume_until_one_finishes(kbisect_home) -> None:
    store = Store()
    first = store.open_run("bisect gretap-ecn good=5.6 bad=5.7 distro=-")
    assert store.open_run("bisect gretap-ecn good=5.6 bad=5.7 distro=-") == first  # killed, started again
    assert store.open_run("bisect gretap-ecn good=5.5 bad=5.7 distro=-") != first  # another command
    store.finish_run(first)
    assert store.open_run("bisect gretap-ecn good=5.6 bad=5.7 distro=-") != first  # a later run


def test_a_results_db_from_before_content_ids_is_migrated_and_its_rows_not_reused(kbisect_home) -> None:
    import json
    import sqlite3

    bug = resolve("gretap-ecn")
    old = sqlite3.connect(kbisect_home / "results.db")
    old.executescript("""
        CREATE TABLE probes (bug TEXT NOT NULL, kernel TEXT NOT NULL, repro_hash TEXT NOT NULL,
            seq INTEGER NOT NULL, verdict TEXT NOT NULL, reason TEXT NOT NULL, seconds REAL NOT NULL,
            record TEXT NOT NULL, stored_at REAL NOT NULL, PRIMARY KEY (bug, kernel, repro_hash, seq));
    """)
    record = ProbeRecord("mainline:5.7", bug.id, Verdict.BAD, "old bad", {"run": 1.0})
    for kernel in ("mainline:5.7", "mainline:5.8"):
        old.execute("INSERT INTO probes VALUES (?,?,?,?,?,?,?,?,?)",
                    (bug.id, kernel, reproducer_hash(bug), 0, "bad", "old bad", 1.0, json.dumps(record.to_json()), 1.0))
    old.commit()
    old.close()

    store = Store()
    assert [(r[1], r[4]) for r in store.all(bug.id)] == [("mainline:5.7", "bad"), ("mainline:5.8", "bad")]
    real, booted = _counting_probe(bug)
    out = ResumingProbe(bug, real, store=store, kernel_id=same_bytes)(Candidate("mainline:5.7"))
    assert out.origin == "probe" and out.verdict is Verdict.GOOD and booted == ["mainline:5.7"]
    again = ResumingProbe(bug, real, store=Store(), kernel_id=same_bytes)(Candidate("mainline:5.7"))
    assert again.origin == "store" and again.verdict is Verdict.GOOD
    assert len(store.all(bug.id)) == 3  # the old rows stay, for inspection
    Store().close()  # opening a migrated database again changes nothing


def test_two_runs_in_the_same_second_get_their_own_report(tmp_path) -> None:
    from orchestrator.adapters import report

    a, b = report.new_run_id("gretap-ecn", tmp_path), report.new_run_id("gretap-ecn", tmp_path)
    assert a != b and (tmp_path / a).is_dir() and (tmp_path / b).is_dir()
    out = report.write({"bug": "x", "status": "found", "probes": [], "stages": [], "notes": [],
                        "confidence": 1.0}, a, out_dir=tmp_path / a)
    assert (out / "report.html").is_file() and (out / "result.json").is_file()
