"""Slow tier (issues 13, 19): whole kernels built from Debian's linux-source-6.1 with the guest
config, booted in kbisect's VM; a commit bisection over a small real history with a merge on top
of that source finds a planted side-branch culprit with real incremental builds and boots (the
ranking's guess wrong, one commit that does not compile), and its revert check confirms it; the
whole-kernel positive controls of the two built-in fixes say BAD and their build without the
patch says GOOD (`kbisect bugs verify`).

kbisect records Debian's source as a git repository (adapters.builds.trees.debian_repo); the
history is a branch of that very repository (make_merge_history: the culprit is rp-filter-lo's
fix 66f8209547cc reverted in net/ipv4/fib_frontend.c, always built in:
reproducers/rp-filter-lo/controls/revert-66f8209547cc.patch). So every build here
(the base, the bisection's steps, the revert check, both controls) goes through one worktree and
one build directory with ccache: one full build (the whole catalog's config, BTF included for
gro-inner-th; about 15 minutes on 2 cores from an empty cache, none with a warm one), and every
other build recompiles a file or two and relinks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.registry]

REPO = Path(__file__).resolve().parent.parent
BUGS = ["gretap-ecn", "gro-inner-th", "ipvs-gue-mtu", "rp-filter-lo", "veth-csum", "vxlan-zero-mac"]
REVERT = REPO / "reproducers" / "rp-filter-lo" / "controls" / "revert-66f8209547cc.patch"


def kbisect(args: list[str], home: Path, results: Path, timeout: float = 5400) -> subprocess.CompletedProcess:
    env = dict(os.environ, KBISECT_HOME=str(home), KBISECT_RESULTS=str(results))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=kbisect tests", "-c", "user.email=tests@kbisect.invalid", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, subject: str) -> str:
    _git(repo, "add", "-f", "-A")  # Debian's source .gitignore ignores the top level (field notes)
    _git(repo, "commit", "-q", "-m", subject)
    return _git(repo, "rev-parse", "HEAD")


def build(home: Path, results: Path, *args: str) -> tuple[str, float]:
    t0 = time.monotonic()
    proc = kbisect(["kernels", "build", *[a for b in BUGS for a in ("--bug", b)], *args], home, results)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1], time.monotonic() - t0


@pytest.fixture(scope="module")
def base_kernel(merge_history, shared_home, tmp_path_factory) -> str:
    # through --linux-source: the same repository, revision and build directory as --repo would use
    spec, seconds = build(shared_home, tmp_path_factory.mktemp("results"), "--linux-source", "6.1")
    print(f"\nguest build of linux-source-6.1 (base): {spec} in {seconds:.0f} s")
    return spec


def test_the_build_says_how_it_was_built(base_kernel, merge_history, shared_home, tmp_path) -> None:
    repo, shas = merge_history
    proc = kbisect(["kernels", "show", base_kernel, "--json"], shared_home, tmp_path)
    (info,) = json.loads(proc.stdout)
    record = info["build"]
    assert record["source"] == {**record["source"], "kind": "debian", "package": "linux-source-6.1",
                                "commit": shas["base"], "repo": str(repo)}
    assert record["config"] == "guest" and "CONFIG_VXLAN" in record["requirements"]
    assert "CONFIG_DEBUG_INFO_BTF=y" in record["requirements"]  # gro-inner-th's oracle reads BTF
    text = (Path(info["root"]) / "config").read_text().splitlines()
    for line in ("CONFIG_VIRTIO_BLK=y", "CONFIG_VXLAN=m", "CONFIG_IP_VS=m", "CONFIG_NET_SCH_NETEM=m",
                 "CONFIG_DEBUG_INFO_BTF=y", "# CONFIG_DRM is not set"):
        assert line in text, line
    assert info["module_files"] > 10 and Path(info["root"], "config").is_file()


def test_the_built_kernel_passes_the_reproducers_in_one_vm(base_kernel, shared_home, tmp_path) -> None:
    proc = kbisect(["sweep", "--kernel", base_kernel, *[a for b in BUGS for a in ("--bug", b)], "--fresh",
                    "--json"], shared_home, tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    verdicts = {c["bug"]: (c["verdict"], c["reason"]) for c in data["cells"]}
    assert all(v == "good" for v, _r in verdicts.values()), verdicts
    # one shared VM, and one of its own for gro-inner-th (isolate: true)
    assert data["boots_by_kind"] == {**data["boots_by_kind"], "shared": 1, "isolated": 1} and data["boots"] == 2


MERGE_VERSION = "1"  # bump when the merge history below changes (it names the branch)
NOT_BUILDABLE = "#error kbisect test: this commit does not build\n"


def make_merge_history(home: Path) -> tuple[Path, dict[str, str]]:
    """A real history with a merge on Debian's linux-source-6.1, every commit touching
    rp-filter-lo's path net/ipv4/fib_frontend.c (so the paths pass cannot tell them apart):

        base ── decoy ─────────────────────────┐
           └── broken ── fixup ── culprit ──── merge

    The decoy (main branch) names the bug's keywords in its subject and changes only a comment:
    the ranking puts it first and it is good. On the side branch `broken` does not compile,
    `fixup` repairs it, and the culprit (rp-filter-lo's fix reverted) has a subject with none of
    the bug's words. The merge of both branches is the bad end."""
    from orchestrator.adapters.builds.trees import DEBIAN_TAG, debian_repo
    from orchestrator.adapters.progress import StepLog
    from orchestrator.adapters.variants.packages import DebianPackages

    os.environ["KBISECT_HOME"] = str(home)
    repo, _origin = debian_repo("6.1", DebianPackages(), StepLog(label="test"))
    branch = f"kbisect-test-merge-v{MERGE_VERSION}"
    work = home / "test-repos" / f".{branch}.work"
    shutil.rmtree(work, ignore_errors=True)
    _git(repo, "worktree", "prune")
    _git(repo, "worktree", "add", "-q", "--force", "-B", branch, str(work), DEBIAN_TAG)
    fib = work / "net" / "ipv4" / "fib_frontend.c"
    try:
        shas = {"base": _git(repo, "rev-parse", DEBIAN_TAG + "^{commit}")}
        _git(work, "checkout", "-q", "-B", f"{branch}-side", shas["base"])
        original = fib.read_text()
        fib.write_text(original + NOT_BUILDABLE)
        shas["broken"] = _commit(work, "fib: start a local helper")
        fib.write_text(original)
        shas["fixup"] = _commit(work, "fib: finish the local helper")
        subprocess.run(["patch", "-p1", "--batch", "--fuzz=0", "-d", str(work), "-i", str(REVERT)], check=True,
                       capture_output=True)
        shas["culprit"] = _commit(work, "fib: simplify the device match")
        _git(work, "checkout", "-q", branch)
        fib.write_text(original + "/* Note on loopback packets, rp_filter and martian sources: a comment. */\n")
        shas["decoy"] = _commit(work, "fib: document loopback source validation and rp_filter")
        _git(work, "merge", "-q", "--no-ff", "-m", "Merge branch 'fib-helpers'", f"{branch}-side")
        shas["merge"] = _git(work, "rev-parse", "HEAD")
        assert NOT_BUILDABLE not in fib.read_text()
    finally:
        _git(repo, "worktree", "remove", "--force", str(work))
    return repo, shas


@pytest.fixture(scope="module")
def merge_history(vm_host, shared_home) -> tuple[Path, dict[str, str]]:
    names = shared_home / "test-repos" / f"linux-6.1-merge-v{MERGE_VERSION}.json"
    if names.is_file():
        record = json.loads(names.read_text())
        repo = Path(record["repo"])
        if (repo / ".git").is_dir() and subprocess.run(["git", "-C", str(repo), "cat-file", "-e",
                                                        record["shas"]["merge"]]).returncode == 0:
            return repo, record["shas"]
    names.parent.mkdir(parents=True, exist_ok=True)
    repo, shas = make_merge_history(shared_home)
    names.write_text(json.dumps({"repo": str(repo), "shas": shas}))
    return repo, shas


def test_commit_bisection_over_a_merge_names_the_side_branch_culprit(base_kernel, merge_history, shared_home,
                                                                       tmp_path) -> None:
    """Real builds and boots over a merge history: the ranking's guess (the decoy) is probed
    first and is good, the commit that does not compile is a skip, and the culprit on the side
    branch is named, tested against its real parent (the fixup, built and probed good, not the
    decoy that precedes it by date). Then --verify-revert builds the culprit with itself reverted
    (built-in code: a whole kernel, incrementally) and probes it three times."""
    repo, shas = merge_history
    t0 = time.monotonic()
    proc = kbisect(["bisect", "--bug", "rp-filter-lo", "--repo", str(repo), "--good", shas["base"],
                    "--bad", shas["merge"], "--build", *[a for b in BUGS for a in ("--kconfig-for", b)],
                    "--verify", "1", "--verify-revert", "--fresh", "--json"], shared_home, tmp_path / "results")
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    print(f"\ncommit bisection over a merge: {data['builds']} build(s), {len(data['probes'])} probe(s), "
          f"{seconds:.0f} s")
    assert data["status"] == "found" and data["origin"] == "commit", data["stopped"]
    assert data["first_bad_commit"]["sha"] == shas["culprit"]
    assert data["parent_commits"] == [{"sha": shas["fixup"], "subject": "fib: finish the local helper"}]
    assert data["merge"] is False and not any("ranking-guided" in n for n in data["notes"])
    verdicts = {p["label"]: p["verdict"] for p in data["probes"] if p["phase"] != "verify"}
    assert verdicts[shas["decoy"][:12]] == "good"  # the ranking's wrong guess, probed and survived
    assert verdicts[shas["broken"][:12]] == "skip"  # it does not compile: skipped, as git bisect skip
    assert verdicts[shas["fixup"][:12]] == "good" and verdicts[shas["culprit"][:12]] == "bad"
    bad = [p for p in data["probes"] if p["verdict"] == "bad"]
    assert bad and all("fails with rp_filter=1" in p["reason"] for p in bad), bad
    check = data["revert_check"]
    assert check["status"] == "confirmed" and check["sha"] == shas["culprit"], check
    assert [v for v in check["verdicts"] if v != "skip"] == ["good"] * 3  # a skipped boot is run again
    assert Path(data["report"]).is_file()


def test_whole_kernel_controls_of_built_in_fixes_are_bad_and_their_build_alone_is_good(base_kernel, shared_home,
                                                                                      tmp_path) -> None:
    """`kbisect bugs verify` on the two reproducers whose fixes are built in, pinned to Debian's
    newest 6.1 kernel: the control (that kernel's own source, guest config, the fix reverted) is
    BAD, the same build without the patch is GOOD, and so is the stock kernel."""
    from orchestrator.adapters.builds.trees import debian_source_dir

    stock = _newest_61(shared_home)
    t0 = time.monotonic()
    proc = kbisect(["bugs", "verify", "rp-filter-lo", "gro-inner-th", "--kernel", stock, "--json"], shared_home,
                   tmp_path / "results")
    seconds = time.monotonic() - t0
    rows = json.loads(proc.stdout) if proc.stdout.strip() else []
    table = [(r["bug"], r["role"], r["kernel"], r["verdict"], r["outcome"], r["reason"]) for r in rows]
    print(f"\nbugs verify (2 whole-kernel controls): {seconds:.0f} s")
    assert proc.returncode == 0, (table, proc.stderr[-3000:])
    for bug in ("rp-filter-lo", "gro-inner-th"):
        mine = {r["role"]: r for r in rows if r["bug"] == bug}
        assert mine["positive control"]["verdict"] == "bad", table
        assert mine["control's build without its patch"]["verdict"] == "good", table
        assert mine["control's build without its patch"]["kernel"] == f"{stock}+guest-build"
        assert all(r["outcome"] == "ok" for r in mine.values()), table
    assert "fails with rp_filter=1" in next(r["reason"] for r in rows if r["bug"] == "rp-filter-lo"
                                           and r["role"] == "positive control")
    assert debian_source_dir("linux-source-6.1", "x").parent.is_dir()


def _newest_61(home: Path) -> str:
    """Debian's newest 6.1 cloud kernel, whose own source linux-source-6.1 is (the newest of both)."""
    from orchestrator.app.lines import debian_entries
    from orchestrator.core.lines import pick_line_kernels

    os.environ["KBISECT_HOME"] = str(home)
    return pick_line_kernels(debian_entries(), ["6.1"])["6.1"]
