"""One side of tests/test_concurrency.py: a sweep or a bisection on fake probes, run as its own
process against the shared $KBISECT_HOME, started when the test's go-file appears.

Usage: python -m tests.concurrency_driver sweep|bisect GO_FILE
Prints one JSON line: what the run decided (the test compares both processes' answers)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from orchestrator.adapters import catalog
from orchestrator.app.bisect import BisectDeps, BisectRequest, run_bisect
from orchestrator.app.sweep import SweepDeps, SweepRequest, run_sweep
from orchestrator.core.verdict import ProbeRecord, Verdict

BUGS = ("gretap-ecn", "veth-csum")
PINNED = ("debian:5.10.0-46-cloud-amd64", "debian:6.1.0-55-cloud-amd64")
NOW = 1_760_000_000.0  # a fixed night: both sweeps are on the same UTC day whatever the wall clock says
MAINLINE = [f"5.{n}" for n in range(0, 11)]
FIRST_BAD = "mainline:5.6"


def slow_probe(verdict_of):
    """A probe that takes a moment, so the two processes' store writes interleave."""
    def real_probe(bug, *_mirror):
        def probe(spec: str) -> ProbeRecord:
            time.sleep(0.05)
            verdict = verdict_of(bug.id, spec)
            return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 0.05})
        return probe
    return real_probe


def sweep() -> dict:
    deps = SweepDeps(real_probe=slow_probe(lambda bug, spec: Verdict.GOOD), clock=lambda: NOW,
                     debian_entries=lambda: [], kernel_id=lambda spec: "id-" + spec)
    outcome = run_sweep(SweepRequest(bug_ids=BUGS, kernels=PINNED), deps)
    return {"sweep": outcome.data["sweep"]["id"], "cells": sorted((c.bug, c.kernel, c.verdict) for c in outcome.cells)}


def bisect() -> dict:
    def verdict_of(_bug: str, spec: str) -> Verdict:
        minor = int(spec.split(".")[-1])
        return Verdict.BAD if minor >= 6 else Verdict.GOOD

    deps = BisectDeps(list_kernels=lambda source, *_: MAINLINE if source == "mainline" else [],
                      real_probe=slow_probe(verdict_of), kernel_ids=lambda mirror: lambda spec: "id-" + spec)
    data = run_bisect(catalog.resolve(BUGS[0]), BisectRequest(MAINLINE[0], MAINLINE[-1], verify_runs=0), deps)
    return {"status": data["status"], "first_bad": data.get("first_bad"), "counts": data["counts"]}


def main() -> None:
    what, go = sys.argv[1], Path(sys.argv[2])
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("go-file never appeared")
        time.sleep(0.005)
    print(json.dumps({"sweep": sweep, "bisect": bisect}[what]()))


if __name__ == "__main__":
    main()
