"""The gretap-ecn differential on a generated mainline mirror served on 127.0.0.1, with verdicts
replayed from the real history; resume after a real SIGKILL; --fresh."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.core.engine import clean_bound
from orchestrator.cli.bisect import EXIT_INCONCLUSIVE, exit_code
from orchestrator.core.differential import Differential, KernelIndex, make_kernel
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import parse_version
from tests.bisect_mirror import build_mirror, serve
from tests.gretap_history import K, UNAVAILABLE, mainline_versions, verdict, verdicts
from tests.report_html import Document, assert_links_resolve, probe_rows, summary

REPO = Path(__file__).resolve().parent.parent


def index() -> KernelIndex:
    return KernelIndex(make_kernel("mainline", v, v not in UNAVAILABLE, "failed build" if v in UNAVAILABLE else "")
                       for v in mainline_versions())


class Replay:
    def __init__(self, table=verdict) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, cand):
        self.calls.append(cand.label)
        return Verdict(self.table(cand.label))


def test_pure_differential_follows_the_write_up() -> None:
    probe = Replay()
    res = Differential("gretap-ecn", index(), probe, verify=3).run("4.15", "5.4")
    assert res.status == "found"
    assert (res.lineage, res.last_good, res.first_bad) == ("stable-5.4", "5.4.40", "5.4.41")
    assert res.origin == "stable-backport" and res.carrier == "stable"
    assert (res.upstream_last_good, res.upstream_first_bad) == (f"5.7-rc{K - 1}", f"5.7-rc{K}")
    assert any("mainline 5.4 is good" in n for n in res.notes)
    # the mainline walk went 5.5, 5.6, 5.7 and stopped at the first bad release
    walk = [s for s in res.stages if s.name == "mainline walk"][0]
    assert walk.walk == [("5.5", "good"), ("5.6", "good"), ("5.7", "bad")]
    # each engine stage stayed within its clean bound (verification re-runs are not new kernels)
    for stage in res.stages:
        if stage.result is not None and stage.result.status == "found":
            distinct = {p.kernel for p in stage.result.probes if p.phase != "verify"}
            assert len(distinct) <= clean_bound(stage.result.size), (stage.name, distinct)
    # no kernel was booted twice outside boundary verification
    outside = [c for c, p in zip(probe.calls, res.probes) if p.phase != "verify"]
    assert len(outside) == len(set(outside))
    assert res.confidence == 1.0
    assert res.undecided == [] and not res.advice


def test_stable_bad_end_given_explicitly() -> None:
    res = Differential("gretap-ecn", index(), Replay(), verify=1).run("4.15", "5.4.60")
    assert (res.first_bad, res.origin, res.upstream_first_bad) == ("5.4.41", "stable-backport", f"5.7-rc{K}")
    assert any("mainline 5.4 (the base of 5.4.60) is good" in n for n in res.notes)


def test_mainline_range_is_a_mainline_origin() -> None:
    probe = Replay()
    res = Differential("gretap-ecn", index(), probe, verify=1).run("5.5", "5.8")
    assert (res.lineage, res.last_good, res.first_bad, res.origin) == ("mainline", f"5.7-rc{K - 1}", f"5.7-rc{K}", "mainline")
    assert "upstream_first_bad" not in res.to_json()
    n = len(index().between("mainline", index().get("5.5"), index().get("5.8")))
    assert len(set(probe.calls)) <= clean_bound(n)


def test_good_end_bad_is_said_plainly() -> None:
    res = Differential("gretap-ecn", index(), Replay(), verify=1).run("5.8", "5.10")
    assert res.status == "ends-disagree"
    assert "good end 5.8 is already bad" in res.stopped


def stable_only(label: str) -> str:
    """stable-5.4 broke at 5.4.30 on its own; no mainline kernel ever shows it."""
    return "bad" if label.startswith("5.4.") and int(label.split(".")[2]) >= 30 else "good"


def releases_after_5_4() -> list[str]:
    return [v for v in mainline_versions() if "-rc" not in v and v.count(".") == 1
            and parse_version(v) > parse_version("5.4")]


def test_stable_only_breakage_is_not_blamed_on_mainline() -> None:
    # the positive evidence the rule asks for: every mainline release after 5.4 was probed good
    res = Differential("x", index(), Replay(stable_only), verify=0).run("4.15", "5.4")
    assert (res.status, res.first_bad, res.origin) == ("found", "5.4.30", "stable-only")
    walk = [s for s in res.stages if s.name == "mainline walk"][0]
    assert walk.walk == [(v, "good") for v in releases_after_5_4()]
    assert res.undecided == [] and res.to_json()["undecided"] == [] and "advice" not in res.to_json()


def test_a_skipped_release_in_the_walk_leaves_the_origin_open() -> None:
    # 5.9 could not be tested: it may be the first bad release (fixed again by 5.10), so "no
    # mainline release shows it" is not established and stable-only is not said
    table = lambda label: "skip" if label == "5.9" else stable_only(label)
    res = Differential("x", index(), Replay(table), verify=0).run("4.15", "5.4")
    assert (res.status, res.origin, res.carrier) == ("inconclusive", None, None)
    assert (res.lineage, res.last_good, res.first_bad) == ("stable-5.4", "5.4.29", "5.4.30")  # still reported
    data = res.to_json()
    assert data["origin"] is None and data["status"] == "inconclusive"
    assert [(u["kernel"], u["why"]) for u in data["undecided"]] == [("5.9", "skip")]
    assert "--verdicts" in data["advice"] and "--mirror" in data["advice"] and "--allow-unverified" in data["advice"]
    assert "origin undecided" in res.stopped and "5.9" in res.stopped


def test_an_unavailable_base_release_leaves_the_origin_open() -> None:
    # mainline 5.4 itself could not be tested: whether mainline had it already is unknown
    table = lambda label: "skip" if label == "5.4" else verdict(label)
    res = Differential("gretap-ecn", index(), Replay(table), verify=0).run("4.15", "5.4.60")
    assert (res.status, res.origin, res.first_bad) == ("inconclusive", None, "5.4.41")
    assert [(u.kernel, u.why) for u in res.undecided] == [("5.4", "skip")]
    assert not any("5.4 (the base of 5.4.60) is good" in n for n in res.notes)


def test_an_untestable_bad_end_is_not_called_good() -> None:
    # --bad 5.4 itself is skipped: the engine falls back to 5.4-rc7 (good), which does not make
    # mainline 5.4 good; the stable line is still bisected, the origin stays open
    table = lambda label: "skip" if label == "5.4" else verdict(label)
    res = Differential("gretap-ecn", index(), Replay(table), verify=0).run("4.15", "5.4")
    assert (res.status, res.origin, res.first_bad) == ("inconclusive", None, "5.4.41")
    assert [(u.kernel, u.why) for u in res.undecided] == [("5.4", "skip")]
    assert not any(n.startswith("mainline 5.4 is good") for n in res.notes)


def test_the_walk_limit_is_not_evidence() -> None:
    res = Differential("x", index(), Replay(stable_only), verify=0, max_walk=5).run("4.15", "5.4")
    assert (res.status, res.origin) == ("inconclusive", None)
    assert [u.kernel for u in res.undecided] == releases_after_5_4()[5:]
    assert {u.why for u in res.undecided} == {"not walked"}


def test_bad_input_is_one_line() -> None:
    with pytest.raises(KbisectError, match="not older"):
        Differential("x", index(), Replay()).run("5.4", "4.15")
    with pytest.raises(KbisectError, match="not in the mainline listing"):
        Differential("x", index(), Replay()).run("4.15", "9.9")


# -- through the CLI, on a served mirror ----------------------------------------------------

@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = build_mirror(tmp_path_factory.mktemp("mirror") / "mainline", mainline_versions(), UNAVAILABLE)
    with serve(root) as url:
        yield url


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KBISECT_HOME"] = str(tmp_path / "home")
    env["KBISECT_RESULTS"] = str(tmp_path / "results")
    env["PYTHONPATH"] = str(REPO)
    return env


def _kbisect(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_done_when_command_on_a_mirror(mirror, tmp_path) -> None:
    vfile = tmp_path / "verdicts.json"
    vfile.write_text(json.dumps(verdicts(), indent=1))
    proc = _kbisect(["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", mirror,
                     "--verdicts", str(vfile), "--json"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["bug"] == "gretap-ecn"
    assert data["origin"] == "stable-backport"
    assert (data["lineage"], data["last_good"], data["first_bad"]) == ("stable-5.4", "5.4.40", "5.4.41")
    assert (data["upstream_last_good"], data["upstream_first_bad"]) == (f"5.7-rc{K - 1}", f"5.7-rc{K}")
    assert data["confidence"] == 1.0
    # the newest 5.4.y (patch level >= 100, seven-digit ABI in its package names) is listed and
    # fixed again, so the bad end comes from sampling the line
    walk = next(s["walk"] for s in data["stages"] if s["name"] == "bad-end search")
    assert int(walk[0]["kernel"].split(".")[2]) >= 100 and walk[0]["verdict"] == "good"
    assert walk[-1]["verdict"] == "bad"
    for p in data["probes"]:
        assert {"kernel", "verdict", "runs", "seconds", "reason"} <= set(p)
    assert all(p["origins"] in (["replay"], ["known"]) for p in data["probes"])
    report = Path(data["report"])
    # the report states the answer and each probe (read as a document: tests/report_html.py)
    doc = Document(report.read_text())
    facts = summary(doc)
    assert (facts["status"], facts["lineage"], facts["last good"], facts["first bad"]) == (
        "found", "stable-5.4", "5.4.40", "5.4.41")
    assert facts["origin"] == "stable-backport (via the stable line)"
    assert facts["upstream"] == f"5.7-rc{K - 1} good, 5.7-rc{K} bad"
    assert probe_rows(doc) == [(p["verdict"], p["kernel"], p["phase"], p["verdict"]) for p in data["probes"]]
    assert {p["verdict"] for p in data["probes"]} == {"good", "bad"}
    assert_links_resolve(doc, report)
    assert json.loads((report.parent / "result.json").read_text()) == data
    # progress went to stderr, not stdout
    assert "boundary found: 5.4.40 good, 5.4.41 bad" in proc.stderr
    (tmp_path / "done-when.json").write_text(proc.stdout)


def test_unavailable_mainline_releases_give_no_origin_through_the_cli(tmp_path) -> None:
    # the listing says every mainline release after 5.4 is unavailable: the walk hears nothing,
    # so the answer is inconclusive with no origin, not "stable-only" with status found
    gone = set(releases_after_5_4())
    root = build_mirror(tmp_path / "mirror" / "mainline", mainline_versions(), UNAVAILABLE | gone)
    vfile = tmp_path / "verdicts.json"
    vfile.write_text(json.dumps(verdicts(), indent=1))
    env = _env(tmp_path)
    args = ["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--verdicts", str(vfile)]
    with serve(root) as url:
        proc = _kbisect([*args, "--mirror", url, "--json"], env)
        text = _kbisect([*args, "--mirror", url], env)
    assert proc.returncode == EXIT_INCONCLUSIVE, proc.stderr[-3000:]
    data = json.loads(proc.stdout)  # printed before exiting
    assert (data["status"], data["origin"]) == ("inconclusive", None)
    assert (data["lineage"], data["last_good"], data["first_bad"]) == ("stable-5.4", "5.4.40", "5.4.41")
    assert [u["kernel"] for u in data["undecided"]] == releases_after_5_4()
    assert {u["why"] for u in data["undecided"]} == {"unavailable"}
    assert "--verdicts" in data["advice"] and "--mirror" in data["advice"]
    assert "stable-only" not in proc.stdout and "distro-only" not in proc.stdout
    assert json.loads(Path(data["report"]).with_name("result.json").read_text())["origin"] is None
    html = Path(data["report"]).read_text()
    assert "<th>undecided</th>" in html and "5.5 (unavailable" in html and "to decide, try another --mirror" in html
    # the text answer says the same: status, the undecided kernels, what to do
    assert text.returncode == EXIT_INCONCLUSIVE, text.stderr[-3000:]
    assert "status: inconclusive" in text.stdout and "origin: undecided" in text.stdout
    assert "undecided kernels (12):" in text.stdout and "  5.5 (unavailable" in text.stdout
    assert "next: to decide, try another --mirror" in text.stdout


def test_exit_codes_are_documented() -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    assert (exit_code("found"), exit_code("inconclusive")) == (0, EXIT_INCONCLUSIVE) == (0, 4)
    assert {exit_code(s) for s in ("ends-disagree", "no-candidates", "unstable")} == {3}
    out = CliRunner().invoke(cli, ["bisect", "--help"]).output
    assert "4  inconclusive" in out and "0  found" in out and "3  ends-disagree" in out


def test_cli_errors_are_one_line(mirror, tmp_path) -> None:
    bad = tmp_path / "v.yaml"
    bad.write_text("mainline:5.4: maybe\n")
    proc = _kbisect(["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", mirror,
                     "--verdicts", str(bad)], _env(tmp_path))
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "verdict must be good, bad or skip" in proc.stderr
    proc = _kbisect(["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--distro", "ubuntu:nope"],
                    _env(tmp_path))
    assert proc.returncode != 0 and "unknown series" in proc.stderr and proc.stderr.count("\n") == 1


# -- resume after a real kill ---------------------------------------------------------------

FAKE = textwrap.dedent("""
    import sys, time, json
    from orchestrator.app.bisect import BisectDeps
    from orchestrator.app.deps import provided
    from orchestrator.core.verdict import ProbeRecord, Verdict
    from tests.gretap_history import verdict

    log = open(sys.argv[1], "a")

    def fake_real_probe(bug, mirror):
        def probe(spec):
            log.write(spec + "\\n"); log.flush()
            time.sleep(float(sys.argv[2]))
            label = spec.split(":", 1)[1]
            return ProbeRecord(spec, bug.id, Verdict(verdict(label)), "simulated boot", {"run": 0.01})
        return probe

    from orchestrator.cli import main
    with provided(BisectDeps(real_probe=fake_real_probe, kernel_ids=lambda mirror: lambda spec: "id-" + spec)):
        main(sys.argv[3:])
