"""A real bisection with real VMs over Debian kernels (slow tier: `-m vm`).

What this can honestly mean. Every Debian kernel reachable here (bullseye 5.10.218+, bookworm
6.1.x, trixie 6.12.x) already carries the gretap-ecn fix 227adfb2b1df (v5.14-rc4, stable 5.10.56),
so among stock Debian kernels gretap-ecn is good everywhere: a bisection over them alone could
only report that the ends agree. The historical bisection (5.4.40 good, 5.4.41 bad; v5.7-rc3 good,
v5.7-rc4 bad) needs kernels that cannot be had here; it is covered with replayed verdicts in
test_differential.py.

The only bad kernel that can be had honestly is manufactured: the newest Debian 6.1 kernel with
the fix's one line reverted in ip_tunnel.ko (the catalog's positive control,
`debian:<6.1 abi>+revert-227adfb2b1df`). The lineage here is three real kernels in the order the
Debian source lists them, with the variant right after its base:

    debian:6.1.0-53-cloud-amd64   stock, expected good (whatever the source lists just before 54)
    debian:6.1.0-54-cloud-amd64   stock, expected good (the catalog's control base)
    debian:6.1.0-54-cloud-amd64+revert-227adfb2b1df   expected bad (positive control)

Every verdict comes from a real boot (`--fresh`). The engine must confirm both ends by booting
them, probe the middle, re-boot both sides of the boundary, store every probe, and conclude that
the first bad kernel is the variant, i.e. that the whole difference is the reverted fix (origin
`variant`). A second run of the same command must resume from the database without booting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VARIANT = "revert-227adfb2b1df"

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=3000)


def _lineage_ends() -> tuple[str, str]:
    """The catalog's control base (the issue's CI kernel, debian:6.1.0-54-cloud-amd64) and the
    stock kernel the Debian source lists just before it in the same lineage."""
    from orchestrator.adapters.catalog import resolve
    from orchestrator.core.differential import make_kernel
    from orchestrator.adapters.sources import get_source

    control = resolve("gretap-ecn").control(VARIANT)
    assert control is not None, "the catalog lost the gretap-ecn positive control"
    base = make_kernel("debian", control.base.split(":", 1)[1])
    line = []
    for entry in get_source("debian").list(None, None):
        k = make_kernel("debian", entry.version, entry.available)
        if k.lineage == base.lineage and k.available and k.sort_key < base.sort_key:
            line.append(k)
    if not line:
        pytest.fail(f"the Debian source lists no {base.lineage} kernel older than {base.label}")
    line.sort(key=lambda k: k.sort_key)
    return line[-1].spec, base.spec


def test_real_bisection_over_debian_kernels_finds_the_positive_control(vm_host, shared_home, tmp_path) -> None:
    prev, newest = _lineage_ends()
    bad = f"{newest}+{VARIANT}"
    env = dict(os.environ)
    env["KBISECT_HOME"] = str(shared_home)
    env["KBISECT_RESULTS"] = str(tmp_path / "results")
    args = ["bisect", "--bug", "gretap-ecn", "--good", prev, "--bad", bad, "--verify", "1", "--json"]

    proc = _run(args + ["--fresh"], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    newest_label, bad_label = newest.split(":", 1)[1], bad.split(":", 1)[1]
    assert data["status"] == "found", data["stopped"]
    assert data["lineage"] == "debian:6.1"
    assert (data["last_good"], data["first_bad"]) == (newest_label, bad_label)
    assert data["origin"] == "variant"
    probes = data["probes"]
    # three distinct real kernels, every verdict from a real boot, the boundary re-booted once each
    assert {p["kernel"] for p in probes} == {prev, newest, bad}
    assert all(p["origins"] == ["probe"] and p["seconds"] > 0 for p in probes), probes
    by_phase = [(p["phase"], p["kernel"], p["verdict"]) for p in probes]
    assert ("ends", prev, "good") in by_phase and ("ends", bad, "bad") in by_phase
    assert ("bisect", newest, "good") in by_phase
    assert ("verify", newest, "good") in by_phase and ("verify", bad, "bad") in by_phase
    assert data["counts"]["probe"] == len(probes) == 5
    assert Path(data["report"]).is_file()

    # the same command again resumes from the results database: no boot at all
    again = _run(args, env)
    assert again.returncode == 0, again.stderr[-4000:]
    data2 = json.loads(again.stdout)
    assert data2["counts"]["probe"] == 0 and data2["counts"]["store"] == 5
    assert (data2["last_good"], data2["first_bad"]) == (newest_label, bad_label)
