"""The verify use case: plan the proof table for some reproducers, then probe its rows on real boots.

The plan is pure (orchestrator.core.verify); this module brings the world in: the Debian
listing for the newest kernel of each line, and the probe for each row. Both are collaborators
in `VerifyDeps`, so tests plan against a fake listing and run rows on a fake probe. Whether a
probe's failure is a skip row or stops the run is app.policy's, as in a bisection or a sweep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from orchestrator.app.lines import debian_entries
from orchestrator.app.policy import guarded
from orchestrator.app.run import run_probe
from orchestrator.core.bug import Bug
from orchestrator.core.verdict import ProbeRecord
from orchestrator.core.verify import LinePlan, Row, pinned_lines, plan_lines, plan_rows

Probe = Callable[[str, Bug], ProbeRecord]


def real_probe(spec: str, bug: Bug) -> ProbeRecord:
    """One real boot of `spec` with `bug`'s reproducer, quietly (the table is the output)."""
    return run_probe(spec, bug, progress=False, echo_output=False)


@dataclass
class VerifyDeps:
    """What `kbisect bugs verify` touches: the Debian listing and the probe (real by default)."""

    debian_entries: Callable[[], list[dict]] = field(default=debian_entries)
    probe: Probe = field(default=real_probe)


def plan(bugs: list[Bug], kernels: tuple[str, ...] = (), deps: VerifyDeps | None = None) -> list[Row]:
    """Every row for `bugs`: on `kernels` when given (the Debian source is not asked), else on
    the newest kernel of each line the bugs need."""
    deps = deps or VerifyDeps()
    lines: LinePlan = pinned_lines(bugs, kernels) if kernels else plan_lines(bugs, deps.debian_entries())
    return [row for bug in bugs for row in plan_rows(bug, lines.line_kernels, lines.available)]


def run_rows(rows: list[Row], bugs_by_id: dict[str, Bug], probe: Probe,
             echo: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Probe every row that still needs it (mutates and returns rows).

    A probe failure app.policy calls a skip (kernel not fetchable, variant not buildable, no
    boot) becomes a skip row with the error as its reason, so one unreachable kernel never hides
    the rest of the table; any other failure stops the run (it would fail every row alike).
    """
    for row in rows:
        if row.to_probe:
            _probe_row(row, bugs_by_id[row.bug], probe, echo)
    return rows


def _probe_row(row: Row, bug: Bug, probe: Probe, echo: Callable[[str], None]) -> None:
    echo(f"verify: {row.bug} on {row.kernel} (expect {row.expect})")
    t0 = time.monotonic()
    rec = guarded(lambda spec: probe(spec, bug), row.kernel, bug.id)
    row.verdict = rec.verdict.value
    row.reason = rec.reason or ""
    row.seconds = float(rec.seconds or 0.0) or round(time.monotonic() - t0, 1)
    echo(f"verify: {row.bug} on {row.kernel}: {row.verdict} ({row.outcome}) - {row.reason}")