""")


def _rows(db: Path) -> dict[tuple[str, int], float]:
    con = sqlite3.connect(db)
    try:
        return {(k, s): t for k, s, t in con.execute("SELECT kernel, seq, stored_at FROM probes")}
    finally:
        con.close()


def test_resume_after_sigkill_repeats_no_finished_probe(mirror, tmp_path) -> None:
    env = _env(tmp_path)
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    # the user knows the mainline releases; everything else (rc's, stable) is "booted"
    vfile = tmp_path / "verdicts.yaml"
    vfile.write_text("".join(f'"mainline:{v}": {verdict(v)}\n' for v in mainline_versions()
                             if "-rc" not in v and v.count(".") == 1))
    args = ["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", mirror,
            "--verdicts", str(vfile), "--json"]
    db = Path(env["KBISECT_HOME"]) / "results.db"
    log1 = tmp_path / "calls1.log"
    proc = subprocess.Popen([sys.executable, str(script), str(log1), "0.3", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    def stored() -> int:
        try:
            return len(_rows(db)) if db.exists() else 0
        except sqlite3.OperationalError:  # the file exists a moment before its table does
            return 0

    while time.time() < deadline:
        if stored() >= 4:
            break
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(db)
    assert len(before) >= 4

    log2 = tmp_path / "calls2.log"
    done = subprocess.run([sys.executable, str(script), str(log2), "0", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(done.stdout)
    assert (data["first_bad"], data["origin"], data["upstream_first_bad"]) == ("5.4.41", "stable-backport", f"5.7-rc{K}")
    after = _rows(db)
    # every probe finished before the kill is still the same stored row: none was repeated
    for key, stamp in before.items():
        assert after[key] == stamp, f"{key} was probed again"
    calls2 = log2.read_text().split()
    assert len(calls2) == len(after) - len(before)
    assert data["counts"]["store"] >= len(before)
    # and a third run needs no probe at all
    log3 = tmp_path / "calls3.log"
    again = subprocess.run([sys.executable, str(script), str(log3), "0", *args], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and log3.read_text() == ""
    assert json.loads(again.stdout)["first_bad"] == "5.4.41"
    # --fresh ignores the stored verdicts: every non-replayed probe runs again
    log4 = tmp_path / "calls4.log"
    fresh = subprocess.run([sys.executable, str(script), str(log4), "0", *args, "--fresh"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert len(log4.read_text().split()) == len(after)
    assert all(_rows(db)[k] > after[k] for k in after)


def test_bisect_with_repo_ranks_the_intersection_first(mirror, tmp_path) -> None:
    from tests.gitlog_history import CULPRIT_SUBJECT, build

    assert K == 4  # the synthetic history tags v5.7-rc3 and v5.7-rc4 around the culprit's merge
    hist = build(tmp_path / "linux")
    vfile = tmp_path / "verdicts.json"
    vfile.write_text(json.dumps(verdicts()))
    proc = _kbisect(["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", mirror,
                     "--verdicts", str(vfile), "--repo", str(hist.path), "--json", "--verify", "1",
                     "--verify-revert"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    top, second = data["candidates"][:2]
    assert top["sha"] == hist.culprit and top["subject"] == CULPRIT_SUBJECT and top["backports"] == [hist.backport]
    assert second["sha"] == hist.backport and second["upstream"] == hist.culprit
    assert "in both ranges" in top["reasons"][0]
    assert hist.culprit[:12] in Path(data["report"]).read_text()
    # the culprit touches a header (include/net/inet_ecn.h): a module-only revert variant cannot
    # remove it, and a whole-kernel rebuild needs a Debian first-bad kernel's own source, so the
    # revert check says why it did not run instead of building anything
    assert data["revert_check"]["status"] == "not-run"
    assert "must be a debian kernel" in data["revert_check"]["reason"]


# -- distro lineages (pure index; Ubuntu focal-like uploads) ---------------------------------

FOCAL = [f"5.4.0-{abi}.{abi + 4}" for abi in range(26, 60)]  # 5.4.0-26.30 .. 5.4.0-59.63


def focal_index() -> KernelIndex:
    ks = [make_kernel("mainline", v, v not in UNAVAILABLE) for v in mainline_versions()]
    ks += [make_kernel("ubuntu", v) for v in FOCAL]
    return KernelIndex(ks)


def test_distro_lineage_took_the_backport() -> None:
    # uploads from ABI 33 on carry 5.4.41 (the write-up's Ubuntu 20.04 kernel)
    def table(label: str) -> str:
        if label.startswith("5.4.0-"):
            return "bad" if int(label.split("-")[1].split(".")[0]) >= 33 else "good"
        return verdict(label)

    probe = Replay(table)
    res = Differential("gretap-ecn", focal_index(), probe, verify=1).run("4.15", "5.4", distro="ubuntu:focal")
    assert (res.lineage, res.last_good, res.first_bad) == ("ubuntu:5.4", "5.4.0-32.36", "5.4.0-33.37")
    # the write-up's situation: the distro kernel took the 5.4.41 stable update
    assert res.origin == "stable-backport" and res.carrier == "stable"
    assert (res.stable_last_good, res.stable_first_bad) == ("5.4.40", "5.4.41")
    assert res.upstream_first_bad == f"5.7-rc{K}"
    assert any("took it with a stable update" in n for n in res.notes)


def test_distro_backported_the_change_itself() -> None:
    # the distro is bad from ABI 33, mainline from 5.7-rc4, but no stable 5.4 release is bad
    def table(label: str) -> str:
        if label.startswith("5.4.0-"):
            return "bad" if int(label.split("-")[1].split(".")[0]) >= 33 else "good"
        if label.startswith("5.4."):
            return "good"
        return verdict(label)

    res = Differential("gretap-ecn", focal_index(), Replay(table), verify=0).run("4.15", "5.4", distro="ubuntu:focal")
    assert (res.first_bad, res.origin, res.carrier) == ("5.4.0-33.37", "stable-backport", "distro")
    assert res.stable_first_bad is None
    assert any("the distro took the change itself" in n for n in res.notes)


def test_distro_only_patch() -> None:
    def table(label: str) -> str:
        if label.startswith("5.4.0-"):
            return "bad" if int(label.split("-")[1].split(".")[0]) >= 40 else "good"
        return "good"  # mainline never shows it

    res = Differential("x", focal_index(), Replay(table), verify=0).run("4.15", "ubuntu:5.4.0-50.54")
    assert (res.status, res.lineage, res.first_bad, res.origin) == ("found", "ubuntu:5.4", "5.4.0-40.44", "distro")
    assert res.upstream_first_bad is None
    assert any("distro-only patch" in n for n in res.notes)


def focal_bad_from_33(label: str) -> str | None:
    if label.startswith("5.4.0-"):
        return "bad" if int(label.split("-")[1].split(".")[0]) >= 33 else "good"
    return None


def stable_unheard(label: str) -> str | None:
    """stable-5.4's would-be bad window cannot be tested (skips), the rest of the line is good."""
    if label.startswith("5.4."):
        return "skip" if 41 <= int(label.split(".")[2]) < 138 else "good"
    return None


