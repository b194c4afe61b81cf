"""Quick tier (issue 13): fix bisection on fakes. The engine's states swapped (the old end shows
the bug, the new end does not), over the Debian 5.10 cloud ABIs reachable here (field notes:
5.10.0-30, -32, -43, -44, -45, -46) and over commits; the answer is last_bad and first_good, the
verdicts recorded are the reproducer's own, and the report says "fixed in"."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.adapters import catalog
from orchestrator.app.bisect import BisectDeps, BisectRequest
from orchestrator.app.commit_bisect import CommitBisectRequest, run_commit_bisect
from orchestrator.app.fix_bisect import run_fix_bisect
from orchestrator.core.engine import Candidate, Engine
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import ProbeRecord, Verdict
from tests.test_commit_bisect import BUG, CULPRIT, World, history  # noqa: F401 (fixture)

ABIS = [30, 32, 43, 44, 45, 46]
DEBIAN_510 = [SimpleNamespace(version=f"5.10.0-{n}-cloud-amd64", available=True) for n in ABIS]


@pytest.mark.parametrize("fixed_at", range(1, 8))
def test_the_engine_finds_the_first_good_after_bad_kernels(fixed_at):
    cands = [Candidate(f"k{i}") for i in range(8)]
    bad = {c.spec for c in cands[:fixed_at]}
    calls: list[str] = []

    def probe(cand: Candidate) -> ProbeRecord:
        calls.append(cand.spec)
        return ProbeRecord(cand.spec, "b", Verdict.BAD if cand.spec in bad else Verdict.GOOD, "fake")

    r = Engine(cands, probe, verify=1, fix=True).run()
    assert r.status.value == "found", r.stopped
    data = r.to_json()
    assert (data["last_bad"], data["first_good"]) == (f"k{fixed_at - 1}", f"k{fixed_at}")
    assert "last_good" not in data and "first_bad" not in data  # no field says the opposite of what it holds
    # the probes keep the reproducer's own verdicts, not the search's states
    assert {p["verdict"] for p in data["probes"] if p["kernel"] == f"k{fixed_at}"} == {"good"}
    assert len(set(calls)) <= 2 + 3  # ends + ceil(log2 8) midpoints


def test_the_engine_says_when_the_fix_is_older_or_missing():
    cands = [Candidate(f"k{i}") for i in range(4)]
    r = Engine(cands, lambda c: ProbeRecord(c.spec, "b", Verdict.GOOD, "fake"), verify=0, fix=True).run()
    assert r.status.value == "ends-disagree" and "is good: the fix is older than the range" in r.stopped
    r = Engine(cands, lambda c: ProbeRecord(c.spec, "b", Verdict.BAD, "fake"), verify=0, fix=True).run()
    assert r.status.value == "ends-disagree" and "the bug is still there" in r.stopped


class Debian510:
    """vxlan-zero-mac as measured: bad on 5.10.0-30 (5.10.218), good from 5.10.0-32 (5.10.223) on."""

    def __init__(self, fixed_from: int = 32) -> None:
        self.fixed_from = fixed_from
        self.probed: list[str] = []

    def deps(self) -> BisectDeps:
        def real_probe(bug, mirror):
            def probe(spec: str) -> ProbeRecord:
                self.probed.append(spec)
                abi = int(spec.split("-")[1])
                verdict = Verdict.BAD if abi < self.fixed_from else Verdict.GOOD
                return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})
            return probe

        return BisectDeps(list_kernels=lambda source, *_: DEBIAN_510 if source == "debian" else [],
                          real_probe=real_probe, kernel_ids=lambda _m: lambda spec: "id-" + spec)


@pytest.mark.parametrize("fixed_from", [32, 43, 46])
def test_a_fix_bisection_over_debian_abis_names_the_first_fixed_upload(fixed_from, kbisect_home):
    world = Debian510(fixed_from)
    bug = catalog.resolve("vxlan-zero-mac")
    data = run_fix_bisect(bug, BisectRequest(good="debian:5.10.0-46-cloud-amd64", bad="debian:5.10.0-30-cloud-amd64",
                                             verify_runs=1), world.deps())
    assert data["status"] == "found" and data["mode"] == "fix", data["stopped"]
    before = ABIS[ABIS.index(fixed_from) - 1]
    assert data["first_good"] == f"5.10.0-{fixed_from}-cloud-amd64"
    assert data["last_bad"] == f"5.10.0-{before}-cloud-amd64"
    assert data["origin"] == "distro" and data["lineage"].startswith("debian")
    assert len(set(world.probed)) <= 5
    html = Path(data["report"]).read_text()
    assert "Fixed in" in html and "first good" in html and f"5.10.0-{fixed_from}-cloud-amd64" in html
    saved = json.loads((Path(data["report"]).parent / "result.json").read_text())
    assert saved["first_good"] == data["first_good"] and saved["mode"] == "fix"


def test_a_fix_bisection_refuses_ends_in_the_wrong_order_or_lineage(kbisect_home):
    bug = catalog.resolve("vxlan-zero-mac")
    with pytest.raises(KbisectError, match="must be newer"):
        run_fix_bisect(bug, BisectRequest(good="debian:5.10.0-30-cloud-amd64", bad="debian:5.10.0-46-cloud-amd64"),
                       Debian510().deps())


def test_a_commit_fix_bisection_names_the_first_good_commit(history, kbisect_home):  # noqa: F811
    """The same history read the other way: the bug is there before CULPRIT and gone from it."""
    repo, shas = history

    class FixWorld(World):
        def probe(self, spec, bug):
            self.probes.append(spec)
            verdict = Verdict.GOOD if self.index(spec) >= CULPRIT else Verdict.BAD
            return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})

    world = FixWorld(shas)
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, good=shas[-1], bad=shas[0], verify_runs=1, fix=True),
                             world.deps(ranked=shas[CULPRIT]))
    assert data["status"] == "found" and data["mode"] == "fix"
    assert data["first_good_commit"]["sha"] == shas[CULPRIT] and data["last_bad_commit"]["sha"] == shas[CULPRIT - 1]
    assert world.builds[:2] == [shas[CULPRIT][:12], shas[CULPRIT - 1][:12]]  # the ranking's guess works here too
    assert any("ranking-guided" in n for n in data["notes"])


def test_bisect_fix_on_the_command_line(kbisect_home, capsys):
    from orchestrator.app.deps import provided
    from tests.test_catalog import run_cli

    with provided(Debian510(43).deps()):
        code, out, err = run_cli(["bisect", "--fix", "--bug", "vxlan-zero-mac", "--bad", "debian:5.10.0-30-cloud-amd64",
                                  "--good", "debian:5.10.0-46-cloud-amd64", "--verify", "1", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert (data["last_bad"], data["first_good"]) == ("5.10.0-32-cloud-amd64", "5.10.0-43-cloud-amd64")
    with provided(Debian510().deps()):
        code, out, err = run_cli(["bisect", "--fix", "--bug", "vxlan-zero-mac", "--bad", "debian:5.10.0-30-cloud-amd64",
                                  "--good", "debian:5.10.0-46-cloud-amd64", "--distro", "debian:bullseye"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("kbisect: error: --fix bisects the one lineage")


# -- the config difference across the boundary ------------------------------------------------

CONFIGS = {30: "CONFIG_VXLAN=m\nCONFIG_NET_UDP_TUNNEL=m\nCONFIG_FOO=y\n# CONFIG_BAR is not set\n",
           32: "CONFIG_VXLAN=y\nCONFIG_NET_UDP_TUNNEL=m\nCONFIG_BAR=m\n"}


def _with_configs(world: Debian510) -> BisectDeps:
    deps = world.deps()
    deps.kernel_config = lambda spec: CONFIGS.get(int(spec.split("-")[1]), CONFIGS[32])
    return deps


def test_the_report_shows_the_config_difference_with_the_bugs_options_first(kbisect_home, tmp_path):
    from tests.browser import Elements, dump_dom

    bug = catalog.resolve("vxlan-zero-mac")
    data = run_fix_bisect(bug, BisectRequest(good="debian:5.10.0-46-cloud-amd64", bad="debian:5.10.0-30-cloud-amd64",
                                             verify_runs=1), _with_configs(Debian510(32)))
    diff = data["config_diff"]
    assert (diff["from"], diff["to"]) == ("debian:5.10.0-30-cloud-amd64", "debian:5.10.0-32-cloud-amd64")
    assert [(c["option"], c["old"], c["new"], bool(c["why"])) for c in diff["changes"]] == [
        ("CONFIG_VXLAN", "m", "y", True),  # declared in vxlan-zero-mac's kconfig: first, and highlighted
        ("CONFIG_BAR", "n", "m", False), ("CONFIG_FOO", "y", "n", False)]
    assert diff["total"] == 3 and diff["bugs"] == 1
    dom = dump_dom(Path(data["report"]))
    rows = Elements(dom).with_class("tr", "hl")
    assert len(rows) == 1
    assert "CONFIG_VXLAN" in dom and "1 of them the bug's" in dom and "the other 2 options" in dom


def test_a_config_that_cannot_be_read_is_said_not_taken_for_no_difference(kbisect_home):
    bug = catalog.resolve("vxlan-zero-mac")
    deps = Debian510(32).deps()

    def missing(spec):
        raise KbisectError(f"{spec} is not in the kernel cache")

    deps.kernel_config = missing
    data = run_fix_bisect(bug, BisectRequest(good="debian:5.10.0-46-cloud-amd64", bad="debian:5.10.0-30-cloud-amd64",
                                             verify_runs=1), deps)
    assert "not in the kernel cache" in data["config_diff"]["missing"] and "changes" not in data["config_diff"]
    assert "Not compared" in Path(data["report"]).read_text()


def test_kconfig_under_the_bugs_paths_marks_options_defined_there(tmp_path):
    from orchestrator.app.bisect import kconfig_under_paths

    (tmp_path / "drivers" / "net").mkdir(parents=True)
    (tmp_path / "drivers" / "net" / "Kconfig").write_text("menuconfig NETDEVICES\n\tbool\nconfig VXLAN\n\ttristate\n")
    assert kconfig_under_paths(tmp_path, ["drivers/net/vxlan/vxlan_core.c", "drivers/net/veth.c"]) == {
        "CONFIG_NETDEVICES": "drivers/net/", "CONFIG_VXLAN": "drivers/net/"}
