"""The reports opened in a real browser (issue 12, "Tested for real").

Each report is rendered from data the real code paths produce with fakes: `kbisect bisect` through
main() with the fakes tests/test_uncovered.py uses (orchestrator.app.deps.provided) or the
generated mainline mirror and the write-up's verdicts (tests/test_differential.py), and `kbisect
sweep` with tests/test_sweep.py's World (a fake probe and Debian listing) over three nights with a
regression, then `kbisect report --sweep ID` from the results database. Headless Chromium (Debian's
`chromium`) loads each page; the tests assert on the DOM it rendered (verdict classes, the answer
sentence, one timeline mark per probed kernel, every local link resolving to a file) and keep a
screenshot of each under $KBISECT_RESULTS/screenshots/ (copied to $KBISECT_TEST_ARTEFACTS when set).
No VM is booted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import pytest

from orchestrator.adapters import report
from orchestrator.core.verdict import ProbeRecord, Verdict
from tests.bisect_mirror import build_mirror, serve
from tests.browser import Elements, dump_dom, screenshot
from tests.gretap_history import UNAVAILABLE, mainline_versions, verdicts
from tests.report_html import Document, probe_rows
from tests.test_sweep import K57, World, _entry
from tests.test_uncovered import BUG, FOUND, PANIC, FakeBisect, run_cli, table, tiny_linux

KERNEL_ORG = "https://git.kernel.org/pub/scm/linux/kernel/git/"
WARN = ("WARNING: CPU: 0 PID: 1 at net/core/dev.c:3210 skb_warn_bad_offload+0x70/0xe0\n"
        "Call Trace:\n dev_hard_start_xmit+0x1/0x2\n")


def check_links(dom: str, page: Path) -> list[str]:
    """Every href of the rendered page: a fragment names an element, a relative path an existing
    file; the only links off the machine are git.kernel.org commit pages. Returns the local ones."""
    doc = Elements(dom)
    ids = {a["id"] for _, a in doc.elements if "id" in a}
    local = []
    for href in doc.hrefs():
        if href.startswith(("http:", "https:", "//")):
            assert href.startswith(KERNEL_ORG), f"{page.name} links off the machine: {href}"
            continue
        target, _, fragment = href.partition("#")
        if target:
            assert (page.parent / unquote(target)).exists(), f"dangling link {href} in {page}"
            local.append(unquote(target))
        else:
            assert fragment in ids, f"link {href} names no element of {page.name}"
    return local


def timeline_marks(dom: str) -> dict[str, str]:
    """kernel -> verdict class of each mark of the SVG timeline (one mark per kernel asserted)."""
    marks = Elements(dom).with_class("circle", "mark")
    kernels = [m["data-kernel"] for m in marks]
    assert len(kernels) == len(set(kernels)), f"a kernel drawn twice: {kernels}"
    return {m["data-kernel"]: next(c for c in m["class"].split() if c in ("good", "bad", "skip", "mixed"))
            for m in marks}


def expected_marks(data: dict) -> dict[str, str]:
    by_kernel: dict[str, set[str]] = {}
    for p in data["probes"]:
        by_kernel.setdefault(p["kernel"], set()).add(p["verdict"])
    return {k: (next(iter(v)) if len(v) == 1 else "mixed") for k, v in by_kernel.items()}


def shots(results: Path) -> Path:
    return results / "screenshots"


# -- bisections ---------------------------------------------------------------------------------

class EvidenceBisect(FakeBisect):
    """FakeBisect whose boots leave files, as the guest runtime does: console.log (the excerpt)
    and dmesg.txt in a probe directory under the results directory, named as artefacts; 5.5's
    boots also log a trace unrelated to the bug."""

    def real_probe(self, bug, mirror):
        inner = super().real_probe(bug, mirror)
        results = Path(os.environ["KBISECT_RESULTS"])

        def probe(spec: str) -> ProbeRecord:
            rec = inner(spec)
            d = results / "probes" / f"fake-{len(self.asked)}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "console.log").write_text(f"[    0.000000] Linux version {spec}\n{rec.console_excerpt}\n")
            (d / "dmesg.txt").write_text("dmesg\n")
            rec.artefacts = [str(d / "console.log"), str(d / "dmesg.txt")]
            if spec.endswith(":5.5"):
                rec.unrelated_trace = WARN
            return rec
        return probe


def test_mainline_bisection_report_in_chromium(kbisect_home, tmp_path, capsys) -> None:
    sha = tiny_linux(tmp_path / "linux")
    world = EvidenceBisect(FOUND, tmp=tmp_path / "v")
    code, out, err = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                              "--quiet", "--repo", str(tmp_path / "linux")], capsys, world.deps())
    assert code == 0, err[-2000:]
    data = json.loads(out)
    page = Path(data["report"])
    dom = dump_dom(page)
    doc, els = Document(dom), Elements(dom)
    assert els.text_of["answer"] == "Entered mainline at 5.7; first bad 5.7, last good 5.6."
    assert probe_rows(doc) == [(p["verdict"], p["kernel"], p["phase"], p["verdict"]) for p in data["probes"]]
    assert timeline_marks(dom) == expected_marks(data) == {"mainline:5.5": "good", "mainline:5.6": "good",
                                                           "mainline:5.7": "bad", "mainline:5.8": "bad"}
    # the boundary is ringed on the timeline
    ringed = {m["data-kernel"] for m in els.with_class("circle", "boundary")}
    assert ringed == {"mainline:5.6", "mainline:5.7"}
    # the candidate links to its commit on git.kernel.org (torvalds: a mainline range)
    assert report.TORVALDS_COMMIT + sha in els.hrefs()
    # console excerpts folded in <details>, one per bad boot; each probe links its files
    details = [a for t, a in els.elements if t == "details"]
    assert len(details) >= sum(1 for p in data["probes"] if p["verdict"] == "bad")
    assert [b for b in doc.blocks if PANIC in b] == [PANIC] * sum(1 for p in data["probes"] if p["verdict"] == "bad")
    local = check_links(dom, page)
    assert "result.json" in local and sum(1 for link in local if link.endswith("console.log")) == len(data["probes"])
    # the unrelated trace is a caveat, named by its headline
    assert "Unrelated kernel trace on mainline:5.5" in dom and "skb_warn_bad_offload" in dom
    # the index lists this run and links resolve from it
    index = page.parent.parent / "index.html"
    index_dom = dump_dom(index)
    assert data["run_id"] in index_dom and "Entered mainline at 5.7" in index_dom
    check_links(index_dom, index)
    screenshot(page, shots(page.parent.parent) / "bisect-mainline.png")


def test_inconclusive_bisection_says_what_is_open(kbisect_home, tmp_path, capsys) -> None:
    world = FakeBisect(table(k5_5="good", k5_6="skip", k5_7="bad", k5_8="bad"), tmp=tmp_path)
    code, out, _ = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                            "--quiet"], capsys, world.deps())
    data = json.loads(out)
    assert data["status"] == "inconclusive"
    page = Path(data["report"])
    dom = dump_dom(page)
    answer = Elements(dom).text_of["answer"]
    assert answer.startswith("Inconclusive: ") and "5.6 skip" in answer, answer
    assert timeline_marks(dom) == expected_marks(data) and expected_marks(data)["mainline:5.6"] == "skip"
    assert ("skip", "mainline:5.6", "bisect", "skip") in probe_rows(Document(dom))
    check_links(dom, page)
    screenshot(page, shots(page.parent.parent) / "bisect-inconclusive.png", size="1280,1100")


def test_stable_backport_report_in_chromium(kbisect_home, tmp_path, capsys) -> None:
    """The write-up's case on the generated mirror, with the synthetic Linux history for candidates."""
    from tests.gitlog_history import build

    hist = build(tmp_path / "linux")
    root = build_mirror(tmp_path / "mirror" / "mainline", mainline_versions(), UNAVAILABLE)
    vfile = tmp_path / "verdicts.json"
    vfile.write_text(json.dumps(verdicts()))
    with serve(root) as url:
        code, out, err = run_cli(["bisect", "--bug", BUG, "--good", "4.15", "--bad", "5.4", "--mirror", url,
                                  "--verdicts", str(vfile), "--repo", str(hist.path), "--json", "--quiet"], capsys)
    assert code == 0, err[-3000:]
    data = json.loads(out)
    page = Path(data["report"])
    dom = dump_dom(page)
    els = Elements(dom)
    assert els.text_of["answer"] == (f"Entered stable 5.4 at {data['first_bad']} as a backport of mainline "
                                     f"{data['upstream_first_bad']}; first bad {data['first_bad']}, "
                                     f"last good {data['last_good']}.")
    assert data["first_bad"] == "5.4.41" and data["last_good"] == "5.4.40"
    marks = timeline_marks(dom)
    assert marks == expected_marks(data) and len(marks) == len({p["kernel"] for p in data["probes"]})
    # two tracks: mainline and stable 5.4, the backport drawn between them
    names = [t for t in dom.split('class="track-name"')[1:]]
    assert len(names) == 2 and "backport of" in dom
    assert report.TORVALDS_COMMIT + hist.culprit in els.hrefs()
    assert probe_rows(Document(dom)) == [(p["verdict"], p["kernel"], p["phase"], p["verdict"]) for p in data["probes"]]
    check_links(dom, page)
    screenshot(page, shots(page.parent.parent) / "bisect-stable-backport.png")