def test_distro_with_an_undecided_stable_line_names_no_carrier() -> None:
    # mainline got it (5.7-rc4), so the origin is a backport either way; but the stable line's
    # samples were skipped, so "the distro took the change itself" would be a guess
    table = lambda label: focal_bad_from_33(label) or stable_unheard(label) or verdict(label)
    res = Differential("gretap-ecn", focal_index(), Replay(table), verify=0).run("4.15", "5.4", distro="ubuntu:focal")
    assert (res.first_bad, res.origin, res.carrier) == ("5.4.0-33.37", "stable-backport", None)
    assert res.upstream_first_bad == f"5.7-rc{K}"
    assert not any("took the change itself" in n for n in res.notes)
    assert any("stable-5.4 is undecided" in n for n in res.notes)
    undecided = res.to_json()["undecided"]
    assert undecided and all(u["why"] == "skip" and 41 <= int(u["kernel"].split(".")[2]) < 138 for u in undecided)
    assert "carrier" not in res.to_json()


def test_distro_only_needs_the_stable_line_probed_good() -> None:
    # no mainline kernel shows it; "distro" (not stable-only) would rest on the skipped stable samples
    table = lambda label: focal_bad_from_33(label) or stable_unheard(label) or "good"
    res = Differential("x", focal_index(), Replay(table), verify=0).run("4.15", "5.4", distro="ubuntu:focal")
    assert (res.status, res.origin, res.first_bad) == ("inconclusive", None, "5.4.0-33.37")
    assert res.to_json()["origin"] is None and res.undecided
    assert not any("distro-only patch" in n or "took the change itself" in n for n in res.notes)
    assert "origin undecided" in res.stopped and "stable-5.4" in res.stopped


