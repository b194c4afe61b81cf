"""Commit bisection over real merge histories (fake builds and probes, real git): the culprit on a
side branch next to a good commit of the other branch, a merge that is itself the answer, a side
branch forked before the good end, a fork point that contradicts the history, the revert check of
a merge, and a commit whose config cannot be met. Each named a wrong commit, or lost the answer,
when the range was walked as a date-ordered line (issue 19). The core search alone, on synthetic
graphs, is at the end."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.app.commit_bisect import CommitBisectDeps, CommitBisectRequest, run_commit_bisect
from orchestrator.core.bug import Bug
from orchestrator.core.dag import CommitGraph, DagEngine
from orchestrator.core.engine import BisectStatus, Candidate
from orchestrator.core.errors import ConfigUnmet, KernelTrouble
from orchestrator.core.verdict import ProbeRecord, Verdict
from tests.commit_graphs import date_order, graph_repo

BUG = Bug(id="rp-filter-lo", dir=Path("."), keywords=["loopback"], paths=["net/ipv4/fib_frontend.c"])


def descendants(repo: Path, culprit: str, shas: dict[str, str]) -> set[str]:
    """The commits that contain `culprit` (it included): bad under git bisect's assumption."""
    out = set()
    for sha in shas.values():
        if subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", culprit, sha]).returncode == 0:
            out.add(sha)
    return out


class GraphWorld:
    """Builds and probes by commit: bad exactly for the shas in `bad`; `unbuildable` raise what
    the build raises for them."""

    def __init__(self, shas: dict[str, str], bad: set[str], unbuildable: dict[str, Exception] | None = None) -> None:
        self.names = {sha: name for name, sha in shas.items()}
        self.bad = bad
        self.unbuildable = {shas[n]: e for n, e in (unbuildable or {}).items()}
        self.builds: list[str] = []
        self.reverted: list = []

    def sha(self, spec: str) -> str:
        return next(s for s in self.names if spec.split(":", 1)[1].startswith(f"git-{s[:12]}"))

    def build(self, req):
        if req.patches:
            self.reverted.append(req)
            return SimpleNamespace(spec=f"local:{req.name}")
        self.builds.append(self.names[req.rev])
        if req.rev in self.unbuildable:
            raise self.unbuildable[req.rev]
        return SimpleNamespace(spec=f"local:{req.name}")

    def probe(self, spec: str, bug: Bug) -> ProbeRecord:
        if spec.endswith("-revert"):
            return ProbeRecord(spec, bug.id, Verdict.GOOD, "fake: reverted", {"run": 1.0})
        verdict = Verdict.BAD if self.sha(spec) in self.bad else Verdict.GOOD
        return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})

    def deps(self, ranked: str | None = None, touching: set[str] | None = None) -> CommitBisectDeps:
        return CommitBisectDeps(build=self.build, probe=self.probe, kernel_id=lambda spec: "id-" + spec,
                                top_ranked=(lambda *a: ranked) if ranked else None,
                                touching=(lambda *a: touching) if touching is not None else None)


# The culprit s2 sits on a side branch forked from the good end; by date the list reads
# base, s1, s2, m1, m2, s3, M, m3: a line walk probes m1 (good) and m2 (good) and names s3,
# whose parent s2 is bad. git bisect's walk names s2.
SIDE = [("base", [], "a"), ("s1", ["base"], "net/s1.c"), ("s2", ["s1"], "net/ipv4/fib_frontend.c"),
        ("m1", ["base"], "net/m1.c"), ("m2", ["m1"], "net/m2.c"), ("s3", ["s2"], "net/s3.c"),
        ("M", ["m2", "s3"], "merge"), ("m3", ["M"], "net/m3.c")]


@pytest.fixture()
def side(tmp_path):
    repo = tmp_path / "linux"
    shas = graph_repo(repo, SIDE)
    return repo, shas


