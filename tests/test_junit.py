"""The sweep's junit.xml (issue 12): written beside matrix.html by the same call, one testcase per
cell (classname = reproducer, name = line and kernel), a bad cell a <failure>, a skip a <skipped>,
each with the reason and the log path; counts on the suite agree with the cells. The sweep runs
through `kbisect sweep` with tests/test_sweep.py's World (fake probe and Debian listing, no VM)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.adapters import report
from orchestrator.core.errors import SourceUnreachable
from orchestrator.core.verdict import Verdict
from tests.test_sweep import K55, K56, World, _entry

K510 = "debian:5.10.0-46-cloud-amd64"
ARGS = ["--bug", "gretap-ecn", "--bug", "veth-csum", "--line", "5.10", "--line", "6.1", "--line", "6.12",
        "--json", "--quiet"]


@pytest.fixture()
def world(kbisect_home, monkeypatch, tmp_path) -> World:
    return World(monkeypatch, tmp_path)


def test_junit_has_one_testcase_per_cell_with_failures_and_skips(world, capsys) -> None:
    assert world.run(ARGS, capsys)[0] == 0
    world.next_night()
    world.listing.append(_entry("6.1.0-56-cloud-amd64", "6.1.153"))
    world.verdicts[("gretap-ecn", K56)] = Verdict.BAD  # a regression
    world.verdicts[("veth-csum", K56)] = SourceUnreachable("apt-get download failed")  # a skip
    code, out, err = world.run(ARGS, capsys)
    assert code == 1, err
    data = json.loads(out)
    junit = Path(data["junit"])
    assert junit == Path(data["report"]).with_name("junit.xml")
    assert json.loads(Path(data["json"]).read_text())["junit"] == str(junit)

    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    cells = {(c["bug"], c["line"]): c for c in data["cells"]}
    bad = [c for c in data["cells"] if c["verdict"] == "bad"]
    skipped = [c for c in data["cells"] if c["verdict"] == "skip"]
    assert len(cells) == 6 and len(bad) == 1 and len(skipped) == 3  # 6.12 is unlisted: two skips there
    assert (int(suite.get("tests")), int(suite.get("failures")), int(suite.get("skipped"))) == (6, 1, 3)
    assert (int(root.get("tests")), int(root.get("failures")), int(root.get("skipped"))) == (6, 1, 3)
    assert len(cases) == 6 and sum(1 for c in cases if c.find("failure") is not None) == 1
    assert sum(1 for c in cases if c.find("skipped") is not None) == 3
    by_name = {(c.get("classname"), c.get("name")): c for c in cases}
    for (bug, line), cell in cells.items():
        case = by_name[(bug, f"{line} {cell['kernel'] or 'no reachable kernel'}")]
        outcome = case.find("failure") if cell["verdict"] == "bad" else case.find("skipped")
        if cell["verdict"] == "good":
            assert outcome is None and case.find("failure") is None
            continue
        assert outcome is not None and outcome.get("message") == cell["reason"]
        assert f"reason: {cell['reason']}" in outcome.text
    failure = by_name[("gretap-ecn", f"6.1 {K56}")].find("failure")
    assert failure.get("type") == "regression" and "good on 6.1.0-55-cloud-amd64" in failure.text
    assert by_name[("veth-csum", f"6.1 {K56}")].find("skipped").get("message").endswith("apt-get download failed")
    assert by_name[("gretap-ecn", f"5.10 {K510}")].find("failure") is None


def test_junit_names_the_log_path_of_a_cell(tmp_path) -> None:
    """A cell whose probe left a log (`log`, `artefacts`) names it in its failure and as an
    attachment, so a CI page links the evidence."""
    log = tmp_path / "probe" / "console.log"
    log.parent.mkdir()
    log.write_text("console\n")
    data = {"sweep": {"id": 7, "started_at": 0}, "bugs": ["b"], "lines": ["6.1"], "columns": [{"line": "6.1", "kernel": K55}],
            "counts": {"regression": 1, "fixed": 0, "new": 0, "unchanged": 0, "skip": 0}, "probes": {"probe": 1, "store": 0},
            "regressions": [], "fixed": [],
            "cells": [{"bug": "b", "line": "6.1", "kernel": K55, "verdict": "bad", "reason": "inner dst 18:bd", "seconds": 2.0,
                       "source": "probe", "runs": 1, "flag": "regression", "note": "good then, bad now", "log": str(log),
                       "artefacts": [str(log), str(tmp_path / "probe" / "dmesg.txt")]}]}
    report.write_matrix(data, tmp_path / "sweep")
    case = ET.parse(data["junit"]).getroot().find("testsuite/testcase")
    assert case.get("classname") == "b" and case.get("name") == f"6.1 {K55}" and case.get("time") == "2.000"
    text = case.find("failure").text
    assert f"log: {log}" in text and text.count(str(log)) == 1
    assert f"[[ATTACHMENT|{log}]]" in case.find("system-out").text