def test_debian_lineages_and_a_patched_variant_end() -> None:
    """The shape of the real-VM test: Debian 6.1 stock kernels (fixed, good) and the positive
    control (the newest one with the fix reverted) as the bad end."""
    names = [f"6.1.0-{abi}-cloud-amd64" for abi in (47, 48, 49, 50, 52, 54)]
    ks = [make_kernel("debian", n) for n in names]
    ks += [make_kernel("debian", "6.1.0-48-amd64"), make_kernel("debian", "6.1.0-0.deb11.48-cloud-amd64")]
    ks.append(make_kernel("debian", "6.1.0-54-cloud-amd64", variant="revert-227adfb2b1df"))
    idx = KernelIndex(ks)
    assert [k.label for k in idx.lineage("debian:6.1")][-2:] == [
        "6.1.0-54-cloud-amd64", "6.1.0-54-cloud-amd64+revert-227adfb2b1df"]
    assert idx.get("debian:6.1.0-48-amd64").lineage == "debian:6.1/amd64"
    assert idx.get("debian:6.1.0-0.deb11.48-cloud-amd64").lineage == "debian:6.1~deb11/cloud-amd64"
    probe = Replay(lambda label: "bad" if label.endswith("+revert-227adfb2b1df") else "good")
    res = Differential("gretap-ecn", idx, probe, verify=1).run(
        "debian:6.1.0-47-cloud-amd64", "debian:6.1.0-54-cloud-amd64+revert-227adfb2b1df")
    assert (res.lineage, res.last_good, res.first_bad, res.origin) == (
        "debian:6.1", "6.1.0-54-cloud-amd64", "6.1.0-54-cloud-amd64+revert-227adfb2b1df", "variant")
    assert "6.1.0-48-amd64" not in probe.calls  # other flavours are other lineages
    assert len(set(probe.calls)) <= clean_bound(7)