# -- the sweep matrix ---------------------------------------------------------------------------

ARGS = ["--bug", "gretap-ecn", "--bug", "veth-csum", "--line", "5.10", "--line", "6.1", "--json", "--quiet"]


def three_nights(world: World, capsys) -> dict:
    """Night 1 all good; night 2 6.1 moves to -56, still good; night 3 to -57, where gretap-ecn is bad."""
    assert world.run(ARGS, capsys)[0] == 0
    world.next_night()
    world.listing.append(_entry("6.1.0-56-cloud-amd64", "6.1.156"))
    assert world.run(ARGS, capsys)[0] == 0
    world.next_night()
    world.listing.append(_entry("6.1.0-57-cloud-amd64", "6.1.157"))
    world.verdicts[("gretap-ecn", K57)] = Verdict.BAD
    code, out, err = world.run(ARGS, capsys)
    assert code == 1, err
    return json.loads(out)


def test_sweep_matrix_in_chromium(world, capsys, tmp_path) -> None:
    data = three_nights(world, capsys)
    assert data["counts"]["regression"] == 1
    page = Path(data["report"])
    assert Path(data["junit"]) == page.with_name("junit.xml") and Path(data["junit"]).is_file()
    dom = dump_dom(page)
    els = Elements(dom)
    cells = {(c["bug"], c["line"]): c for c in data["cells"]}
    tds = [a for t, a in els.elements if t == "td" and "data-bug" in a]
    assert {(a["data-bug"], a["data-line"]): a["class"] for a in tds} == {
        k: f"{c['verdict']} {c['flag']}" for k, c in cells.items()}
    assert cells[("gretap-ecn", "6.1")]["flag"] == "regression"
    assert "Regressions (1)" in dom and 'href="#cell-gretap-ecn-6-1"' in dom
    check_links(dom, page)
    print(screenshot(page, shots(world.results) / "matrix-as-swept.png", size="1280,1000"))

    # `kbisect report --sweep ID` rebuilds it from the database, with each cell's earlier sweeps
    code, out, err = world.run_report(["report", "--sweep", str(data["sweep"]["id"])], capsys)
    assert code == 0, err
    assert f"matrix: {page}" in out
    again = json.loads(page.with_name("matrix.json").read_text())
    assert [c["flag"] for c in again["cells"]] == [c["flag"] for c in data["cells"]]
    assert [len(c["history"]) for c in again["cells"]] == [2, 2, 2, 2]
    # the auto-bisection and the probe's log, as the sweep records them in a cell (keys
    # `bisection` and `log`), rendered by the same writer the sweep calls
    code, out, _ = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                            "--quiet"], capsys, FakeBisect(FOUND, tmp=tmp_path / "v").deps())
    bisection = json.loads(out)
    log = world.results / "probes" / "gretap-ecn-57" / "console.log"
    log.parent.mkdir(parents=True)
    log.write_text("console\n")
    for c in again["cells"]:
        if (c["bug"], c["line"]) == ("gretap-ecn", "6.1"):
            c["bisection"] = {"report": bisection["report"], "status": bisection["status"],
                              "first_bad": bisection["first_bad"]}
            c["log"] = str(log)
    again["columns"][1]["moved"] = "6.1.0-56-cloud-amd64 → 6.1.0-57-cloud-amd64"
    report.write_matrix(again, page.parent)
    dom = dump_dom(page)
    els = Elements(dom)
    cells_drawn = [a for t, a in els.elements if t == "td" and "data-bug" in a]
    earlier = [a for a in els.with_class("span", "chip") if "now" not in a["class"].split()]
    assert len(earlier) == 2 * len(cells_drawn) == 8  # two earlier sweeps per cell, then this one
    assert [a["class"] for a in els.with_class("span", "now")] == [f"chip now {c['verdict']}" for c in again["cells"]]
    local = check_links(dom, page)
    assert any(link.endswith("report.html") and bisection["run_id"] in link for link in local)
    assert any(link.endswith("console.log") for link in local)
    assert "6.1.0-56-cloud-amd64 → 6.1.0-57-cloud-amd64" in dom
    index = world.results / "index.html"
    index_dom = dump_dom(index)
    assert f"sweep {data['sweep']['id']}" in index_dom and bisection["run_id"] in index_dom
    check_links(index_dom, index)
    screenshot(page, shots(world.results) / "matrix.png", size="1280,1100")
    screenshot(index, shots(world.results) / "index.png", size="1280,900")


