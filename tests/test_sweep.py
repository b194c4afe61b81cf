"""The nightly sweep: flagging tables (pure), sweep history in SQLite, resume, and the CLI with a
fake probe and a fake Debian listing (no VM); at the end, one real sweep over real VMs (`-m vm`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.app.deps import provided
from orchestrator.app.sweep import SweepDeps
from orchestrator.core import sweep
from orchestrator.cli import main as cli_main
from orchestrator.core.errors import KbisectError, SourceUnreachable
from orchestrator.adapters.store import Store, SweepLog
from orchestrator.core.sweep import Cell, build_matrix, flag_cell, latest_decided, replay_history
from orchestrator.core.verdict import ProbeRecord, Verdict

K55, K56, K57 = (f"debian:6.1.0-{n}-cloud-amd64" for n in (55, 56, 57))
DAY = 86400.0
T0 = 1_760_000_000.0  # 2025-10-09, a fixed "first night"


def lk(columns: list[dict]) -> list[tuple[str, str | None]]:
    """(line, kernel) of each matrix.json column (the other fields are tested where they matter)."""
    return [(c["line"], c["kernel"]) for c in columns]


# -- pure: flags ------------------------------------------------------------------------------

def hist(*rows: tuple[int, str, str], bug: str = "b", line: str = "6.1") -> list[Cell]:
    """Earlier cells: (sweep id, kernel, verdict) of one bug on one line."""
    return [Cell(bug, line, kernel, verdict, sweep_id=sid, at=T0 + sid * DAY) for sid, kernel, verdict in rows]


@pytest.mark.parametrize("name,history,now_kernel,now_verdict,flag,earlier", [
    ("regression: the line moved to a bad kernel", [(1, K55, "good")], K56, "bad", "regression", (1, K55, "good")),
    ("fixed", [(1, K55, "bad")], K56, "good", "fixed", (1, K55, "bad")),
    ("unchanged good", [(1, K55, "good")], K56, "good", "unchanged", (1, K55, "good")),
    ("unchanged bad", [(1, K55, "bad")], K55, "bad", "unchanged", (1, K55, "bad")),
    ("a skip is never a regression", [(1, K55, "good")], K56, "skip", "skip", (1, K55, "good")),
    ("new line: nothing earlier", [], K56, "bad", "new", None),
    ("skip with nothing earlier", [], K56, "skip", "skip", None),
    ("earlier skip falls back to the verdict before it", [(1, K55, "good"), (2, K56, "skip")], K57, "bad",
     "regression", (1, K55, "good")),
    ("only skips earlier: new", [(1, K55, "skip"), (2, K56, "skip")], K57, "good", "new", None),
    ("the most recent decided verdict wins", [(1, K55, "bad"), (2, K56, "good")], K57, "bad",
     "regression", (2, K56, "good")),
    ("order of history rows does not matter", [(2, K56, "good"), (1, K55, "bad")], K57, "good",
     "unchanged", (2, K56, "good")),
])
def test_flag_table(name, history, now_kernel, now_verdict, flag, earlier) -> None:
    prev = latest_decided(hist(*history)).get(("b", "6.1"))
    got = flag_cell(Cell("b", "6.1", now_kernel, now_verdict), prev)
    assert got.flag == flag, name
    assert (None if got.earlier is None else (got.earlier.sweep_id, got.earlier.kernel, got.earlier.verdict)) == earlier


def test_regression_note_names_both_kernels_and_sweep() -> None:
    prev = latest_decided(hist((3, K55, "good")))[("b", "6.1")]
    got = flag_cell(Cell("b", "6.1", K56, "bad"), prev)
    assert got.note.startswith("good on 6.1.0-55-cloud-amd64 (sweep 3, ")
    assert got.note.endswith("bad on 6.1.0-56-cloud-amd64")
    same = flag_cell(Cell("b", "6.1", K56, "good"), prev)
    assert same.flag == "unchanged" and same.note.startswith("good also on 6.1.0-55-cloud-amd64 (sweep 3, ")
    skip = flag_cell(Cell("b", "6.1", K56, "skip", "boot failure: no SSH"), prev)
    assert skip.note.startswith("skip; last verdict good on 6.1.0-55-cloud-amd64")


def test_same_kernel_flip_says_why_it_may_have_flipped() -> None:
    prev = latest_decided([Cell("b", "6.1", K55, "good", repro_hash="aaa", sweep_id=1)])[("b", "6.1")]
    changed = flag_cell(Cell("b", "6.1", K55, "bad", repro_hash="bbb"), prev)
    same = flag_cell(Cell("b", "6.1", K55, "bad", repro_hash="aaa"), prev)
    assert changed.flag == same.flag == "regression"
    assert "reproducer changed" in changed.note and "flaky" in same.note


def test_other_bugs_lines_and_later_sweeps_are_not_compared() -> None:
    history = (hist((1, K55, "good"), bug="other") + hist((1, "debian:6.12.1+deb13-cloud-amd64", "good"), line="6.12")
               + hist((5, K56, "good")))
    cells = [Cell("b", "6.1", K57, "bad", sweep_id=4)]
    m = build_matrix(cells, history, {"6.1": K57})
    assert m.cell("b", "6.1").flag == "new"  # sweep 5 is later than this sweep (4), others differ


def test_matrix_rows_columns_counts_and_json() -> None:
    history = hist((1, K55, "good")) + hist((1, K55, "bad"), bug="c")
    cells = [Cell("b", "6.1", K56, "bad", "inner dst 18:bd (bad)", sweep_id=2),
             Cell("c", "6.1", K56, "good", sweep_id=2),
             Cell("b", "5.10", "", "skip", "no reachable Debian 5.10 kernel", sweep_id=2),
             Cell("c", "5.10", "", "skip", sweep_id=2)]
    m = build_matrix(cells, history, {"5.10": None, "6.1": K56}, ["b", "c"], ["5.10", "6.1"])
    assert m.counts() == {"regression": 1, "fixed": 1, "new": 0, "unchanged": 0, "skip": 2}
    data = m.to_json()
    assert lk(data["columns"]) == [("5.10", None), ("6.1", K56)]
    assert all(c["source"] == "debian" and c["note"] is None and c["moved"] is None for c in data["columns"])
    assert [(c["bug"], c["line"]) for c in data["cells"]] == [("b", "5.10"), ("b", "6.1"), ("c", "5.10"), ("c", "6.1")]
    assert data["regressions"] == [{"bug": "b", "line": "6.1", "note": m.cell("b", "6.1").note}]
    assert data["cells"][1]["earlier"]["kernel"] == K55 and data["cells"][1]["flag"] == "regression"


def test_replay_history_counts_each_sweep_against_the_ones_before() -> None:
    cells = (hist((1, K55, "good")) + hist((2, K56, "skip")) + hist((3, K57, "bad"))
             + hist((4, K57, "bad")) + hist((5, K57, "good")))
    counts = replay_history(cells)
    assert [counts[i]["regression"] for i in range(1, 6)] == [0, 0, 1, 0, 0]
    assert (counts[1]["new"], counts[2]["skip"], counts[4]["unchanged"], counts[5]["fixed"]) == (1, 1, 1, 1)


# -- pure: the plan ---------------------------------------------------------------------------

def test_columns_lines_pins_and_extra_kernels() -> None:
    picked = {"6.1": K57, "6.12": "debian:6.12.118+deb13-cloud-amd64"}
    assert sweep.requested_lines([], []) == ["5.10", "6.1", "6.12", "newest"]
    assert sweep.requested_lines([], [K55]) == []
    assert sweep.requested_lines(["6.1", "NEWEST", "6.1"], []) == ["6.1", "newest"]
    cols = sweep.resolve_columns(["6.1", "6.12"], [K55, f"{K55}+revert-227adfb2b1df", "5.4.41"], picked)
    assert cols == {"6.1": K55, "6.12": picked["6.12"], "6.1+revert-227adfb2b1df": f"{K55}+revert-227adfb2b1df",
                    "mainline:5.4": "mainline:5.4.41"}
    assert sweep.sort_columns({**cols, "newest": None, "5.10": None}) == [
        "5.10", "6.1", "6.12", "newest", "6.1+revert-227adfb2b1df", "mainline:5.4"]
    with pytest.raises(KbisectError, match="both on line 6.1"):
        sweep.resolve_columns([], [K55, K56], picked)
    with pytest.raises(KbisectError, match="--line 'six'"):
        sweep.requested_lines(["six"], [])
    with pytest.raises(KbisectError, match="not a debian kernel version"):
        sweep.column_of("debian:garbage")
    assert sweep.sweep_key(["a", "b"], ["6.1"], []) == sweep.sweep_key(["b", "a"], ["6.1"], [])
    assert sweep.sweep_key(["a"], ["6.1"], []) != sweep.sweep_key(["a"], ["6.12"], [])


# -- storage ----------------------------------------------------------------------------------

def test_sweep_log_round_trip_resume_and_fresh(kbisect_home) -> None:
    log = SweepLog(Store())
    plan = {"bugs": ["b"], "columns": {"6.1": K55, "6.12": None}}
    sid, resumed, started = log.open("key1", plan, now=T0)
    assert not resumed and started == T0
    log.put_cell(sid, Cell("b", "6.1", K55, "good", "ok", 5.8, "probe", 1, "h1"))
    assert log.open("key1", plan, now=T0 + 3600) == (sid, True, T0)  # same command, same day
    log.put_cell(sid, Cell("b", "6.1", K55, "bad", "again", 0.0, "store", 1, "h1"))  # a cell re-decided
    log.put_cell(sid, Cell("b", "6.12", "", "skip", "no kernel", 0.0, "none", 0, "h1"))
    log.finish(sid, "/r/matrix.html", now=T0 + 7200)
    # a new connection sees everything (each put committed at once)
    again = SweepLog(Store())
    cells = again.cells(sid)
    assert [(c.line, c.verdict, c.reason, c.source, c.sweep_id, c.at) for c in cells] == [
        ("6.1", "bad", "again", "store", sid, T0), ("6.12", "skip", "no kernel", "none", sid, T0)]
    rows = again.sweeps()
    assert len(rows) == 1 and rows[0]["cells"] == rows[0]["planned"] == 2
    assert rows[0]["finished_at"] == T0 + 7200 and rows[0]["report"] == "/r/matrix.html"
    assert again.open("key1", plan, now=T0 + DAY)[0] != sid  # next day: a new sweep
    fresh_id, resumed, _ = again.open("key1", plan, fresh=True, now=T0 + DAY)
    assert not resumed and fresh_id != sid
    assert [c.sweep_id for c in again.cells(before=fresh_id)] == [sid, sid]
    # --fresh resumes only an unfinished fresh sweep of the same day
    assert again.open("key1", plan, fresh=True, now=T0 + DAY + 60)[:2] == (fresh_id, True)
    again.finish(fresh_id)
    assert again.open("key1", plan, fresh=True, now=T0 + DAY + 120)[:2] == (fresh_id + 1, False)


# -- the CLI with a fake probe and a fake Debian listing ---------------------------------------

def _entry(version: str, upstream: str) -> dict:
    return {"source": "debian", "version": version, "spec": f"debian:{version}", "upstream": upstream,
            "flavour": "cloud-amd64", "package_version": f"{upstream}-1", "available": True}


class World:
    """What the CLI sees: a Debian listing, a clock, and a probe whose answers the test sets.

    The clock is fixed (T0, a morning in 2025): "the same UTC day" is the same because the test
    says so, never because real time has not crossed midnight yet. It moves only when a test
    moves it: `next_night()` a whole day on, `catch_up()` to real time. The results database
    stamps stored probes with real time, and a --fresh sweep counts only probes stored since it
    started, so a test that starts a fresh sweep after earlier boots catches up first (a sweep
    that begins after those boots, as in real life)."""

    def __init__(self, monkeypatch, tmp_path) -> None:
        self.listing = [_entry("5.10.0-46-cloud-amd64", "5.10.244"), _entry("6.1.0-55-cloud-amd64", "6.1.150")]
        self.verdicts: dict[tuple[str, str], Verdict | Exception] = {}
        self.boots: list[tuple[str, str]] = []
        self.now = T0
        self.results = tmp_path / "results"
        monkeypatch.setenv("KBISECT_RESULTS", str(self.results))

        def real_probe(bug):
            def probe(spec: str) -> ProbeRecord:
                answer = self.verdicts.get((bug.id, spec), Verdict.GOOD)
                if isinstance(answer, BaseException):
                    raise answer
                self.boots.append((bug.id, spec))
                return ProbeRecord(spec, bug.id, answer, f"fake {answer.value} on {spec}", {"boot": 4.0, "run": 1.5})
            return probe

        # the kernel provider's content ids: each spec its own bytes unless a test rebuilds one
        self.ids: dict[str, str] = {}
        # the sweep's collaborators, handed to the command run through main() (app.deps)
        self.deps = SweepDeps(real_probe=real_probe, clock=lambda: self.now,
                              debian_entries=lambda: list(self.listing),
                              kernel_id=lambda spec: self.ids.get(spec, "id-" + spec))

    def next_night(self) -> None:
        self.now += DAY

    def catch_up(self) -> None:
        """Move the clock to real time: later than every probe stored so far."""
        self.now = max(self.now, time.time())

    def run(self, args: list[str], capsys) -> tuple[int, str, str]:
        """`kbisect sweep ARGS`; one VM at a time unless the test says --jobs (the default
        depends on the machine's cores, and the kill tests count what one worker decided)."""
        code = 0
        if "--jobs" not in args and "--plan" not in args and "history" not in args:
            args = [*args, "--jobs", "1"]
        try:
            with provided(self.deps):
                cli_main(["sweep", *args])
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err


ARGS = ["--bug", "gretap-ecn", "--bug", "veth-csum", "--line", "6.1", "--line", "5.10", "--json"]


@pytest.fixture()
def world(kbisect_home, monkeypatch, tmp_path) -> World:
    return World(monkeypatch, tmp_path)


def test_cli_first_second_and_next_night(world, capsys) -> None:
    code, out, err = world.run(ARGS, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert lk(data["columns"]) == [("5.10", "debian:5.10.0-46-cloud-amd64"), ("6.1", K55)]
    assert data["counts"]["new"] == 4 and data["probes"] == {"probe": 4, "store": 0}
    assert len(world.boots) == 4
    assert "[1/4] gretap-ecn on 5.10: good (probe" in err and "[4/4]" in err and "4 VM boot(s) (4 alone)" in err
    html = Path(data["report"]).read_text()
    assert Path(data["json"]).name == "matrix.json" and Path(data["report"]).parent.parent == world.results
    first_id = data["sweep"]["id"]
    # the sweep's day, and its directory, come from the injected clock, not from real time
    assert data["sweep"]["day"] == "2025-10-09" and data["sweep"]["started_at"] == T0
    assert Path(data["report"]).parent.name == f"sweep-20251009-{first_id}"

    # the same command again the same day: the same sweep, every cell from the store, no boot
    code, out, err = world.run(ARGS, capsys)
    data = json.loads(out)
    assert code == 0 and data["sweep"] == {**data["sweep"], "id": first_id, "resumed": True}
    assert data["probes"] == {"probe": 0, "store": 4} and len(world.boots) == 4
    assert all(c["source"] == "store" and c["flag"] == "new" for c in data["cells"])

    # next night Debian has 6.1.0-56 and gretap-ecn is bad there: a regression, exit 1
    world.next_night()
    world.listing.append(_entry("6.1.0-56-cloud-amd64", "6.1.153"))
    world.verdicts[("gretap-ecn", K56)] = Verdict.BAD
    code, out, err = world.run(ARGS, capsys)
    data = json.loads(out)
    assert code == 1, err
    assert data["sweep"]["id"] != first_id and not data["sweep"]["resumed"]
    assert data["sweep"]["day"] == "2025-10-10"
    assert world.boots[4:] == [("gretap-ecn", K56), ("veth-csum", K56)]  # 5.10 did not move: stored
    assert data["counts"] == {"regression": 1, "fixed": 0, "new": 0, "unchanged": 3, "skip": 0}
    assert data["regressions"][0]["bug"] == "gretap-ecn" and data["regressions"][0]["line"] == "6.1"
    note = data["regressions"][0]["note"]
    assert "good on 6.1.0-55-cloud-amd64" in note and "bad on 6.1.0-56-cloud-amd64" in note
    html = Path(data["report"]).read_text()
    assert "<th>6.1<br><code>debian:6.1.0-56-cloud-amd64</code></th>" in html
    assert re.search(r'<td class="bad regression"[^>]*>\s*<span class="verdict">bad</span>', html)
    assert html.count('<td class="good unchanged"') == 3
    assert "fake bad on debian:6.1.0-56-cloud-amd64" in html  # each cell's reason line
    assert "Regressions (1)" in html

    # without --json: the regression and the matrix path on stdout
    code, out, _ = world.run(ARGS[:-1] + ["--quiet"], capsys)
    assert code == 1 and "REGRESSION gretap-ecn on 6.1: good on 6.1.0-55" in out
    assert re.search(r"^matrix: .*/matrix\.html$", out, re.M)

    code, out, _ = world.run(["history", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["counts"]["regression"] for r in rows] == [0, 1]
    assert all(r["finished_at"] and r["cells"] == 4 for r in rows)
    code, out, _ = world.run(["history"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 3 and "finished" in out


def test_a_skip_keeps_the_earlier_verdict_and_is_not_a_regression(world, capsys) -> None:
    args = ["--bug", "gretap-ecn", "--line", "6.1", "--json", "--quiet"]
    assert world.run(args, capsys)[0] == 0
    world.next_night()
    world.listing.append(_entry("6.1.0-56-cloud-amd64", "6.1.153"))
    world.verdicts[("gretap-ecn", K56)] = Verdict.SKIP
    code, out, _ = world.run(args, capsys)
    cell = json.loads(out)["cells"][0]
    assert code == 3 and cell["flag"] == "skip" and cell["earlier"]["kernel"] == K55  # its only cell: undecided
    # the night after, bad on 57: compared with the good on 55, not with the skip on 56
    world.next_night()
    world.listing.append(_entry("6.1.0-57-cloud-amd64", "6.1.158"))
    world.verdicts[("gretap-ecn", K57)] = Verdict.BAD
    code, out, _ = world.run(args, capsys)
    cell = json.loads(out)["cells"][0]
    assert code == 1 and cell["flag"] == "regression" and cell["earlier"]["kernel"] == K55


def test_a_skip_is_reused_by_its_own_sweep_and_probed_again_by_the_next(world, capsys) -> None:
    """One bad night must not pin a cell to skip: the next sweep boots the kernel again, while
    re-running the same sweep the same day keeps what it paid for."""
    args = ["--bug", "gretap-ecn", "--line", "6.1", "--json", "--quiet"]
    world.verdicts[("gretap-ecn", K55)] = Verdict.SKIP  # the host could not boot a VM that night
    code, out, _ = world.run(args, capsys)
    first = json.loads(out)
    assert code == 3 and first["cells"][0]["verdict"] == "skip" and len(world.boots) == 1
    code, out, _ = world.run(args, capsys)  # resumed the same day: the skip comes back stored
    resumed = json.loads(out)
    assert resumed["sweep"]["id"] == first["sweep"]["id"] and resumed["probes"] == {"probe": 0, "store": 1}
    assert len(world.boots) == 1
    world.next_night()  # the same kernel, the host fixed
    world.verdicts[("gretap-ecn", K55)] = Verdict.BAD
    code, out, _ = world.run(args, capsys)
    data = json.loads(out)
    assert data["sweep"]["id"] != first["sweep"]["id"] and data["probes"] == {"probe": 1, "store": 0}
    assert world.boots == [("gretap-ecn", K55)] * 2
    assert code == 0 and data["cells"][0]["verdict"] == "bad" and data["cells"][0]["flag"] == "new"


def test_a_kernel_whose_bytes_changed_is_probed_again(world, capsys) -> None:
    args = ["--bug", "gretap-ecn", "--line", "6.1", "--json", "--quiet"]
    assert world.run(args, capsys)[0] == 0 and len(world.boots) == 1
    world.next_night()
    assert json.loads(world.run(args, capsys)[1])["probes"] == {"probe": 0, "store": 1}
    world.next_night()
    world.ids[K55] = "re-uploaded"  # the same name, other bytes
    data = json.loads(world.run(args, capsys)[1])
    assert data["probes"] == {"probe": 1, "store": 0} and len(world.boots) == 2


class SharedWorld:
    """A fake guest per kernel behind core.sharing (the real batch logic): `shared_says` is what
    a bug says in the shared guest, `world.verdicts` what it says alone."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.shared_says: dict[tuple[str, str], Verdict] = {}
        self.groups: list[tuple[str, list[str], str]] = []  # (kernel, bugs, thread name)
        world.deps.batch_probe = self.batcher

    def batcher(self, share, echo):
        import threading

        from orchestrator.core.sharing import SharedRun, probe_batch

        def batch(spec, bugs, stopped, on_final):
            def shared(group):
                self.groups.append((spec, [b.id for b in group], threading.current_thread().name))
                self.world.boots.append(("shared", spec))
                return [SharedRun(ProbeRecord(spec, b.id, self.shared_says.get((b.id, spec), Verdict.GOOD),
                                              f"shared on {spec}", {"run": 1.0},
                                              artefacts=[f"/r/{b.id}/console.log", f"/r/{b.id}/dmesg.txt"]))
                        for b in group]

            def alone(b):
                return self.world.deps.real_probe(b)(spec)

            return probe_batch(bugs, shared, alone, share=share, stopped=stopped, on_final=on_final)

        return batch


def test_one_vm_per_kernel_rechecks_a_shared_bad_alone(world, capsys) -> None:
    """Two kernels, two reproducers: two shared boots; gretap-ecn said bad in the shared guest on
    6.1 but good alone, so the cell is good (cross-talk never makes a regression) and says so;
    the JSON counts every boot by kind and each cell names its probe's files."""
    shared = SharedWorld(world)
    shared.shared_says[("gretap-ecn", K55)] = Verdict.BAD
    code, out, err = world.run(ARGS, capsys)
    assert code == 0, err
    data = json.loads(out)
    assert [(k, g) for k, g, _t in shared.groups] == [
        ("debian:5.10.0-46-cloud-amd64", ["gretap-ecn", "veth-csum"]), (K55, ["gretap-ecn", "veth-csum"])]
    assert world.boots == [("shared", "debian:5.10.0-46-cloud-amd64"), ("shared", K55), ("gretap-ecn", K55)]
    assert data["boots"] == 3 and data["boots_by_kind"] == {"shared": 2, "isolated": 0, "alone": 0,
                                                            "rechecked": 1, "repeat": 0}
    assert data["probes"] == {"probe": 4, "store": 0}
    cells = {(c["bug"], c["line"]): c for c in data["cells"]}
    rechecked = cells[("gretap-ecn", "6.1")]
    assert (rechecked["verdict"], rechecked["vm"]) == ("good", "rechecked")
    assert rechecked["vm_note"] == f"re-checked alone; in the shared VM: bad (shared on {K55})"
    plain = cells[("veth-csum", "5.10")]
    assert (plain["vm"], plain["console"], plain["log"], plain["artefacts"]) == (
        "shared", "/r/veth-csum/console.log", "/r/veth-csum/output.txt", ["/r/veth-csum/dmesg.txt"])
    assert "2 shared, 1 rechecked" in err
    # the detail survives the store: the same command again reads every cell back with it
    code, out, _ = world.run(ARGS, capsys)
    again = {(c["bug"], c["line"]): c for c in json.loads(out)["cells"]}
    assert again[("gretap-ecn", "6.1")]["vm"] == "rechecked" and data["probes"]["probe"] == 4


def test_jobs_two_runs_kernels_in_worker_threads_and_stores_from_the_main_one(world, capsys) -> None:
    shared = SharedWorld(world)
    code, out, err = world.run(ARGS + ["--jobs", "2"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert sorted(k for k, _g, _t in shared.groups) == ["debian:5.10.0-46-cloud-amd64", K55]
    assert all(t.startswith("kbisect-vm") for _k, _g, t in shared.groups)
    assert data["sweep"]["jobs"] == 2 and data["boots"] == 2 and data["counts"]["new"] == 4
    assert len(SweepLog(Store()).cells()) == 4  # every cell stored (SQLite from the main thread only)


def test_vm_per_cell_is_the_old_design(world, capsys) -> None:
    shared = SharedWorld(world)
    code, out, _ = world.run(ARGS + ["--vm-per-cell"], capsys)
    data = json.loads(out)
    assert code == 0 and shared.groups == [] and data["boots_by_kind"]["alone"] == 4 and not data["sweep"]["shared_vm"]


def test_a_killed_sweep_resumes_where_it_stopped(world, capsys) -> None:
    world.verdicts[("veth-csum", "debian:5.10.0-46-cloud-amd64")] = KeyboardInterrupt()
    code, _, err = world.run(ARGS, capsys)
    assert code == 130 and "kbisect: aborted" in err
    log = SweepLog(Store())
    (row,) = log.sweeps()
    # cells are decided kernel by kernel: gretap-ecn on 5.10 was decided (and stored) before the kill
    assert row["finished_at"] is None and row["cells"] == 1 and row["planned"] == 4
    assert not list(world.results.glob("*/matrix.json"))
    del world.verdicts[("veth-csum", "debian:5.10.0-46-cloud-amd64")]
    code, out, _ = world.run(ARGS, capsys)
    data = json.loads(out)
    assert code == 0 and data["sweep"]["id"] == row["id"] and data["sweep"]["resumed"]
    assert data["probes"] == {"probe": 3, "store": 1} and len(world.boots) == 4
    assert SweepLog(Store()).sweeps()[0]["finished_at"] is not None


def test_fresh_boots_everything_and_a_killed_fresh_sweep_keeps_its_boots(world, capsys) -> None:
    assert world.run(ARGS, capsys)[0] == 0 and len(world.boots) == 4
    world.verdicts[("veth-csum", "debian:5.10.0-46-cloud-amd64")] = KeyboardInterrupt()
    world.catch_up()  # the fresh sweep starts after those four boots were stored
    code, _, _ = world.run(ARGS + ["--fresh"], capsys)
    assert code == 130 and len(world.boots) == 5  # one fresh boot before the kill
    del world.verdicts[("veth-csum", "debian:5.10.0-46-cloud-amd64")]
    code, out, _ = world.run(ARGS + ["--fresh"], capsys)
    data = json.loads(out)
    assert code == 0 and data["sweep"]["resumed"] and data["sweep"]["fresh"]
    # the cell booted afresh before the kill comes back stored; the other three boot again
    assert data["probes"] == {"probe": 3, "store": 1} and len(world.boots) == 8
    assert sorted(world.boots[4:]) == sorted(world.boots[:4])
    world.catch_up()
    code, out, _ = world.run(ARGS + ["--fresh"], capsys)  # finished: a new fresh sweep boots all
    again = json.loads(out)
    assert again["sweep"]["id"] == data["sweep"]["id"] + 1 and again["probes"]["probe"] == 4
    assert all(c["flag"] == "unchanged" for c in again["cells"])


def test_errors_and_missing_lines_are_skips_and_shared_kernels_boot_once(world, capsys) -> None:
    world.listing = [_entry("6.12.118+deb13-cloud-amd64", "6.12.118")]  # newest = 6.12's kernel
    world.verdicts[("gretap-ecn", "debian:6.12.118+deb13-cloud-amd64")] = SourceUnreachable("apt-get download failed")
    args = ["--bug", "gretap-ecn", "--bug", "veth-csum", "--line", "6.1", "--line", "6.12", "--line", "newest", "--json"]
    code, out, _ = world.run(args, capsys)
    data = json.loads(out)
    assert code == 0
    cells = {(c["bug"], c["line"]): c for c in data["cells"]}
    assert cells[("gretap-ecn", "6.1")]["reason"] == "no reachable Debian 6.1 kernel"
    assert cells[("gretap-ecn", "6.12")]["source"] == "error" and "apt-get download failed" in cells[("gretap-ecn", "6.12")]["reason"]
    assert cells[("veth-csum", "newest")]["verdict"] == "good"
    assert world.boots == [("veth-csum", "debian:6.12.118+deb13-cloud-amd64")]  # 6.12 and newest: one boot
    assert data["counts"]["skip"] == 4 and data["counts"]["new"] == 2


def test_a_night_where_nothing_was_decided_is_not_quiet(world, capsys) -> None:
    """Every cell a skip (here: every kernel unfetchable) is exit 3 with a line saying so, not 0."""
    for spec in ("debian:5.10.0-46-cloud-amd64", K55):
        for bug in ("gretap-ecn", "veth-csum"):
            world.verdicts[(bug, spec)] = SourceUnreachable("apt-get download failed")
    code, out, err = world.run(ARGS, capsys)
    assert code == 3 and "no cell was decided" in err
    assert json.loads(out)["counts"]["skip"] == 4 and not world.boots
    world.verdicts.clear()  # one decided cell is enough for an ordinary exit
    world.verdicts[("gretap-ecn", K55)] = SourceUnreachable("apt-get download failed")
    assert world.run(ARGS, capsys)[0] == 0


def test_pinned_and_variant_columns_end_to_end(world, capsys) -> None:
    """`--kernel` pins a line to a kernel other than the newest listed, and a patched variant
    gets a column of its own: each column boots its own kernel, names it in its header and is
    flagged against its own history; with pins only, Debian is not even listed."""
    world.listing.append(_entry("6.1.0-56-cloud-amd64", "6.1.153"))  # the newest 6.1: not the pinned one
    variant = f"{K55}+revert-227adfb2b1df"
    world.verdicts[("gretap-ecn", variant)] = Verdict.BAD  # the positive control shows the bug
    args = ["--bug", "gretap-ecn", "--line", "5.10", "--line", "6.1", "--kernel", K55, "--kernel", variant, "--json"]
    code, out, err = world.run(args, capsys)
    data = json.loads(out)
    assert code == 0, err  # a first bad verdict is new, not a regression
    k510 = "debian:5.10.0-46-cloud-amd64"
    assert lk(data["columns"]) == [("5.10", k510), ("6.1", K55), ("6.1+revert-227adfb2b1df", variant)]
    cells = {c["line"]: c for c in data["cells"]}
    assert [(line, c["kernel"], c["verdict"], c["flag"]) for line, c in sorted(cells.items())] == [
        ("5.10", k510, "good", "new"), ("6.1", K55, "good", "new"), ("6.1+revert-227adfb2b1df", variant, "bad", "new")]
    assert sorted(world.boots) == sorted([("gretap-ecn", k510), ("gretap-ecn", K55), ("gretap-ecn", variant)])
    assert f"fake bad on {variant}" == cells["6.1+revert-227adfb2b1df"]["reason"]
    html = Path(data["report"]).read_text()
    assert f"<th>6.1<br><code>{K55}</code></th>" in html and K56 not in html
    assert f"<th>6.1+revert-227adfb2b1df<br><code>{variant}</code></th>" in html
    assert re.search(r'<td class="bad new"[^>]*>\s*<span class="verdict">bad</span>', html)

    # the next night, the same pins: every cell from the store, each compared with its own column
    world.next_night()
    code, out, _ = world.run(args, capsys)
    data = json.loads(out)
    assert code == 0 and data["probes"] == {"probe": 0, "store": 3} and len(world.boots) == 3
    assert {(c["line"], c["flag"]) for c in data["cells"]} == {
        ("5.10", "unchanged"), ("6.1", "unchanged"), ("6.1+revert-227adfb2b1df", "unchanged")}

    # pins only: no line is listed, so Debian's listing is never asked
    def no_listing():
        raise AssertionError("listed Debian kernels for pinned kernels only")

    world.deps.debian_entries = no_listing
    code, out, err = world.run(["--bug", "gretap-ecn", "--kernel", variant, "--json"], capsys)
    data = json.loads(out)
    assert code == 0, err
    assert lk(data["columns"]) == [("6.1+revert-227adfb2b1df", variant)]
    assert data["cells"][0]["verdict"] == "bad" and data["cells"][0]["source"] == "store"


@pytest.mark.parametrize("args,message", [
    (["--line", "six"], "--line 'six': expected a kernel line"),
    (["--bug", "no-such-bug"], "unknown bug 'no-such-bug'"),
    (["--kernel", "debian:garbage"], "not a debian kernel version"),
    (["--kernel", K55, "--kernel", K56], "both on line 6.1"),
    (["--json", "history"], "takes its own options after its name"),
])
def test_bad_input_is_one_line_exit_2_before_any_listing(world, capsys, args, message) -> None:
    def no_listing():
        raise AssertionError("listed Debian kernels before checking the input")

    world.deps.debian_entries = no_listing
    code, out, err = world.run(args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kbisect: error: ") and message in err
    assert world.boots == []


# -- one real sweep (slow tier) ---------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
REAL_BUGS = ("gretap-ecn", "veth-csum")  # both fixed on every reachable Debian line (reproducers/PROOF.md)


def _kbisect(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=3000)
    return proc, time.monotonic() - t0


def _sweep_in_process(args: list[str], deps: SweepDeps, capsys) -> tuple[subprocess.CompletedProcess, float]:
    """`kbisect sweep ARGS` through main() with the real probe and listing but `deps`' clock."""
    t0 = time.monotonic()
    code = 0
    try:
        with provided(deps):
            cli_main(["sweep", *args])
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["kbisect", "sweep", *args], code, out, err), time.monotonic() - t0


@pytest.mark.vm
@pytest.mark.timeout(3600)
def test_real_sweep_two_reproducers_on_the_newest_6_1(vm_host, shared_home, tmp_path, capsys) -> None:
    """Two reproducers x the newest Debian 6.1 kernel through the CLI: both cells from real boots
    (--fresh), the matrix written with the kernel in the column header, then the same command
    again resumes the same sweep with every cell from the store and boots nothing.

    Real boots and the real listing, but a clock fixed at the test's start: the second command
    is "the same day" even when the first one ends after midnight UTC."""
    from orchestrator.app import lines

    env = dict(os.environ, KBISECT_HOME=str(shared_home))  # KBISECT_RESULTS: the test's (conftest)
    from orchestrator.core.lines import pick_line_kernels

    kernel = pick_line_kernels(lines.debian_entries(), ["6.1"])["6.1"]
    assert kernel and kernel.startswith("debian:6.1."), kernel
    args = ["--line", "6.1", "--json"] + [a for b in REAL_BUGS for a in ("--bug", b)]
    started = time.time()  # later than anything stored before: --fresh boots both cells
    deps = SweepDeps(clock=lambda: started)

    proc, first_s = _sweep_in_process(args + ["--fresh"], deps, capsys)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    with capsys.disabled():  # the figure, outside what the next command's output is read from
        print(f"real sweep: {first_s:.1f}s, {data['probes']}")
    assert lk(data["columns"]) == [("6.1", kernel)]
    assert data["probes"] == {"probe": 2, "store": 0}, data["probes"]
    cells = {c["bug"]: c for c in data["cells"]}
    assert sorted(cells) == sorted(REAL_BUGS)
    for bug, c in cells.items():
        assert (c["kernel"], c["source"], c["runs"]) == (kernel, "probe", 1), c
        assert c["seconds"] > 0 and c["verdict"] == "good", c  # the fix is in every reachable 6.1
        assert c["flag"] in ("new", "unchanged") and c["reason"] and "(good)" in c["reason"], c
    assert data["counts"]["regression"] == 0
    html = Path(data["report"]).read_text()
    assert f"<th>6.1<br><code>{kernel}</code></th>" in html
    assert all(f'<th class="bug">{b}</th>' in html for b in REAL_BUGS) and html.count('<td class="good ') == 2
    assert json.loads(Path(data["json"]).read_text())["cells"] == data["cells"]

    again, second_s = _sweep_in_process(args, deps, capsys)
    assert again.returncode == 0, again.stderr[-4000:]
    data2 = json.loads(again.stdout)
    with capsys.disabled():  # the figure, outside what the next command's output is read from
        print(f"second run: {second_s:.1f}s, {data2['probes']}")
    assert data2["sweep"]["id"] == data["sweep"]["id"] and data2["sweep"]["resumed"]
    assert data2["probes"] == {"probe": 0, "store": 2}
    assert [(c["verdict"], c["source"]) for c in data2["cells"]] == [("good", "store")] * 2

    hist, _ = _kbisect(["sweep", "history", "--json"], env)
    mine = [s for s in json.loads(hist.stdout) if s["id"] == data["sweep"]["id"]]
    assert len(mine) == 1 and mine[0]["finished_at"] and mine[0]["cells"] == 2
    assert mine[0]["counts"]["regression"] == 0
