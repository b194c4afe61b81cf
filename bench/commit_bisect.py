#!/usr/bin/env python3
"""Builds to an answer in a commit bisection: plain binary search, paths first, ranking-guided.

    .venv/bin/python bench/commit_bisect.py [--commits 128] [--every 16] [--trials 24]

A real git history of N commits (one file each; every `--every`-th commit touches the bug's
path, net/ipv4/fib_frontend.c) with a culprit planted at many positions: half of the trials the
culprit touches the path and names the bug's keyword (the ranking's case), half it is a silent
change elsewhere (the worst case for paths first and the ranking). Builds and probes are fakes
that count; the search, the ranking (git log --grep) and the paths pass are kbisect's own
(app.commit_bisect). Prints the mean and worst builds per strategy, and whether each found the
planted commit every time. A build is what costs minutes on a real kernel tree (bench/build.py).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.app.commit_bisect import (CommitBisectDeps, CommitBisectRequest, run_commit_bisect,  # noqa: E402
                                            top_ranked, touching_paths)
from orchestrator.core.bug import Bug  # noqa: E402
from orchestrator.core.verdict import ProbeRecord, Verdict  # noqa: E402

BUG = Bug(id="rp-filter-lo", dir=Path("."), keywords=["loopback"], paths=["net/ipv4/fib_frontend.c"])


def make_history(root: Path, n: int, every: int, culprit: int, loud: bool) -> list[str]:
    git = ["git", "-C", str(root), "-c", "user.name=b", "-c", "user.email=b@bench.invalid"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    shas = []
    for i in range(n):
        on_path = (i % every == 0 and i > 0) or (i == culprit and loud)
        path = root / ("net/ipv4/fib_frontend.c" if on_path else f"drivers/f{i}.c")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((path.read_text() if path.exists() else "") + f"/* change {i} */\n")
        subject = ("fib: drop the loopback relaxation" if i == culprit and loud else f"change {i}")
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-qm", subject], check=True)
        shas.append(subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                                   text=True).stdout.strip())
    return shas


def trial(shas: list[str], culprit: int, repo: Path, strategy: str) -> tuple[int, bool]:
    builds: set[str] = set()

    def build(req):
        builds.add(req.rev)
        return SimpleNamespace(spec=f"local:{req.name}")

    def probe(spec: str, bug: Bug) -> ProbeRecord:
        i = next(k for k, s in enumerate(shas) if spec.endswith(s[:12]))
        return ProbeRecord(spec, bug.id, Verdict.BAD if i >= culprit else Verdict.GOOD, "bench", {"run": 0.0})

    deps = CommitBisectDeps(build=build, probe=probe, kernel_id=lambda spec: "id-" + spec,
                            top_ranked=top_ranked if strategy == "guided" else None,
                            touching=touching_paths if strategy in ("paths first", "guided") else None)
    data = run_commit_bisect(BUG, CommitBisectRequest(repo, shas[0], shas[-1], verify_runs=0, fresh=True,
                                                      guided=strategy == "guided"), deps)
    return len(builds), (data.get("first_bad_commit") or {}).get("sha") == shas[culprit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=128)
    ap.add_argument("--every", type=int, default=16)
    ap.add_argument("--trials", type=int, default=24)
    opts = ap.parse_args()
    rng = random.Random(13)
    os.environ["KBISECT_HOME"] = tempfile.mkdtemp(prefix="kbisect-bench-commits-")
    os.environ["KBISECT_RESULTS"] = tempfile.mkdtemp(prefix="kbisect-bench-results-")
    figures: dict[tuple[str, bool], list[int]] = {}
    right: dict[str, bool] = {}
    for t in range(opts.trials):
        loud = t % 2 == 0
        culprit = rng.randrange(1, opts.commits)
        with tempfile.TemporaryDirectory(prefix="kbisect-bench-history-") as tmp:
            repo = Path(tmp)
            shas = make_history(repo, opts.commits, opts.every, culprit, loud)
            for strategy in ("plain", "paths first", "guided"):
                n, ok = trial(shas, culprit, repo, strategy)
                figures.setdefault((strategy, loud), []).append(n)
                right[strategy] = right.get(strategy, True) and ok
    print(f"{opts.commits} commits, every {opts.every}th touching the bug's path, {opts.trials} culprits "
          f"(half on the path and named by a keyword, half silent elsewhere); builds to the answer:")
    for strategy in ("plain", "paths first", "guided"):
        loud, silent = figures[(strategy, True)], figures[(strategy, False)]
        print(f"  {strategy:>11}: culprit on the path mean {mean(loud):5.1f} (worst {max(loud)}), "
              f"silent mean {mean(silent):5.1f} (worst {max(silent)}); right every time: {right[strategy]}")


if __name__ == "__main__":
    main()
