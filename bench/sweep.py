#!/usr/bin/env python3
"""Sweep benchmark: the default sweep's wall time and VM boots, one VM per cell against one VM
per kernel, in one run.

    .venv/bin/python bench/sweep.py [--line 6.1 ...] [--kernel SPEC ...] [--jobs N] [--home DIR]

Each side is `kbisect sweep --fresh --json` (every cell booted, stored verdicts ignored) with the
same lines and reproducers: "before" is `--vm-per-cell --jobs 1` (the design before issue 12: a
VM per cell, one at a time), "per kernel" one VM per kernel one at a time, "+ jobs" one VM per
kernel with `--jobs` (default: kbisect's own default). The kernels are fetched before the first
side starts, so neither pays for downloads. Prints, for each side, the wall time, the boots by
kind and the verdicts, and whether both sides gave the same verdict in every cell.

Its results directory is a temporary one; the probes are stored in KBISECT_HOME (or --home) like
any sweep's, each side under a sweep of its own (--fresh starts a new one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KBISECT = [sys.executable, "-m", "orchestrator"]


def sweep(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.monotonic()
    proc = subprocess.run(KBISECT + ["sweep", "--fresh", "--json", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"bench/sweep.py: kbisect sweep {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line", action="append", default=[], help="a Debian line (default: the sweep's four)")
    ap.add_argument("--kernel", action="append", default=[], help="a pinned column, as kbisect sweep --kernel")
    ap.add_argument("--jobs", type=int, default=None, help="VMs at once for the per-kernel side")
    ap.add_argument("--home", default=None, help="KBISECT_HOME (default: the environment's)")
    opts = ap.parse_args()
    env = dict(os.environ, KBISECT_RESULTS=tempfile.mkdtemp(prefix="kbisect-bench-sweep-"))
    if opts.home:
        env["KBISECT_HOME"] = opts.home
    common = [a for line in opts.line for a in ("--line", line)] + [a for k in opts.kernel for a in ("--kernel", k)]
    plan = subprocess.run(KBISECT + ["sweep", "--plan", "--json", *common], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    kernels = [c["kernel"] for c in json.loads(plan.stdout)["columns"] if c["kernel"]]
    for spec in kernels:  # downloads and variant builds before either side's clock starts
        subprocess.run(KBISECT + ["kernels", "fetch", spec], cwd=REPO, env=env, capture_output=True, check=True)
    # the design before issue 12 (a VM per cell, one at a time), one VM per kernel one at a time,
    # and one VM per kernel with --jobs (default: kbisect's own)
    sides = {"before": common + ["--vm-per-cell", "--jobs", "1"],
             "per kernel": common + ["--jobs", "1"],
             "+ jobs": common + (["--jobs", str(opts.jobs)] if opts.jobs else [])}
    results = {}
    for name, args in sides.items():
        seconds, data = sweep(args, env)
        results[name] = data
        verdicts = {}
        for c in data["cells"]:
            verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
        print(f"{name:>10}: {seconds:7.1f} s wall, {data['boots']:3d} boots {data['boots_by_kind']}, "
              f"jobs {data['sweep'].get('jobs')}, {len(data['cells'])} cells {verdicts}")
    cells = [{(c["bug"], c["line"]): c["verdict"] for c in r["cells"]} for r in results.values()]
    differ = sorted(k for k in cells[0] if any(cells[0][k] != other.get(k) for other in cells[1:]))
    print("same verdict in every cell" if not differ else f"verdicts differ in {differ}")


if __name__ == "__main__":
    main()
