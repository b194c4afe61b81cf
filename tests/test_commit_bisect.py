"""Commit bisection on a real git history with fake builds and probes (no compiler, no VM): the
engine's search over commits, build failures as skips, the ranking-guided start that ends in two
builds, and the first bad commit named with its subject. The real builds and boots are in
tests/test_builds_vm.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.app.commit_bisect import CommitBisectDeps, CommitBisectRequest, commits_between, run_commit_bisect
from orchestrator.core.bug import Bug
from orchestrator.core.errors import BuildFailed, KbisectError
from orchestrator.core.verdict import ProbeRecord, Verdict

SUBJECTS = ["base", "net: decoy one", "docs: decoy two", "fib: drop the loopback relaxation", "net: decoy three",
            "mm: decoy four", "net: decoy five", "tools: decoy six"]
CULPRIT = 3


@pytest.fixture()
def history(tmp_path) -> tuple[Path, list[str]]:
    repo = tmp_path / "linux"
    (repo / "net").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    shas = []
    for n, subject in enumerate(SUBJECTS):
        path = repo / ("net/ipv4/fib_frontend.c" if n == CULPRIT else f"net/f{n}.c")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"/* {subject} */\n")
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-qm", subject], check=True)
        shas.append(subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                                   text=True).stdout.strip())
    return repo, shas


class World:
    """Builds and probes by commit: bad from the culprit on; `broken` commits fail to build."""

    def __init__(self, shas: list[str], broken: tuple[int, ...] = ()) -> None:
        self.shas, self.broken = shas, broken
        self.builds: list[str] = []
        self.probes: list[str] = []

    def index(self, spec: str) -> int:
        return next(i for i, s in enumerate(self.shas) if spec.endswith(s[:12]))

    def build(self, req):
        i = next(i for i, s in enumerate(self.shas) if s == req.rev)
        self.builds.append(self.shas[i][:12])
        if i in self.broken:
            raise BuildFailed(f"make bzImage modules failed (exit 2) at {self.shas[i][:12]}")
        return SimpleNamespace(spec=f"local:{req.name}")

    def probe(self, spec: str, bug: Bug) -> ProbeRecord:
        self.probes.append(spec)
        verdict = Verdict.BAD if self.index(spec) >= CULPRIT else Verdict.GOOD
        return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})

    def deps(self, ranked: str | None = None) -> CommitBisectDeps:
        return CommitBisectDeps(build=self.build, probe=self.probe, kernel_id=lambda spec: "id-" + spec,
                                top_ranked=(lambda *a: ranked) if ranked is not None else None)


BUG = Bug(id="rp-filter-lo", dir=Path("."), keywords=["loopback"], paths=["net/ipv4/fib_frontend.c"])


def test_commits_are_listed_oldest_first_with_the_good_end_first(history) -> None:
    repo, shas = history
    commits = commits_between(repo, shas[0], shas[-1])
    assert [c.sha for c in commits] == shas and commits[CULPRIT].subject == SUBJECTS[CULPRIT]
    assert commits[1].spec == f"local:git-{shas[1][:12]}"
    with pytest.raises(KbisectError, match="is newer than .*the older revision of the range must come first"):
        commits_between(repo, shas[-1], shas[0])
    with pytest.raises(KbisectError, match="--repo"):
        commits_between(repo, "no-such-rev", shas[0])


def test_binary_search_names_the_first_bad_commit(history, kbisect_home) -> None:
    repo, shas = history
    world = World(shas)
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, guided=False),
                             world.deps())
    assert data["status"] == "found" and data["origin"] == "commit"
    assert data["first_bad_commit"] == {"sha": shas[CULPRIT], "subject": SUBJECTS[CULPRIT]}
    assert data["last_good_commit"]["sha"] == shas[CULPRIT - 1]
    assert data["builds"] == len(set(world.builds)) <= 5  # ends + ceil(log2 6) midpoints, each built once
    assert Path(data["report"]).is_file()


def test_a_commit_that_does_not_build_is_skipped_like_git_bisect_skip(history, kbisect_home) -> None:
    repo, shas = history
    world = World(shas, broken=(CULPRIT - 1,))  # the last good commit itself cannot be built
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, guided=False),
                             world.deps())
    # the boundary is then between the newest good that builds and the culprit: not a single commit
    assert data["status"] == "inconclusive", data["stopped"]
    assert shas[CULPRIT - 1][:12] in data["stopped"] and shas[CULPRIT][:12] in data["stopped"]


def test_the_ranking_guided_start_ends_in_two_builds(history, kbisect_home) -> None:
    repo, shas = history
    world = World(shas)
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=2),
                             world.deps(ranked=shas[CULPRIT]))
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas[CULPRIT]
    assert world.builds == [shas[CULPRIT][:12], shas[CULPRIT - 1][:12]]  # the guess, then its parent: two builds
    assert any("ranking-guided" in n for n in data["notes"])
    assert len(world.probes) == 2 + 2 * 2  # the two guesses, then each side verified twice
    assert [p["phase"] for p in data["probes"]] == ["bisect"] * 2 + ["verify"] * 4  # all in the report


def test_a_wrong_guess_falls_back_to_binary_search_and_still_finds_it(history, kbisect_home) -> None:
    repo, shas = history
    world = World(shas)
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1),
                             world.deps(ranked=shas[5]))  # a decoy ranked first
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas[CULPRIT]
    assert not any("ranking-guided" in n for n in data["notes"])


def test_the_default_ranking_reads_the_bugs_paths_and_keywords(history) -> None:
    from orchestrator.app.commit_bisect import top_ranked

    repo, shas = history
    assert top_ranked(repo, shas[0], shas[-1], BUG) == shas[CULPRIT]


def test_verify_revert_builds_the_first_bad_commit_reverted_and_probes_it_three_times(history, kbisect_home) -> None:
    """Built-in code included: the check is a whole-kernel build of the culprit with its own diff
    reverted (a patch of the build, like any --patch), probed 3x; good each time confirms."""
    repo, shas = history

    class RevertWorld(World):
        def build(self, req):
            if req.patches:  # the reverted culprit: the bug is gone
                self.reverted = req
                self.builds.append("revert")
                return SimpleNamespace(spec=f"local:{req.name}")
            return super().build(req)

        def probe(self, spec, bug):
            if spec.endswith("-revert"):
                self.probes.append(spec)
                return ProbeRecord(spec, bug.id, self.revert_verdict, "fake", {"run": 1.0})
            return super().probe(spec, bug)

    world = RevertWorld(shas)
    world.revert_verdict = Verdict.GOOD
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, verify_revert=True),
                             world.deps(ranked=shas[CULPRIT]))
    check = data["revert_check"]
    assert check["status"] == "confirmed" and check["verdicts"] == ["good"] * 3 and check["sha"] == shas[CULPRIT]
    assert world.reverted.rev == shas[CULPRIT] and world.reverted.name == f"git-{shas[CULPRIT][:12]}-revert"
    text = Path(world.reverted.patches[0]).read_text()
    assert "--- a/net/ipv4/fib_frontend.c" in text and "-/* fib: drop the loopback relaxation */" in text
    assert sum(1 for p in data["probes"] if p["phase"] == "revert") == 3  # in the report's evidence

    world = RevertWorld(shas)
    world.revert_verdict = Verdict.BAD  # the revert does not cure it: not this commit alone
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, verify_revert=True,
                                                      fresh=True), world.deps(ranked=shas[CULPRIT]))
    assert data["revert_check"]["status"] == "not-confirmed"


def test_verify_revert_says_plainly_when_the_reverted_build_fails(history, kbisect_home) -> None:
    repo, shas = history

    class NoRevert(World):
        def build(self, req):
            if req.patches:
                raise KbisectError("patch -p1 failed: 1 out of 1 hunk FAILED")
            return super().build(req)

    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, verify_revert=True),
                             NoRevert(shas).deps(ranked=shas[CULPRIT]))
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas[CULPRIT]  # the answer stands
    check = data["revert_check"]
    assert check["status"] == "not-run" and "hunk FAILED" in check["reason"]


# -- the automatic handover from a package bisection ----------------------------------------------

def test_a_package_bisection_hands_its_boundary_over_to_a_commit_bisection(kbisect_home, tmp_path, capsys) -> None:
    """`bisect --good 5.5 --bad 5.8 --repo CLONE --build`: kernels, not revisions, so the package
    bisection runs first (mainline 5.6 good, 5.7 bad), then the commits of v5.6..v5.7 are built
    and probed down to the culprit, whose revert is checked."""
    from orchestrator.app.commit_bisect import CommitBisectDeps
    from tests.test_uncovered import BUG as GRE, FOUND, FakeBisect, run_cli, tiny_linux

    sha = tiny_linux(tmp_path / "linux")
    built: list[tuple[str, bool]] = []

    def build(req):
        built.append((req.rev[:12], bool(req.patches)))
        return SimpleNamespace(spec=f"local:{req.name}")

    def probe(spec, bug):
        bad = sha[:12] in spec and not spec.endswith("-revert")
        return ProbeRecord(spec, bug.id, Verdict.BAD if bad else Verdict.GOOD, "fake", {"run": 1.0})

    commits = CommitBisectDeps(build=build, probe=probe, kernel_id=lambda spec: "id-" + spec)
    world = FakeBisect(FOUND, tmp=tmp_path / "v")
    code, out, err = run_cli(["bisect", "--bug", GRE, "--good", "5.5", "--bad", "5.8", "--repo", str(tmp_path / "linux"),
                              "--build", "--verify", "1", "--verify-revert", "--json", "--quiet"], capsys,
                             world.deps(), commits)
    assert code == 0, err[-2000:]
    data = json.loads(out)
    assert (data["last_good"], data["first_bad"], data["origin"]) == ("5.6", "5.7", "mainline")
    handed = data["commit_bisection"]
    assert (handed["good"], handed["bad"], handed["status"]) == ("v5.6", "v5.7", "found")
    assert handed["first_bad_commit"]["sha"] == sha
    assert handed["revert_check"]["status"] == "confirmed"
    assert (sha[:12], True) in built and Path(handed["report"]).is_file()
    assert "revert_check" not in data  # the package level's module-only check is not run besides
    # the package run's own result.json and report name the commit bisection and link its report
    stored = json.loads((Path(data["report"]).parent / "result.json").read_text())
    assert stored["commit_bisection"]["first_bad_commit"]["sha"] == sha
    from tests.browser import Elements, dump_dom

    dom = dump_dom(Path(data["report"]))
    links = [h for h in Elements(dom).hrefs() if h.endswith("report.html") and not h.startswith("http")]
    assert "Commit bisection" in dom and any((Path(data["report"]).parent / h).resolve() == Path(handed["report"])
                                             for h in links), links


def test_a_handover_range_the_clone_lacks_is_a_note_and_the_package_answer_stands(kbisect_home, tmp_path,
                                                                                  capsys) -> None:
    from orchestrator.app.commit_bisect import CommitBisectDeps
    from tests.test_uncovered import BUG as GRE, FakeBisect, run_cli, table, tiny_linux

    tiny_linux(tmp_path / "linux")
    world = FakeBisect(table(k5_5="good", k5_6="good", k5_7="good", k5_8="bad"), tmp=tmp_path / "v")  # v5.8: no tag
    never = CommitBisectDeps(build=lambda req: pytest.fail("built without a range"),
                             probe=lambda spec, bug: pytest.fail("probed without a range"))
    code, out, err = run_cli(["bisect", "--bug", GRE, "--good", "5.5", "--bad", "5.8", "--repo", str(tmp_path / "linux"),
                              "--build", "--verify", "1", "--json", "--quiet"], capsys, world.deps(), never)
    assert code == 0, err[-2000:]
    handed = json.loads(out)["commit_bisection"]
    assert handed["status"] == "not-run" and "v5.8 not in" in handed["reason"]


def test_paths_first_then_the_culprits_parent_beats_plain_binary_search(history, kbisect_home) -> None:
    """No ranking guess: the commits touching the bug's paths are bisected first (here the
    culprit alone), then the culprit's own parent closes the pair; fewer builds than the plain
    binary search over every commit, the same answer."""
    from orchestrator.app.commit_bisect import touching_paths

    repo, shas = history
    plain_world, paths_world = World(shas), World(shas)
    plain_deps = plain_world.deps()
    plain_deps.touching = None
    plain = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, guided=False),
                              plain_deps)
    paths_deps = paths_world.deps()
    paths_deps.touching = touching_paths
    first = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, guided=False,
                                                       fresh=True), paths_deps)
    assert plain["first_bad_commit"]["sha"] == first["first_bad_commit"]["sha"] == shas[CULPRIT]
    assert first["last_good_commit"]["sha"] == shas[CULPRIT - 1]
    assert any("paths first" in n and "neighbours" in n for n in first["notes"]), first["notes"]
    assert first["builds"] == 4 < plain["builds"] == 5  # ends, the culprit, its parent / ends + 3 midpoints


def test_paths_first_falls_back_when_the_culprit_touches_none_of_the_paths(history, kbisect_home) -> None:
    repo, shas = history
    world = World(shas)
    deps = world.deps()
    deps.touching = lambda *a: {shas[5]}  # a decoy touches the paths; the culprit (3) does not
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=1, guided=False), deps)
    assert data["status"] == "found" and data["first_bad_commit"]["sha"] == shas[CULPRIT]
    assert any("the commits between were bisected too" in n for n in data["notes"]), data["notes"]


# -- a Debian boundary handed over to the upstream stable tags ------------------------------------

def _debian_world(upstream_55: str):
    """Debian 6.1.0-53..56 listed with the upstream release each package version names (6.1.0-54
    is 6.1.170-1 and so on, as Debian's package versions carry it); -55 and later are bad."""
    from tests.test_uncovered import FakeBisect

    ups = {53: "6.1.169", 54: "6.1.170", 55: upstream_55, 56: "6.1.172"}
    listing = [SimpleNamespace(version=f"6.1.0-{n}-cloud-amd64", available=True, upstream=up) for n, up in ups.items()]
    world = FakeBisect({f"6.1.0-{n}-cloud-amd64": ["bad" if n >= 55 else "good"] for n in ups})
    deps = world.deps()
    deps.list_kernels = lambda source, *_: listing if source == "debian" else []
    return deps


def _stable_clone(root: Path, tags: list[str]) -> str:
    """v6.1.170, then the culprit (rp-filter-lo's path), then v6.1.171 (tags as named)."""
    import git

    repo = git.Repo.init(root, initial_branch="linux-6.1.y")
    actor = git.Actor("Dev", "dev@example.invalid")
    src = root / "net" / "ipv4" / "fib_frontend.c"
    src.parent.mkdir(parents=True)
    src.write_text("/* 6.1.170 */\n")
    repo.index.add([str(src.relative_to(root))])
    repo.index.commit("Linux 6.1.170", author=actor, committer=actor)
    if "v6.1.170" in tags:
        repo.create_tag("v6.1.170")
    src.write_text("/* 6.1.170 */\n/* loopback check dropped */\n")
    repo.index.add([str(src.relative_to(root))])
    sha = repo.index.commit("fib: drop the loopback relaxation", author=actor, committer=actor).hexsha
    (root / "Makefile").write_text("SUBLEVEL = 171\n")
    repo.index.add(["Makefile"])
    repo.index.commit("Linux 6.1.171", author=actor, committer=actor)
    if "v6.1.171" in tags:
        repo.create_tag("v6.1.171")
    return sha


def _hand_over_debian(tmp_path, capsys, upstream_55: str, tags: list[str]):
    from tests.test_uncovered import run_cli

    culprit = _stable_clone(tmp_path / "linux", tags)
    built: list[str] = []

    def build(req):
        built.append(req.rev)
        return SimpleNamespace(spec=f"local:{req.name}")

    def probe(spec, bug):
        out = subprocess.run(["git", "-C", str(tmp_path / "linux"), "merge-base", "--is-ancestor", culprit,
                              next(r for r in built if spec.endswith(r[:12]))])
        verdict = Verdict.BAD if out.returncode == 0 else Verdict.GOOD
        return ProbeRecord(spec, bug.id, verdict, "fake", {"run": 1.0})

    commits = CommitBisectDeps(build=build, probe=probe, kernel_id=lambda spec: "id-" + spec,
                               top_ranked=None, touching=None)
    code, out, err = run_cli(["bisect", "--bug", "rp-filter-lo", "--good", "debian:6.1.0-53-cloud-amd64",
                              "--bad", "debian:6.1.0-56-cloud-amd64", "--repo", str(tmp_path / "linux"), "--build",
                              "--verify", "1", "--json", "--quiet"], capsys, _debian_world(upstream_55), commits)
    return code, json.loads(out) if out.strip() else {}, err, culprit


def test_a_debian_boundary_hands_over_to_the_stable_tags_of_its_packages(kbisect_home, tmp_path, capsys) -> None:
    code, data, err, culprit = _hand_over_debian(tmp_path, capsys, "6.1.171", ["v6.1.170", "v6.1.171"])
    assert code == 0, err[-2000:]
    assert (data["last_good"], data["first_bad"]) == ("6.1.0-54-cloud-amd64", "6.1.0-55-cloud-amd64")
    assert data["boundary_upstream"] == {"last_good": "6.1.170", "first_bad": "6.1.171"}
    handed = data["commit_bisection"]
    assert (handed["good"], handed["bad"], handed["status"]) == ("v6.1.170", "v6.1.171", "found"), handed
    assert handed["first_bad_commit"]["sha"] == culprit


def test_a_debian_boundary_within_one_upstream_release_is_debians_own(kbisect_home, tmp_path, capsys) -> None:
    code, data, err, _ = _hand_over_debian(tmp_path, capsys, "6.1.170", ["v6.1.170", "v6.1.171"])
    assert code == 4, err[-2000:]  # the package answer's own exit: its origin stays undecided
    handed = data["commit_bisection"]
    assert handed["status"] == "not-run" and "both built from upstream 6.1.170" in handed["reason"]
    assert "Debian's own" in handed["reason"]


def test_a_clone_without_the_stable_tags_is_told_which_to_fetch(kbisect_home, tmp_path, capsys) -> None:
    code, data, err, _ = _hand_over_debian(tmp_path, capsys, "6.1.171", ["v6.1.170"])
    assert code == 4, err[-2000:]
    handed = data["commit_bisection"]
    assert handed["status"] == "not-run" and "v6.1.171 not in" in handed["reason"]
    assert "git fetch" in handed["reason"] and "tag v6.1.171" in handed["reason"]


@pytest.mark.parametrize("runs, status, asked", [
    (["good", "skip", "good", "good"], "confirmed", 4),  # a boot that timed out is asked again
    (["good", "bad", "good"], "not-confirmed", 3),
    (["skip"] * 6, "not-confirmed", 6),  # no evidence at all: unconfirmed, never good
    (["skip", "skip", "skip", "good", "good", "skip"], "not-confirmed", 6),  # two good runs are not three
])
def test_the_revert_check_asks_a_skipped_run_again_and_confirms_only_on_three_goods(runs, status, asked) -> None:
    from orchestrator.app.bisect import revert_verdicts
    from orchestrator.core.engine import Candidate

    answers = iter(runs)
    seen: list[str] = []

    def prober(cand):
        seen.append(cand.spec)
        return Verdict(next(answers))

    check = revert_verdicts(BUG, prober, Candidate("local:git-abc-revert"), None)
    assert check["status"] == status and len(seen) == asked and check["verdicts"] == runs[:asked]