def test_a_side_branch_culprit_is_named_with_its_real_parent(side, kbisect_home) -> None:
    repo, shas = side
    listed = date_order(repo, shas["base"], shas["m3"])
    assert [s for s in listed].index(shas["m1"]) == listed.index(shas["s2"]) + 1  # a good neighbour by date
    world = GraphWorld(shas, descendants(repo, shas["s2"], shas))
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["base"], shas["m3"], verify_runs=1, guided=False),
                             world.deps())
    assert data["status"] == "found", data["stopped"]
    assert data["first_bad_commit"]["sha"] == shas["s2"]
    assert data["parent_commits"] == [{"sha": shas["s1"], "subject": "s1"}] and data["merge"] is False
    assert data["last_good_commit"]["sha"] == shas["s1"]  # its parent, not its neighbour by date
    assert "s1" in world.builds  # the parent was built and probed, not assumed


def test_paths_first_on_a_merge_history_still_tests_the_real_parent(side, kbisect_home) -> None:
    repo, shas = side
    world = GraphWorld(shas, descendants(repo, shas["s2"], shas))
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["base"], shas["m3"], verify_runs=1, guided=False),
                             world.deps(touching={shas["s2"], shas["m2"]}))
    assert data["first_bad_commit"]["sha"] == shas["s2"] and data["last_good_commit"]["sha"] == shas["s1"]
    assert any("paths first" in n and "neighbours" in n for n in data["notes"]), data["notes"]


def test_a_wrong_ranking_guess_on_the_other_branch_is_survived(side, kbisect_home) -> None:
    repo, shas = side
    world = GraphWorld(shas, descendants(repo, shas["s2"], shas))
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["base"], shas["m3"], verify_runs=1),
                             world.deps(ranked=shas["m2"]))  # a good decoy on the main branch
    assert data["first_bad_commit"]["sha"] == shas["s2"] and not any("ranking-guided" in n for n in data["notes"])


# Both branches are fine alone; the merge that combines them is bad (a semantic conflict).
MERGE = [("base", [], "a"), ("m1", ["base"], "net/m1.c"), ("s1", ["base"], "net/s1.c"),
         ("M", ["m1", "s1"], "merge"), ("m2", ["M"], "net/m2.c")]


def test_a_merge_is_the_answer_only_with_every_parent_good_and_says_so(tmp_path, kbisect_home) -> None:
    repo = tmp_path / "linux"
    shas = graph_repo(repo, MERGE)
    world = GraphWorld(shas, {shas["M"], shas["m2"]})
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["base"], shas["m2"], verify_runs=1, guided=False,
                                                      verify_revert=True), world.deps())
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas["M"]
    assert data["merge"] is True and {c["sha"] for c in data["parent_commits"]} == {shas["m1"], shas["s1"]}
    assert {"m1", "s1"} <= set(world.builds)
    assert any("is a merge" in n for n in data["notes"]), data["notes"]
    # the revert check of a merge: against its first parent, never a lost answer
    check = data["revert_check"]
    assert check["status"] == "confirmed" and "-m 1" in check["merge"], check
    patch = Path(world.reverted[0].patches[0])
    assert "net/s1.c" in patch.read_text() and "net/m1.c" not in patch.read_text()  # the side branch undone
    assert patch.parent == kbisect_home / "builds" / "reverts"  # in the home, not a temporary directory
    # the report, as chromium renders it, names both parents and what a merge answer means
    from tests.browser import Elements, dump_dom

    text = Elements(dump_dom(Path(data["report"]))).text_of["parents"]
    assert shas["m1"][:12] in text and shas["s1"][:12] in text and "is a merge" in text, text


def test_the_revert_check_of_a_merge_is_not_run_when_it_cannot_apply_and_the_answer_stands(tmp_path,
                                                                                              kbisect_home) -> None:
    repo = tmp_path / "linux"
    shas = graph_repo(repo, MERGE)
    world = GraphWorld(shas, {shas["M"], shas["m2"]})
    deps = world.deps()

    def no_patch(req):
        if req.patches:
            raise KernelTrouble("patch -p1 failed: 1 out of 1 hunk FAILED")
        return world.build(req)

    deps.build = no_patch
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["base"], shas["m2"], verify_runs=1, guided=False,
                                                      verify_revert=True), deps)
    assert data["first_bad_commit"]["sha"] == shas["M"] and data["revert_check"]["status"] == "not-run"
    assert Path(data["report"]).is_file()