def test_distro_differential_through_the_cli_on_a_fake_launchpad(mirror, tmp_path) -> None:
    from tests.fake_launchpad import serve_launchpad

    table = {f"ubuntu:{v}": ("bad" if int(v.split("-")[1].split(".")[0]) >= 33 else "good") for v in FOCAL}
    vfile = tmp_path / "verdicts.json"
    vfile.write_text(json.dumps({**verdicts(), **table}))
    with serve_launchpad({"focal": FOCAL, "jammy": ["5.15.0-25.25"]}) as lp:
        proc = _kbisect(["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", mirror,
                         "--distro", "ubuntu:focal", "--distro-mirror", lp, "--verdicts", str(vfile), "--json",
                         "--verify", "1"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert (data["lineage"], data["last_good"], data["first_bad"]) == ("ubuntu:5.4", "5.4.0-32.36", "5.4.0-33.37")
    assert (data["origin"], data["carrier"]) == ("stable-backport", "stable")
    assert (data["stable_last_good"], data["stable_first_bad"]) == ("5.4.40", "5.4.41")
    assert (data["upstream_last_good"], data["upstream_first_bad"]) == (f"5.7-rc{K - 1}", f"5.7-rc{K}")
    assert any("ubuntu:focal series" in n for n in data["notes"])
