"""Sweep lines from every source (issue 12): mainline LTS lines from a generated mirror in the
real formats on 127.0.0.1, Ubuntu's swept series from the fake Launchpad, Debian as before, two
sources at once, `--plan`, and what moved and each cell's history across nights. No VM: the
probe is the fake of tests/test_sweep.py's World; the listings are the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.adapters.store import Store, SweepLog
from orchestrator.core import lts, sweep
from orchestrator.core.lines import mainline_of_line, pick_newest_build
from orchestrator.core.sweep import Cell, cell_histories, moved_since, plan_lines
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import DISTRO_SERIES, UBUNTU_SERIES
from tests.bisect_mirror import build_mirror, serve
from tests.fake_launchpad import FakeLaunchpad, Upload
from tests.test_sweep import DAY, T0, World

# A mainline mirror: every LTS line with a few stable builds, 6.1's newest build failed, and
# releases up to 6.19 with a 7.0 release candidate (an rc is no release).
MIRROR_VERSIONS = ["4.19", "4.19.324", "4.19.325", "5.4", "5.4.289", "5.4.290", "5.10", "5.10.233",
                   "5.15", "5.15.175", "5.15.176", "6.1", "6.1.118", "6.1.119", "6.1.120", "6.6", "6.6.69",
                   "6.6.70", "6.12", "6.12.9", "6.12.10", "6.17", "6.17.3", "6.18", "6.18.1", "6.18.2", "6.19",
                   "7.0-rc1"]
FAILED = {"6.1.120"}
BUG = "gretap-ecn"


def newest_good(line: str, versions: list[str] = MIRROR_VERSIONS, failed: set[str] = FAILED) -> str:
    """What the column of `line` must hold: the newest non-rc version of the line that built."""
    from orchestrator.core.versions import parse_version

    mine = [parse_version(v) for v in versions if v not in failed and "rc" not in v
            and (v.count(".") == 1 if line == "newest" else ".".join(v.split(".")[:2]) == line)]
    return f"mainline:{max(mine)}"


@pytest.fixture()
def world(kbisect_home, monkeypatch, tmp_path) -> World:
    # the sweep command sets these for its run only; a test's environment never carries them in
    for name in ("KBISECT_MAINLINE_MIRROR", "KBISECT_UBUNTU_MIRROR", "KBISECT_ALLOW_UNVERIFIED",
                 "KBISECT_MAINLINE_KEYRING"):
        monkeypatch.delenv(name, raising=False)
    w = World(monkeypatch, tmp_path)

    def no_debian():
        raise AssertionError("listed Debian kernels for a sweep without the Debian source")

    w.deps.debian_entries = no_debian
    return w


@pytest.fixture()
def mirror(tmp_path):
    root = build_mirror(tmp_path / "mainline", MIRROR_VERSIONS, FAILED)
    with serve(root) as url:
        yield root, url


def plan_json(world: World, args: list[str], capsys) -> dict:
    code, out, err = world.run([*args, "--plan", "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


# -- pure ---------------------------------------------------------------------------------------

def test_lts_lines_are_one_table_with_end_dates() -> None:
    lines = lts.lts_lines()
    assert lines[:7] == ["4.19", "5.4", "5.10", "5.15", "6.1", "6.6", "6.12"]
    assert all(int(lts.lts_of(line).ends[:4]) >= int(lts.lts_of(line).released[:4]) for line in lines)
    assert lts.lts_of("6.1").ends_year == 2027 and lts.lts_of("6.3") is None
    # the swept Ubuntu series come from the one series table, in release order, from bionic on
    swept = lts.ubuntu_swept_series()
    assert [s for s, _ in swept][:4] == ["bionic", "focal", "jammy", "noble"]
    assert all(DISTRO_SERIES["ubuntu"][s] == b for s, b in swept) and "xenial" not in dict(swept)
    assert [UBUNTU_SERIES.index(s) for s, _ in swept] == sorted(UBUNTU_SERIES.index(s) for s, _ in swept)


def test_newest_available_build_with_the_note_of_what_was_passed_over() -> None:
    rows = [{"version": "6.1.118", "available": True}, {"version": "6.1.120", "available": False,
             "reason": "amd64 build failed: build failure (amd64/status 2)"},
            {"version": "6.1.121", "available": False, "reason": "no CHECKSUMS: cannot verify"},
            {"version": "6.1.119", "available": True}, {"version": "6.2", "available": True}]
    pick = pick_newest_build(mainline_of_line(rows, "6.1"), "mainline")
    assert pick.spec == "mainline:6.1.119"
    assert pick.note == "6.1.121 unavailable (no CHECKSUMS: cannot verify), 6.1.120 build failed; using 6.1.119"
    assert pick_newest_build(mainline_of_line(rows, "6.2"), "mainline") == (pick_newest_build(
        [{"version": "6.2", "available": True}], "mainline"))
    nothing = pick_newest_build([rows[1]], "mainline")
    assert nothing.spec is None and nothing.note == "no available build: 6.1.120 build failed"
    assert [r["version"] for r in mainline_of_line(rows + [{"version": "6.3-rc1"}], "newest")] == ["6.2"]


def test_plan_lines_per_source() -> None:
    assert [r.column for r in plan_lines([], [], [])] == ["5.10", "6.1", "6.12", "newest"]
    assert plan_lines([], [], ["mainline:5.4.41"]) == []  # pins only, as before sources existed
    mainline = plan_lines(["mainline"], [], [])
    assert [r.column for r in mainline] == [f"mainline:{x}" for x in lts.lts_lines()] + ["mainline:newest"]
    assert mainline[0].ends == lts.lts_of("4.19").ends and mainline[-1].ends is None
    assert [r.column for r in plan_lines(["mainline"], ["6.3"], [])] == ["mainline:6.3"]
    assert [r.column for r in plan_lines(["mainline"], ["6.3"], [], lts=True)][:2] == ["mainline:6.3", "mainline:4.19"]
    assert [(r.column, r.series) for r in plan_lines(["ubuntu"], ["5.4"], [])] == [("ubuntu:5.4", "focal")]
    # with two sources a line one of them lacks is the other's only; Ubuntu with no line at all is an error
    assert [r.column for r in plan_lines(["UBUNTU", "debian"], ["5.4", "6.1"], [])] == ["ubuntu:5.4", "5.4", "6.1"]
    with pytest.raises(sweep.KbisectError, match="no Ubuntu series is built on 6.1"):
        plan_lines(["ubuntu", "debian"], ["6.1"], [])
    with pytest.raises(sweep.KbisectError, match="--source 'gentoo'"):
        plan_lines(["gentoo"], [], [])
    with pytest.raises(sweep.KbisectError, match="add --source mainline"):
        plan_lines(["debian"], [], [], lts=True)
    assert sweep.sweep_key(["b"], ["6.1"], []) == sweep.sweep_key(["b"], ["6.1"], [], ["debian"])
    assert sweep.sweep_key(["b"], ["6.1"], []) != sweep.sweep_key(["b"], ["6.1"], [], ["mainline"])


def test_moved_and_history_from_earlier_cells() -> None:
    cells = [Cell("b", "mainline:6.1", f"mainline:6.1.{100 + n}", "good" if n % 3 else "skip", sweep_id=n,
                  at=T0 + n * DAY) for n in range(1, 13)]
    cells.append(Cell("other", "mainline:6.1", "mainline:6.1.999", "bad", sweep_id=13))
    past = cell_histories(cells, before=13)[("b", "mainline:6.1")]
    assert [h["sweep"] for h in past] == list(range(3, 13))  # the last ten, oldest first
    assert past[0] == {"sweep": 3, "kernel": "mainline:6.1.103", "verdict": "skip", "at": T0 + 3 * DAY}
    moved = moved_since({"mainline:6.1": "mainline:6.1.120", "mainline:6.6": "mainline:6.6.1"}, cells, ["b"])
    assert moved == {"mainline:6.1": "6.1.112 → 6.1.120"}  # the other bug's sweep 13 is not this command's
    assert moved_since({"mainline:6.1": "mainline:6.1.112"}, cells, ["b"]) == {}


# -- mainline through the CLI --------------------------------------------------------------------

def test_mainline_lts_plan_takes_the_newest_available_build_of_each_line(world, mirror, capsys) -> None:
    _root, url = mirror
    data = plan_json(world, ["--source", "mainline", "--mirror", url, "--lts", "--bug", BUG, "--bug", "veth-csum"],
                     capsys)
    columns = {c["line"]: c for c in data["columns"]}
    want = [f"mainline:{line}" for line in lts.lts_lines()] + ["mainline:newest"]
    assert [c["line"] for c in data["columns"]] == want
    for line in lts.lts_lines():
        col = columns[f"mainline:{line}"]
        assert (col["kernel"], col["source"], col["ends"]) == (newest_good(line), "mainline", lts.lts_of(line).ends)
    assert columns["mainline:6.1"]["kernel"] == "mainline:6.1.119"
    assert columns["mainline:6.1"]["note"] == "6.1.120 build failed; using 6.1.119"
    assert all(c["note"] is None for name, c in columns.items() if name != "mainline:6.1")
    assert columns["mainline:newest"]["kernel"] == newest_good("newest") == "mainline:6.19"
    assert data["cells"] == [{"bug": b, "line": c, "kernel": columns[c]["kernel"]}
                             for b in (BUG, "veth-csum") for c in want]
    assert data["total"] == 2 * len(want)
    # nothing booted, no sweep recorded, and the mirror variable did not outlive the command
    assert world.boots == [] and SweepLog(Store()).sweeps() == []
    import os
    assert "KBISECT_MAINLINE_MIRROR" not in os.environ
    # --lts is the mainline default; the text form names the note
    assert plan_json(world, ["--source", "mainline", "--mirror", url, "--bug", BUG], capsys)["columns"] == data["columns"]
    code, out, _ = world.run(["--source", "mainline", "--mirror", url, "--bug", BUG, "--plan"], capsys)
    assert code == 0 and "6.1.120 build failed; using 6.1.119" in out and "mainline:newest" in out


def test_a_line_without_any_build_is_a_planned_column_with_no_kernel(world, tmp_path, capsys) -> None:
    root = build_mirror(tmp_path / "m", ["6.1", "6.1.5", "6.6", "6.6.2"], {"6.6", "6.6.2"})
    with serve(root) as url:
        data = plan_json(world, ["--source", "mainline", "--mirror", url, "--line", "6.6", "--line", "6.1",
                                 "--bug", BUG], capsys)
    assert [(c["line"], c["kernel"], c["note"]) for c in data["columns"]] == [
        ("mainline:6.1", "mainline:6.1.5", None),
        ("mainline:6.6", None, "no available build: 6.6.2 build failed, 6.6 build failed")]


# -- Ubuntu, Debian, both ---------------------------------------------------------------------

def test_ubuntu_plans_the_newest_upload_of_each_swept_series(world, capsys) -> None:
    uploads = [Upload("4.4.0-210.242", "xenial"), Upload("4.15.0-212.223", "bionic", status="Superseded"),
               Upload("4.15.0-213.224", "bionic"), Upload("5.4.0-199.219", "focal"),
               Upload("5.4.0-200.220", "focal", pocket="Proposed", status="Deleted"),
               Upload("5.15.0-125.135", "jammy"), Upload("5.15.0-130.140", "jammy"),
               Upload("6.8.0-50.51", "noble"), Upload("6.8.0-49.49", "noble")]
    fake = FakeLaunchpad(uploads)
    with fake.serve() as url:
        data = plan_json(world, ["--source", "ubuntu", "--distro-mirror", url, "--bug", BUG], capsys)
    got = [(c["line"], c["kernel"], c["series"], c["note"]) for c in data["columns"]]
    assert got == [("ubuntu:4.15", "ubuntu:4.15.0-213.224", "bionic", None),
                   ("ubuntu:5.4", "ubuntu:5.4.0-199.219", "focal",
                    "5.4.0-200.220 unavailable (Launchpad status Deleted); using 5.4.0-199.219"),
                   ("ubuntu:5.15", "ubuntu:5.15.0-130.140", "jammy", None),
                   ("ubuntu:6.8", "ubuntu:6.8.0-50.51", "noble", None)]
    assert not any("xenial" in r for r in fake.requests)  # a series the sweep does not cover is not asked


def test_debian_is_unchanged_and_two_sources_plan_side_by_side(world, mirror, capsys) -> None:
    _root, url = mirror
    world.deps.debian_entries = lambda: list(world.listing)
    default = plan_json(world, ["--bug", BUG], capsys)
    explicit = plan_json(world, ["--bug", BUG, "--source", "debian"], capsys)
    assert default == explicit
    assert [(c["line"], c["kernel"]) for c in default["columns"]] == [
        ("5.10", "debian:5.10.0-46-cloud-amd64"), ("6.1", "debian:6.1.0-55-cloud-amd64"), ("6.12", None),
        ("newest", "debian:6.1.0-55-cloud-amd64")]
    both = plan_json(world, ["--bug", BUG, "--source", "debian", "--source", "mainline", "--mirror", url,
                             "--line", "6.1", "--line", "5.10"], capsys)
    assert [(c["line"], c["kernel"], c["source"]) for c in both["columns"]] == [
        ("5.10", "debian:5.10.0-46-cloud-amd64", "debian"), ("6.1", "debian:6.1.0-55-cloud-amd64", "debian"),
        ("mainline:5.10", newest_good("5.10"), "mainline"), ("mainline:6.1", "mainline:6.1.119", "mainline")]
    # a --kernel pin on a mainline line replaces the listed build and its note
    pinned = plan_json(world, ["--bug", BUG, "--source", "mainline", "--mirror", url, "--line", "6.1",
                               "--kernel", "mainline:6.1.118"], capsys)
    assert [(c["line"], c["kernel"], c["note"]) for c in pinned["columns"]] == [("mainline:6.1", "mainline:6.1.118", None)]


@pytest.mark.parametrize("args,message", [
    (["--source", "gentoo"], "--source 'gentoo'"),
    (["--lts"], "add --source mainline"),
    (["--source", "ubuntu", "--line", "6.1"], "no Ubuntu series is built on 6.1"),
])
def test_bad_source_input_is_one_line_before_any_listing(world, capsys, args, message) -> None:
    def no_listing(*_a):
        raise AssertionError("listed before checking the input")

    world.deps.mainline_entries = world.deps.ubuntu_entries = no_listing
    code, out, err = world.run(["--bug", BUG, *args, "--plan"], capsys)
    assert code == 2 and out == "" and err.startswith("kbisect: error: ") and message in err


# -- a real sweep (fake probe) over mainline columns, night after night ------------------------

def test_mainline_sweep_stores_cells_and_the_next_night_shows_moved_and_history(world, mirror, capsys) -> None:
    root, url = mirror
    args = ["--source", "mainline", "--mirror", url, "--lts", "--bug", BUG, "--json", "--quiet"]
    code, out, err = world.run(args, capsys)
    assert code == 0, err
    first = json.loads(out)
    lines = [f"mainline:{x}" for x in lts.lts_lines()] + ["mainline:newest"]
    assert [c["line"] for c in first["columns"]] == lines
    assert sorted(world.boots) == sorted((BUG, newest_good(x.split(":")[1])) for x in lines)
    assert all(c["moved"] is None for c in first["columns"])
    assert all(c["history"] == [] and c["flag"] == "new" for c in first["cells"])
    stored = SweepLog(Store()).cells(first["sweep"]["id"])
    assert sorted((c.line, c.kernel) for c in stored) == sorted((c["line"], c["kernel"]) for c in first["columns"])

    # next night: 6.1.121 built (and is bad), 6.19.1 appeared (newest release unchanged)
    world.next_night()
    build_mirror(root, MIRROR_VERSIONS + ["6.1.121", "6.19.1"], FAILED)
    world.verdicts[(BUG, "mainline:6.1.121")] = Verdict.BAD
    code, out, err = world.run(args, capsys)
    second = json.loads(out)
    assert code == 1, err  # a regression on mainline 6.1
    columns = {c["line"]: c for c in second["columns"]}
    assert columns["mainline:6.1"]["kernel"] == "mainline:6.1.121" and columns["mainline:6.1"]["note"] is None
    assert columns["mainline:6.1"]["moved"] == "6.1.119 → 6.1.121"
    assert [c for c in columns if columns[c]["moved"]] == ["mainline:6.1"]
    cell = next(c for c in second["cells"] if c["line"] == "mainline:6.1")
    assert cell["flag"] == "regression"
    assert cell["history"] == [{"sweep": first["sweep"]["id"], "kernel": "mainline:6.1.119", "verdict": "good",
                                "at": T0}]
    assert world.boots[-1] == (BUG, "mainline:6.1.121") and len(world.boots) == len(lines) + 1  # the rest stored

    # the night after: two earlier cells, oldest first; matrix.json carries the same
    world.next_night()
    code, out, _ = world.run(args, capsys)
    third = json.loads(out)
    cell = next(c for c in third["cells"] if c["line"] == "mainline:6.1")
    assert [(h["sweep"], h["kernel"], h["verdict"]) for h in cell["history"]] == [
        (first["sweep"]["id"], "mainline:6.1.119", "good"), (second["sweep"]["id"], "mainline:6.1.121", "bad")]
    assert all(c["moved"] is None for c in third["columns"]) and code == 0
    assert json.loads(Path(third["json"]).read_text())["cells"] == third["cells"]
    # --plan after the nights: what moved since the last sweep, nothing opened
    sweeps = len(SweepLog(Store()).sweeps())
    build_mirror(root, MIRROR_VERSIONS + ["6.1.121", "6.1.122", "6.19.1"], FAILED)
    planned = plan_json(world, args[:-2], capsys)
    assert {c["line"]: c["moved"] for c in planned["columns"]}["mainline:6.1"] == "6.1.121 → 6.1.122"
    assert len(SweepLog(Store()).sweeps()) == sweeps