@pytest.fixture()
def world(kbisect_home, monkeypatch, tmp_path) -> World:
    w = World(monkeypatch, tmp_path)

    def run_report(args: list[str], capsys) -> tuple[int, str, str]:
        return run_cli(args, capsys, w.deps)
    w.run_report = run_report
    return w


# -- kbisect report ---------------------------------------------------------------------------------

def test_report_command_regenerates_a_run_from_what_is_stored(kbisect_home, tmp_path, capsys) -> None:
    world = EvidenceBisect(FOUND, tmp=tmp_path / "v")
    code, out, _ = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                            "--quiet"], capsys, world.deps())
    data = json.loads(out)
    page = Path(data["report"])
    before = Document(page.read_text())
    page.unlink()
    code, out, err = run_cli(["report", "--run", data["run_id"]], capsys)
    assert code == 0 and err == "", err
    assert out.splitlines() == [f"report: {page}", f"index: {page.parent.parent / 'index.html'}"]
    again = Document(page.read_text())
    assert probe_rows(again) == probe_rows(before) and again.blocks == before.blocks  # excerpts from evidence.json
    assert json.loads(page.with_name("result.json").read_text()) == data
    # elsewhere: the page, its JSON beside it, links still leading to the run's files
    out_dir = tmp_path / "elsewhere"
    code, out, err = run_cli(["report", "--run", data["run_id"], "--out", str(out_dir)], capsys)
    assert code == 0, err
    moved = out_dir / "report.html"
    dom = dump_dom(moved)
    assert (out_dir / "result.json").is_file()
    assert sum(1 for link in check_links(dom, moved) if link.endswith("console.log")) == len(data["probes"])
    # only the index
    (page.parent.parent / "index.html").unlink()
    code, out, _ = run_cli(["report"], capsys)
    assert code == 0 and out.strip() == f"index: {page.parent.parent / 'index.html'}"
    assert data["run_id"] in (page.parent.parent / "index.html").read_text()


@pytest.mark.parametrize("args,message", [
    (["--run", "x", "--sweep", "1"], "give --run or --sweep, not both"),
    (["--run", "no-such-run"], "--run no-such-run: no result.json in "),
    (["--run", "../etc"], "a run id is a directory name"),
    (["--sweep", "99"], "--sweep 99: no such sweep"),
    (["--out", "/tmp"], "--out needs --run or --sweep"),
])
def test_report_command_bad_input_is_one_line(kbisect_home, capsys, args, message) -> None:
    code, out, err = run_cli(["report", *args], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("kbisect: error: ") and message in err, err
