#!/usr/bin/env python3
"""Kernel build benchmark: the first build of a tree with kbisect's guest config (the whole
catalog's requirements, BTF and so DWARF included), and an incremental step on the same tree and
config (one built-in file changed by a patch).

    .venv/bin/python bench/build.py [--linux-source 6.1] [--cold] [--home DIR]

`--cold` builds in a new, empty KBISECT_HOME (no ccache, no build directory, the source
downloaded and unpacked again): the figure a fresh machine pays. Without it the environment's
KBISECT_HOME is used, so a build already made there is found and not repeated (its figure is
then the cache's, which is printed as such). The incremental step applies rp-filter-lo's revert
of 66f8209547cc (net/ipv4/fib_frontend.c, built in): one object recompiled, vmlinux relinked,
modules reinstalled. Prints wall time per step, and the build record's own seconds and module count.
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
BUGS = ["gretap-ecn", "gro-inner-th", "ipvs-gue-mtu", "rp-filter-lo", "veth-csum", "vxlan-zero-mac"]
PATCH = REPO / "reproducers" / "rp-filter-lo" / "controls" / "revert-66f8209547cc.patch"


def step(name: str, args: list[str], env: dict[str, str]) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(KBISECT + args, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bench/build.py: {name} failed:\n{proc.stderr[-3000:]}")
    spec = proc.stdout.strip().splitlines()[-1]
    show = subprocess.run(KBISECT + ["kernels", "show", spec, "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    record = json.loads(show.stdout)[0].get("build") or {}
    reused = "built earlier" in proc.stderr
    print(f"{name:>12}: {wall:7.1f} s wall{' (found built, nothing compiled)' if reused else ''}; "
          f"build record {record.get('seconds')} s, {record.get('modules')} modules, {spec}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--linux-source", default="6.1")
    ap.add_argument("--cold", action="store_true", help="build in a new, empty KBISECT_HOME")
    ap.add_argument("--home", default=None)
    opts = ap.parse_args()
    env = dict(os.environ)
    if opts.cold:
        env["KBISECT_HOME"] = tempfile.mkdtemp(prefix="kbisect-bench-build-")
    elif opts.home:
        env["KBISECT_HOME"] = opts.home
    print(f"KBISECT_HOME={env.get('KBISECT_HOME', '~/.cache/kbisect')}, {os.cpu_count()} cores")
    base = ["kernels", "build", "--linux-source", opts.linux_source, *[a for b in BUGS for a in ("--bug", b)]]
    step("first build", base, env)
    step("incremental", base + ["--patch", str(PATCH)], env)


if __name__ == "__main__":
    main()
