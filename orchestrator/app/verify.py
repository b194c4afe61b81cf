"""The verify use case: plan the proof table for some reproducers, then probe its rows on real boots.

The plan is pure (orchestrator.core.verify); this module brings the world in: the Debian
listing for the newest kernel of each line, and the probe for each row. Both are collaborators
in `VerifyDeps`, so tests plan against a fake listing and run rows on a fake probe. Whether a
probe's failure is a skip row or stops the run is app.policy's, as in a bisection or a sweep.

A row whose kernel bytes and reproducer were already probed (by a sweep, a bisection, an earlier
verify) takes the stored verdict instead of booting again, as every other use case does
(app.prober: stored verdicts follow content ids, not names); `--fresh` boots every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.adapters.store import Store
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.lines import debian_entries
from orchestrator.app.policy import guarded
from orchestrator.app.prober import ResumingProbe
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
    store: Callable[[], Store] | None = Store  # None: every row boots, nothing is stored
    kernel_id: Callable[[str], str] = field(default_factory=lambda: KernelProvider().kernel_id)


def plan(bugs: list[Bug], kernels: tuple[str, ...] = (), deps: VerifyDeps | None = None) -> list[Row]:
    """Every row for `bugs`: on `kernels` when given (the Debian source is not asked), else on
    the newest kernel of each line the bugs need."""
    deps = deps or VerifyDeps()
    lines: LinePlan = pinned_lines(bugs, kernels) if kernels else plan_lines(bugs, deps.debian_entries())
    return [row for bug in bugs for row in plan_rows(bug, lines.line_kernels, lines.available)]


def run_rows(rows: list[Row], bugs_by_id: dict[str, Bug], probe: Probe,
             echo: Callable[[str], None] = lambda s: None, *, store: Store | None = None,
             kernel_id: Callable[[str], str] | None = None, fresh: bool = False) -> list[Row]:
    """Probe every row that still needs it (mutates and returns rows).

    With a `store`, a row is answered by the stored verdict of the same bytes and reproducer when
    there is one (no boot), and a row that boots is stored. A probe failure app.policy calls a
    skip (kernel not fetchable, variant not buildable, no boot) becomes a skip row with the error
    as its reason, so one unreachable kernel never hides the rest of the table; any other
    failure stops the run (it would fail every row alike).
    """
    probers: dict[str, ResumingProbe] = {}
    for row in rows:
        if not row.to_probe:
            continue
        bug = bugs_by_id[row.bug]
        if store is None:
            _probe_row(row, bug, lambda spec: probe(spec, bug), echo)
            continue
        if bug.id not in probers:
            probers[bug.id] = ResumingProbe(bug, lambda spec, b=bug: probe(spec, b), store=store, fresh=fresh,
                                            kernel_id=kernel_id)
        _probe_row(row, bug, probers[bug.id], echo)
    return rows


def _probe_row(row: Row, bug: Bug, probe: Callable[[str], Any], echo: Callable[[str], None]) -> None:
    echo(f"verify: {row.bug} on {row.kernel} (expect {row.expect})")
    t0 = time.monotonic()
    rec = guarded(probe, row.kernel, bug.id)
    row.verdict = rec.verdict.value
    row.reason = rec.reason or ""
    row.seconds = float(rec.seconds or 0.0) or round(time.monotonic() - t0, 1)
    echo(f"verify: {row.bug} on {row.kernel}: {row.verdict} ({row.outcome}) - {row.reason}")
