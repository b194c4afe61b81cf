"""Slow tier (issue 13): whole kernels built from Debian's linux-source-6.1 with the guest config,
booted in kbisect's VM; a commit bisection over a small history on top of that source finds a
planted culprit with real incremental builds and boots, and its revert check confirms it; the
whole-kernel positive controls of the two built-in fixes say BAD and their build without the
patch says GOOD (`kbisect bugs verify`).

kbisect records Debian's source as a git repository (adapters.builds.trees.debian_repo); the
history is a branch of that very repository: `base` (Debian's source as it is), a decoy touching
a file the guest config does not build, the planted culprit (rp-filter-lo's fix 66f8209547cc
reverted in net/ipv4/fib_frontend.c, always built in:
reproducers/rp-filter-lo/controls/revert-66f8209547cc.patch), another decoy. So every build here
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
HISTORY_VERSION = "2"  # bump when the planted history below changes (it names the branch)


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


def make_history(home: Path) -> tuple[Path, dict[str, str]]:
    """The synthetic history, a branch of kbisect's git repository of Debian's linux-source-6.1;
    (the repository, {name: sha}). Made in a temporary worktree: the repository's own checkout
    stays Debian's source."""
    from orchestrator.adapters.builds.trees import DEBIAN_TAG, debian_repo
    from orchestrator.adapters.progress import StepLog
    from orchestrator.adapters.variants.packages import DebianPackages

    os.environ["KBISECT_HOME"] = str(home)
    repo, origin = debian_repo("6.1", DebianPackages(), StepLog(label="test"))
    branch = f"kbisect-test-history-v{HISTORY_VERSION}"
    work = home / "test-repos" / f".{branch}.work"
    shutil.rmtree(work, ignore_errors=True)
    _git(repo, "worktree", "prune")
    _git(repo, "worktree", "add", "-q", "--force", "-B", branch, str(work), DEBIAN_TAG)
    try:
        shas = {"base": _git(repo, "rev-parse", DEBIAN_TAG + "^{commit}")}
        decoy = work / "drivers" / "net" / "ethernet" / "intel" / "e1000" / "e1000_main.c"  # not in the guest config
        decoy.write_text(decoy.read_text() + "\n/* a decoy change the guest kernel does not build */\n")
        shas["decoy1"] = _commit(work, "e1000: a decoy change outside the guest config")
        subprocess.run(["patch", "-p1", "--batch", "--fuzz=0", "-d", str(work), "-i", str(REVERT)], check=True,
                       capture_output=True)
        shas["culprit"] = _commit(work, 'Revert "fib: relax source validation check for loopback packets"')
        doc = work / "Documentation" / "networking" / "ip-sysctl.rst"
        doc.write_text(doc.read_text() + "\n.. a decoy documentation change\n")
        shas["decoy2"] = _commit(work, "docs: a decoy change")
    finally:
        _git(repo, "worktree", "remove", "--force", str(work))
    return repo, shas


@pytest.fixture(scope="module")
def history(vm_host, shared_home) -> tuple[Path, dict[str, str]]:
    names = shared_home / "test-repos" / f"linux-6.1-history-v{HISTORY_VERSION}.json"
    if names.is_file():
        record = json.loads(names.read_text())
        repo = Path(record["repo"])
        if (repo / ".git").is_dir() and subprocess.run(["git", "-C", str(repo), "cat-file", "-e",
                                                        record["shas"]["decoy2"]]).returncode == 0:
            return repo, record["shas"]
    names.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    repo, shas = make_history(shared_home)
    names.write_text(json.dumps({"repo": str(repo), "shas": shas}))
    print(f"\nsynthetic history on linux-source-6.1 made in {time.monotonic() - t0:.0f} s")
    return repo, shas


def build(home: Path, results: Path, *args: str) -> tuple[str, float]:
    t0 = time.monotonic()
    proc = kbisect(["kernels", "build", *[a for b in BUGS for a in ("--bug", b)], *args], home, results)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1], time.monotonic() - t0


@pytest.fixture(scope="module")
def base_kernel(history, shared_home, tmp_path_factory) -> str:
    # through --linux-source: the same repository, revision and build directory as --repo would use
    spec, seconds = build(shared_home, tmp_path_factory.mktemp("results"), "--linux-source", "6.1")
    print(f"\nguest build of linux-source-6.1 (base): {spec} in {seconds:.0f} s")
    return spec


def test_the_build_says_how_it_was_built(base_kernel, history, shared_home, tmp_path) -> None:
    repo, shas = history
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


def test_commit_bisection_finds_the_planted_culprit_in_two_builds(base_kernel, history, shared_home,
                                                                   tmp_path) -> None:
    """The ranking puts the culprit first (it touches rp-filter-lo's path and names loopback):
    the culprit and its parent are built (incrementally, from the base's build directory) and
    probed, bad and good, and the boundary is verified; the range's ends are not built. Then
    --verify-revert builds the culprit with itself reverted (built-in code: a whole kernel,
    incrementally) and probes it three times: good each time confirms it."""
    repo, shas = history
    t0 = time.monotonic()
    proc = kbisect(["bisect", "--bug", "rp-filter-lo", "--repo", str(repo), "--good", shas["base"],
                    "--bad", shas["decoy2"], "--build", *[a for b in BUGS for a in ("--kconfig-for", b)],
                    "--verify", "1", "--verify-revert", "--fresh", "--json"], shared_home, tmp_path / "results")
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    print(f"\ncommit bisection: {data['builds']} build(s), {len(data['probes'])} probe(s), {seconds:.0f} s")
    assert data["status"] == "found" and data["origin"] == "commit", data["stopped"]
    assert data["first_bad_commit"]["sha"] == shas["culprit"]
    assert data["last_good_commit"]["sha"] == shas["decoy1"]
    assert data["builds"] <= 2 and any("ranking-guided" in n for n in data["notes"])
    phases = [p["phase"] for p in data["probes"]]
    assert phases == ["bisect"] * 2 + ["verify"] * 2 + ["revert"] * 3, phases  # guesses, boundary, revert
    bad = [p for p in data["probes"] if p["verdict"] == "bad"]
    assert bad and all("fails with rp_filter=1" in p["reason"] for p in bad), bad
    check = data["revert_check"]
    assert check["status"] == "confirmed" and check["sha"] == shas["culprit"], check
    assert check["verdicts"] == ["good"] * 3
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
