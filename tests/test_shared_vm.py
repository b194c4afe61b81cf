"""Slow tier: one boot per kernel on real guests (issue 12).

1. No cross-talk: every catalog reproducer in ONE shared guest (isolation ignored on purpose, so
   even gro-inner-th's bpftrace shares) gives the verdicts a guest of its own gives, on the
   gretap-ecn positive control (gretap-ecn bad there, the others good): one boot. The guest-each
   verdicts are proven by their own real boots elsewhere (tests/test_reproducers_vm.py, the
   sweep below with gro-inner-th isolated, reproducers/PROOF.md), so they are not booted again.
2. The sweep: the catalog over two Debian lines plus that control, `--jobs 2`: 3 shared boots,
   3 isolated (gro-inner-th), 1 re-check of the shared bad; the verdicts are the ones a VM per
   cell gives (test 1 and reproducers/PROOF.md); the JSON counts the boots and each cell links
   its probe's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
CONTROL = "debian:6.1.0-54-cloud-amd64+revert-227adfb2b1df"


@pytest.fixture(scope="module")
def home(vm_host, shared_home) -> Path:
    return shared_home


def expected(bug: str, kernel: str) -> str:
    """What a VM per cell says (reproducers/PROOF.md): only the control's own bug is bad."""
    return "bad" if (bug, kernel) == ("gretap-ecn", CONTROL) else "good"


def test_one_shared_guest_gives_the_verdicts_of_one_guest_each(home, tmp_path) -> None:
    from orchestrator.adapters import catalog
    from orchestrator.adapters.guest.probe import run_probe_shared
    from orchestrator.app.kernels import fetch_kernel

    bugs = catalog.all_bugs()
    assert len(bugs) == 6
    kernel = fetch_kernel(CONTROL)
    t0 = time.monotonic()
    runs = run_probe_shared(kernel, bugs, results_dir=tmp_path / "shared")
    shared_s = time.monotonic() - t0
    assert [r.record.bug for r in runs] == [b.id for b in bugs], [(r.record.bug, r.taint) for r in runs]
    assert all(r.taint == "" for r in runs), [(r.record.bug, r.taint) for r in runs]
    print(f"\ncross-talk: one shared guest for {len(bugs)} reproducers, {shared_s:.1f}s")
    for r in runs:
        print(f"  {r.record.bug}: shared {r.record.verdict.value} ({r.record.reason})")
    assert {r.record.bug: r.record.verdict.value for r in runs} == {b.id: expected(b.id, CONTROL) for b in bugs}
    # each shared run kept its own console part and files
    consoles = [next(a for a in r.record.artefacts if a.endswith("console.log")) for r in runs]
    assert len(set(consoles)) == len(runs) and all(Path(c).is_file() for c in consoles)


def test_sweep_of_two_lines_and_the_control_boots_once_per_kernel(home, tmp_path) -> None:
    env = dict(os.environ, KBISECT_HOME=str(home), KBISECT_RESULTS=str(tmp_path / "results"))
    args = [sys.executable, "-m", "orchestrator", "sweep", "--line", "5.10", "--line", "6.1",
            "--kernel", CONTROL, "--jobs", "2", "--fresh", "--json"]
    t0 = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t0
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    print(f"\nsweep, 3 kernels x 6 reproducers, --jobs 2: {seconds:.1f}s, boots {data['boots_by_kind']}")
    assert data["boots_by_kind"] == {"shared": 3, "isolated": 3, "alone": 0, "rechecked": 1, "repeat": 0}, \
        proc.stderr[-4000:]
    assert data["boots"] == 7 and data["sweep"]["jobs"] == 2
    cells = data["cells"]
    assert len(cells) == 18
    for c in cells:
        assert c["verdict"] == expected(c["bug"], c["kernel"]), c
        assert c["vm"] == ("isolated" if c["bug"] == "gro-inner-th" else
                           "rechecked" if c["verdict"] == "bad" else "shared"), c
        assert Path(c["console"]).is_file() and Path(c["log"]).is_file(), c
    control = next(c for c in cells if c["kernel"] == CONTROL and c["bug"] == "gretap-ecn")
    assert control["vm_note"].startswith("re-checked alone; in the shared VM: bad"), control
    # one progress line per VM event, from both workers
    assert proc.stderr.count("booting one VM for") == 3 and "2 VM(s) at once" in proc.stderr