# A side branch forked BEFORE the good end G and merged after it: its commits are in G..bad
# (git bisect's range) though not on the ancestry path; the culprit's parent is the fork point,
# outside the range, and only implied good until it is probed.
FORK = [("old", [], "a"), ("G", ["old"], "net/g.c"), ("s1", ["old"], "net/ipv4/fib_frontend.c"),
        ("m1", ["G"], "net/m1.c"), ("M", ["m1", "s1"], "merge"), ("m2", ["M"], "net/m2.c")]


def test_a_branch_forked_before_the_good_end_is_searched_and_its_fork_point_probed(tmp_path, kbisect_home) -> None:
    repo = tmp_path / "linux"
    shas = graph_repo(repo, FORK)
    assert shas["s1"] not in date_order(repo, shas["G"], shas["m2"])  # a line walk never saw it
    world = GraphWorld(shas, descendants(repo, shas["s1"], shas))
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["G"], shas["m2"], verify_runs=1, guided=False),
                             world.deps())
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas["s1"]
    assert data["parent_commits"] == [{"sha": shas["old"], "subject": "old"}] and "old" in world.builds


def test_a_fork_point_that_shows_the_bug_makes_the_answer_unstable(tmp_path, kbisect_home) -> None:
    repo = tmp_path / "linux"
    shas = graph_repo(repo, FORK)
    bad = descendants(repo, shas["s1"], shas) | {shas["old"]}  # fixed by G, brought back by the merge
    world = GraphWorld(shas, bad)
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["G"], shas["m2"], verify_runs=1, guided=False),
                             world.deps())
    assert data["status"] == "unstable" and shas["old"][:12] in data["stopped"], data["stopped"]
    assert data["origin"] is None


def test_a_commit_whose_config_cannot_be_met_is_a_skip_not_the_end_of_the_run(side, kbisect_home) -> None:
    repo, shas = side
    world = GraphWorld(shas, descendants(repo, shas["s2"], shas),
                       unbuildable={"m2": ConfigUnmet("config of the tree: 1 requirement(s) not met: CONFIG_X")})
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas["base"], shas["m3"], verify_runs=1, guided=False),
                             world.deps(touching={shas["m2"]}))
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas["s2"]
    skipped = [p for p in data["probes"] if p["label"] == shas["m2"][:12]]
    assert skipped and skipped[0]["verdict"] == "skip" and "CONFIG_X" in skipped[0]["reason"]


def test_the_builds_config_check_raises_a_skip_for_the_commit(tmp_path, kbisect_home) -> None:
    """The real check (make olddefconfig, then the resolved .config read back) on a tree whose
    Kconfig lacks the option: a KernelTrouble, which a bisection's policy turns into a skip."""
    from orchestrator.adapters.builds import trees
    from orchestrator.adapters.builds.kmake import BuildPlan, configure
    from orchestrator.app.policy import Decision, decide
    from orchestrator.core.kconfig import Requirement

    root = tmp_path / "linux"
    root.mkdir()
    (root / "Makefile").write_text("VERSION = 5\nPATCHLEVEL = 7\nSUBLEVEL = 0\nEXTRAVERSION = -rc4\n"
                                   "olddefconfig:\n\t@true\n")
    (root / "Kconfig").write_text("mainmenu \"Linux\"\n")
    plan = BuildPlan(trees.from_dir(root), "file", "CONFIG_NET=y\n", [Requirement.parse("CONFIG_VXLAN")])
    obj = tmp_path / "obj"
    obj.mkdir()
    with open(tmp_path / "log", "wb") as log, pytest.raises(ConfigUnmet, match="CONFIG_VXLAN") as info:
        configure(plan, obj, log)
    assert decide(info.value) is Decision.SKIP


