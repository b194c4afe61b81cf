"""Slow tier (issue 13): a fix bisection on real boots. vxlan-zero-mac is bad on Debian's
5.10.0-30 (5.10.218, between the stable backport of the regression and of its fix) and good on
5.10.0-46; `kbisect bisect --fix` over the 5.10 cloud ABIs Debian still serves here (field notes:
-30, -32, -43, -44, -45, -46) must name the first fixed one. 5.10.0-32 (5.10.223) was measured
good (bug.yaml's history.known), so the answer is last bad 5.10.0-30, first good 5.10.0-32.
`--fresh`: every verdict comes from a boot of this run, none from the shared store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.registry]

REPO = Path(__file__).resolve().parent.parent


def test_bisect_fix_names_the_first_fixed_debian_510_kernel(vm_host, shared_home, tmp_path) -> None:
    env = dict(os.environ, KBISECT_HOME=str(shared_home), KBISECT_RESULTS=str(tmp_path / "results"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "bisect", "--fix", "--bug", "vxlan-zero-mac",
                           "--bad", "debian:5.10.0-30-cloud-amd64", "--good", "debian:5.10.0-46-cloud-amd64",
                           "--verify", "1", "--fresh", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3600)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    booted = sorted({p["kernel"] for p in data["probes"]})
    print(f"\nfix bisection over Debian 5.10: {len(data['probes'])} probes of {len(booted)} kernels, {seconds:.0f} s")
    assert data["status"] == "found" and data["mode"] == "fix", data["stopped"]
    assert (data["last_bad"], data["first_good"]) == ("5.10.0-30-cloud-amd64", "5.10.0-32-cloud-amd64")
    assert data["origin"] == "distro"
    # each side of the boundary was booted and judged by the reproducer itself, with its evidence
    by_kernel = {}
    for p in data["probes"]:
        by_kernel.setdefault(p["kernel"], set()).add(p["verdict"])
    assert by_kernel["debian:5.10.0-30-cloud-amd64"] == {"bad"}
    assert by_kernel["debian:5.10.0-32-cloud-amd64"] == {"good"}
    assert all("known" not in p.get("origins", []) for p in data["probes"])
    bad = next(p for p in data["probes"] if p["kernel"] == "debian:5.10.0-30-cloud-amd64")
    assert "dropped by vx0" in bad["reason"], bad
    # Debian's packages ship their .config: the report compares them
    assert data["config_diff"]["from"] == "debian:5.10.0-30-cloud-amd64" and "total" in data["config_diff"]
    html = Path(data["report"]).read_text()
    assert "Fixed in" in html and "5.10.0-32-cloud-amd64" in html
