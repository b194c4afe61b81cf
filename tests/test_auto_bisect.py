"""`kbisect sweep --auto-bisect` (issue 12): a regression the sweep flags is bisected on its line
from the earlier good kernel, with the same bisection use case as `kbisect bisect` and the
sweep's stored verdicts (known kernels cost no boot); the cell links the bisection, the exit code
is still 1, and a finished bisection is linked, not run again, the next night. No VM: the probe
is tests/test_sweep.py's fake; the mainline listing is a generated mirror on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.app.bisect import BisectDeps, BisectRequest, run_bisect
from orchestrator.core.sweep import Cell, Earlier, Flag, Flagged, bisect_targets
from orchestrator.core.verdict import Verdict
from tests.test_sweep_sources import BUG, FAILED, MIRROR_VERSIONS, mirror, world  # noqa: F401 (fixtures)
from tests.bisect_mirror import build_mirror

STABLE_61 = ["6.1", "6.1.118", "6.1.119", "6.1.120", "6.1.121", "6.2", "6.3"]


# -- pure: which cells have a good end -----------------------------------------------------------

def _flagged(bug, line, kernel, verdict, flag, earlier=None) -> Flagged:
    return Flagged(Cell(bug, line, kernel, verdict), Flag(flag), earlier)


def test_targets_start_from_the_regressions_good_kernel_a_variants_base_or_the_last_good() -> None:
    base, control = "debian:6.1.0-56-cloud-amd64", "debian:6.1.0-56-cloud-amd64+revert-227adfb2b1df"
    flagged = [
        _flagged("a", "6.1", "debian:6.1.0-57-cloud-amd64", "bad", "regression",
                 Earlier(3, 0.0, "debian:6.1.0-55-cloud-amd64", Verdict.GOOD)),
        _flagged("b", "6.1", base, "good", "unchanged"),
        _flagged("b", control, control, "bad", "new"),
        _flagged("c", "5.10", "debian:5.10.0-46-cloud-amd64", "bad", "unchanged"),
        _flagged("d", "6.12", "debian:6.12.1-1-cloud-amd64", "bad", "new"),  # never good: nothing to start from
        _flagged("e", "6.1", base, "skip", "skip"),
        _flagged("f", control, control, "bad", "new"),  # its base not swept good: still the start
    ]
    history = [Cell("c", "5.10", "debian:5.10.0-44-cloud-amd64", "good", sweep_id=1),
               Cell("c", "5.10", "debian:5.10.0-45-cloud-amd64", "good", sweep_id=2),
               Cell("c", "5.10", "debian:5.10.0-46-cloud-amd64", "bad", sweep_id=3)]
    got = [(t.bug, t.good, t.bad) for t in bisect_targets(flagged, history)]
    assert got == [("a", "debian:6.1.0-55-cloud-amd64", "debian:6.1.0-57-cloud-amd64"),
                   ("b", base, control),
                   ("c", "debian:5.10.0-45-cloud-amd64", "debian:5.10.0-46-cloud-amd64"),
                   ("f", base, control)]


# -- through the CLI -------------------------------------------------------------------------------

@pytest.fixture()
def bisecting(world):  # noqa: F811 (the fixture of tests.test_sweep_sources)
    """The world's sweep with the real bisection use case on the same fake probe and content ids."""
    calls: list[tuple[str, str, str]] = []

    def bisect(bug, good: str, bad: str) -> dict:
        calls.append((bug.id, good, bad))
        deps = BisectDeps(list_kernels=lambda source, *_: STABLE_61 if source == "mainline" else [],
                          real_probe=lambda b, *_m: world.deps.real_probe(b), kernel_ids=lambda _m: world.deps.kernel_id)
        return run_bisect(bug, BisectRequest(good, bad, verify_runs=1), deps)

    world.deps.bisect = bisect
    return world, calls


def test_a_flagged_regression_is_bisected_linked_and_not_bisected_twice(bisecting, mirror, capsys) -> None:  # noqa: F811
    world, calls = bisecting
    root, url = mirror
    args = ["--source", "mainline", "--mirror", url, "--line", "6.1", "--bug", BUG, "--json", "--quiet",
            "--auto-bisect"]
    code, out, err = world.run(args, capsys)
    assert code == 0, err
    assert json.loads(out)["bisections"] == [] and calls == []  # good everywhere: nothing to bisect

    world.next_night()  # 6.1.121 built; the bug entered at 6.1.120 (whose mainline build failed)
    build_mirror(root, MIRROR_VERSIONS + ["6.1.121"], FAILED)
    for v in ("6.1.120", "6.1.121"):
        world.verdicts[(BUG, f"mainline:{v}")] = Verdict.BAD
    code, out, err = world.run(args, capsys)
    data = json.loads(out)
    assert code == 1, err  # still the regression's exit code
    assert calls == [(BUG, "mainline:6.1.119", "mainline:6.1.121")]
    (bisection,) = data["bisections"]
    cell = next(c for c in data["cells"] if c["line"] == "mainline:6.1")
    assert cell["flag"] == "regression" and cell["bisection"]["status"] == bisection["status"]
    assert bisection["status"] == "found" and bisection["first_bad"] == "6.1.120"
    assert Path(cell["bisection"]["report"]).is_file()
    assert json.loads(Path(data["json"]).read_text())["cells"] == data["cells"]
    # the sweep's own verdicts were reused: only 6.1.120 (never swept) and the verify re-runs booted
    boots_in_bisect = [k for _b, k in world.boots if k == "mainline:6.1.119"]
    assert len(boots_in_bisect) <= 2  # swept once, re-run once to verify the boundary

    world.next_night()  # the same kernels: the finished bisection is linked, not run again
    code, out, err = world.run(args, capsys)
    again = json.loads(out)
    assert calls == [(BUG, "mainline:6.1.119", "mainline:6.1.121")]
    cell = next(c for c in again["cells"] if c["line"] == "mainline:6.1")
    assert cell["bisection"]["report"] == bisection["report"]