# -- the core search on synthetic graphs ----------------------------------------------------------

def _graph(edges: dict[str, tuple[str, ...]], good: str, bad: str) -> CommitGraph:
    order = [s for s in edges]  # given parents first
    names = set(edges) | {p for ps in edges.values() for p in ps} | {good}
    return CommitGraph(good=good, bad=bad, order=order, parents=edges,
                       candidates={n: Candidate(f"local:git-{n}", label=n) for n in names})


def _probe(bad: set[str], seen: list[str], skip: set[str] = frozenset()):
    def probe(cand: Candidate):
        name = cand.label
        seen.append(name)
        return Verdict.SKIP if name in skip else Verdict.BAD if name in bad else Verdict.GOOD
    return probe


def test_on_a_line_the_graph_search_probes_as_few_kernels_as_binary_search() -> None:
    names = [f"c{i}" for i in range(1, 65)]
    edges = {n: ((names[i - 1],) if i else ("c0",)) for i, n in enumerate(names)}
    for culprit in (1, 17, 40, 64):
        seen: list[str] = []
        res = DagEngine(_graph(edges, "c0", "c64"), _probe({f"c{i}" for i in range(culprit, 65)}, seen),
                        verify=0).run()
        assert res.status is BisectStatus.FOUND and res.first_bad.label == f"c{culprit}"
        assert len(set(seen)) <= 2 + 6 + 1  # the ends, log2(64) splits, and at most the parent itself


def test_only_skipped_commits_left_is_inconclusive_naming_them() -> None:
    edges = {"a": ("g",), "b": ("a",), "c": ("b",), "d": ("c",)}
    res = DagEngine(_graph(edges, "g", "d"), _probe({"c", "d"}, [], skip={"b", "c"}), verify=0).run()
    assert res.status is BisectStatus.INCONCLUSIVE
    assert [c.label for c in res.suspects] == ["b", "c", "d"]


def test_a_fix_search_names_the_first_good_commit_with_bad_parents() -> None:
    edges = {"a": ("g",), "s": ("g",), "m": ("a", "s"), "b": ("m",)}
    # the fix is s (side branch); bad means "the bug is there": g, a bad; s, m, b good
    res = DagEngine(_graph(edges, "g", "b"), _probe({"g", "a"}, []), verify=1, fix=True).run()
    assert res.status is BisectStatus.FOUND and res.first_bad.label == "s" and [c.label for c in res.parents] == ["g"]


@pytest.mark.parametrize("spec, good, bad", [(SIDE, "base", "m3"), (FORK, "G", "m2"), (MERGE, "base", "m2")],
                         ids=["side", "fork", "merge"])
def test_the_first_split_is_as_good_as_git_rev_list_bisect(tmp_path, kbisect_home, spec, good, bad) -> None:
    """The search's first commit after the ends has the best distance git itself computes
    (`git rev-list --bisect-all`: dist = min(ancestors in the range, the rest))."""
    repo = tmp_path / "linux"
    shas = graph_repo(repo, spec)
    out = subprocess.run(["git", "-C", str(repo), "rev-list", "--bisect-all", shas[bad], "^" + shas[good]],
                         capture_output=True, text=True, check=True).stdout
    dist = {line.split()[0]: int(line.split("dist=")[1].rstrip(")")) for line in out.splitlines() if "dist=" in line}
    world = GraphWorld(shas, {shas[bad]})  # only the bad end is bad: the first split is still probed
    order: list[str] = []
    probe = world.probe
    world.probe = lambda spec_, bug: (order.append(world.sha(spec_)), probe(spec_, bug))[1]
    run_commit_bisect(BUG, CommitBisectRequest(repo, shas[good], shas[bad], verify_runs=0, guided=False), world.deps())
    first = next(s for s in order if s not in (shas[good], shas[bad]))
    assert dist[first] == max(dist.values()), (first, dist)
