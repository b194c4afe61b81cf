"""Slow tier (issue 13): whole kernels built from Debian's linux-source-6.1 with the guest config,
booted in kbisect's VM; a commit bisection over a small history on top of that source finds a
planted culprit with real incremental builds and boots.

The history is a git repository made once from the unpacked linux-source-6.1 (kept in the shared
test cache): `base` (Debian's source as it is), a decoy touching a file the guest config does not
build, the planted culprit (rp-filter-lo's fix 66f8209547cc reverted in net/ipv4/fib_frontend.c,
always built in: reproducers/rp-filter-lo/controls/revert-66f8209547cc.patch), another decoy.
Every build goes through one worktree and one build directory with ccache, so there is one full
build (about 13 minutes on 2 cores from an empty cache; none with a warm one) and every other
step recompiles a file or two and relinks.

gro-inner-th is left out of the builds: its kconfig needs BTF, which needs DWARF debug info for
the whole kernel, a much slower build (said in its bug.yaml).
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
BUGS = ["gretap-ecn", "ipvs-gue-mtu", "rp-filter-lo", "veth-csum", "vxlan-zero-mac"]
REVERT = REPO / "reproducers" / "rp-filter-lo" / "controls" / "revert-66f8209547cc.patch"
HISTORY_VERSION = "1"  # bump when the planted history below changes


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


def make_history(home: Path, dest: Path) -> dict[str, str]:
    """The synthetic history on Debian's linux-source-6.1; {name: sha}."""
    from orchestrator.adapters.builds.trees import from_debian
    from orchestrator.adapters.progress import StepLog
    from orchestrator.adapters.variants.packages import DebianPackages

    os.environ["KBISECT_HOME"] = str(home)
    source = from_debian("6.1", DebianPackages(), StepLog(label="test"))
    staging = dest.parent / (dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source.path, staging, symlinks=True)
    _git(staging, "init", "-q")
    shas = {"base": _commit(staging, f"Debian {source.origin['package']} {source.origin['version']}")}
    decoy = staging / "drivers" / "net" / "ethernet" / "intel" / "e1000" / "e1000_main.c"  # not in the guest config
    decoy.write_text(decoy.read_text() + "\n/* a decoy change the guest kernel does not build */\n")
    shas["decoy1"] = _commit(staging, "e1000: a decoy change outside the guest config")
    subprocess.run(["patch", "-p1", "--batch", "--fuzz=0", "-d", str(staging), "-i", str(REVERT)], check=True,
                   capture_output=True)
    shas["culprit"] = _commit(staging, 'Revert "fib: relax source validation check for loopback packets"')
    doc = staging / "Documentation" / "networking" / "ip-sysctl.rst"
    doc.write_text(doc.read_text() + "\n.. a decoy documentation change\n")
    shas["decoy2"] = _commit(staging, "docs: a decoy change")
    staging.rename(dest)
    return shas


@pytest.fixture(scope="module")
def history(vm_host, shared_home) -> tuple[Path, dict[str, str]]:
    dest = shared_home / "test-repos" / f"linux-6.1-history-v{HISTORY_VERSION}"
    names = dest.parent / f"{dest.name}.json"
    if not (dest / ".git").is_dir() or not names.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        t0 = time.monotonic()
        names.write_text(json.dumps(make_history(shared_home, dest)))
        print(f"\nsynthetic history on linux-source-6.1 made in {time.monotonic() - t0:.0f} s")
    return dest, json.loads(names.read_text())


def build(home: Path, results: Path, *args: str) -> tuple[str, float]:
    t0 = time.monotonic()
    proc = kbisect(["kernels", "build", *[a for b in BUGS for a in ("--bug", b)], *args], home, results)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1], time.monotonic() - t0


@pytest.fixture(scope="module")
def base_kernel(history, shared_home, tmp_path_factory) -> str:
    repo, shas = history
    spec, seconds = build(shared_home, tmp_path_factory.mktemp("results"), "--repo", str(repo), "--rev", shas["base"])
    print(f"\nguest build of linux-source-6.1 (base): {spec} in {seconds:.0f} s")
    return spec


def test_the_build_says_how_it_was_built(base_kernel, history, shared_home, tmp_path) -> None:
    repo, shas = history
    proc = kbisect(["kernels", "show", base_kernel, "--json"], shared_home, tmp_path)
    (info,) = json.loads(proc.stdout)
    record = info["build"]
    assert record["source"] == {**record["source"], "kind": "git", "commit": shas["base"]}
    assert record["config"] == "guest" and "CONFIG_VXLAN" in record["requirements"]
    text = (Path(info["root"]) / "config").read_text().splitlines()
    for line in ("CONFIG_VIRTIO_BLK=y", "CONFIG_VXLAN=m", "CONFIG_IP_VS=m", "CONFIG_NET_SCH_NETEM=m",
                 "# CONFIG_DRM is not set"):
        assert line in text, line
    assert info["module_files"] > 10 and Path(info["root"], "config").is_file()


def test_the_built_kernel_passes_the_reproducers_in_one_vm(base_kernel, shared_home, tmp_path) -> None:
    proc = kbisect(["sweep", "--kernel", base_kernel, *[a for b in BUGS for a in ("--bug", b)], "--fresh",
                    "--json"], shared_home, tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    verdicts = {c["bug"]: (c["verdict"], c["reason"]) for c in data["cells"]}
    assert all(v == "good" for v, _r in verdicts.values()), verdicts
    assert data["boots_by_kind"]["shared"] == 1 and data["boots"] == 1


def test_commit_bisection_finds_the_planted_culprit_in_two_builds(base_kernel, history, shared_home,
                                                                   tmp_path) -> None:
    """The ranking puts the culprit first (it touches rp-filter-lo's path and names loopback):
    the culprit and its parent are built (incrementally, from the base's build directory) and
    probed, bad and good, and the boundary is verified; the range's ends are not built."""
    repo, shas = history
    t0 = time.monotonic()
    proc = kbisect(["bisect", "--bug", "rp-filter-lo", "--repo", str(repo), "--good", shas["base"],
                    "--bad", shas["decoy2"], "--build", *[a for b in BUGS for a in ("--kconfig-for", b)],
                    "--verify", "1", "--fresh", "--json"], shared_home, tmp_path / "results")
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    print(f"\ncommit bisection: {data['builds']} build(s), {len(data['probes'])} probe(s), {seconds:.0f} s")
    assert data["status"] == "found" and data["origin"] == "commit", data["stopped"]
    assert data["first_bad_commit"]["sha"] == shas["culprit"]
    assert data["last_good_commit"]["sha"] == shas["decoy1"]
    assert data["builds"] <= 2 and any("ranking-guided" in n for n in data["notes"])
    assert len(data["probes"]) == 4  # the culprit and its parent, then each verified once
    bad = [p for p in data["probes"] if p["verdict"] == "bad"]
    assert bad and all("fails with rp_filter=1" in p["reason"] for p in bad), bad
    assert Path(data["report"]).is_file()
