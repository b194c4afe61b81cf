"""The sweep use case: every reproducer on the newest kernel of each line, kept as history.

It lists Debian kernels, asks each (bug, kernel) cell through the same resuming probe a bisection
uses (a stored verdict for the same kernel and reproducer hash costs no boot), folds repeated
runs with the repeat policy, records each cell the moment it is decided (store.SweepLog), flags
the matrix against earlier sweeps (core.sweep, pure) and writes matrix.html / matrix.json.
Whether a failed probe is a skip cell or stops the sweep is app.policy's, as everywhere.

The world comes in through `SweepDeps` (the real probe, the clock, the Debian listing, the
store), so tests run whole sweeps on fakes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from orchestrator.adapters import catalog, config, report
from orchestrator.adapters.store import Store, SweepLog
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.lines import debian_entries
from orchestrator.app.prober import ResumingProbe
from orchestrator.app.run import run_probe
from orchestrator.core.bug import Bug
from orchestrator.core.engine import Candidate, judge
from orchestrator.core.errors import KbisectError
from orchestrator.core.lines import pick_line_kernels
from orchestrator.core.sweep import (REGRESSION, Cell, Flagged, build_matrix, column_of, requested_lines,
                                     resolve_columns, sort_columns, sweep_key, utc_day)
from orchestrator.core.verdict import ProbeRecord

RealProbe = Callable[[Bug], Callable[[str], ProbeRecord]]


def real_probe(bug: Bug) -> Callable[[str], ProbeRecord]:
    """One real boot per call, quietly (the matrix is the output)."""
    def probe(spec: str) -> ProbeRecord:
        return run_probe(spec, bug, progress=False, echo_output=False)

    return probe


def kernel_ids() -> Callable[[str], str]:
    """The content id of a kernel spec, what stored verdicts follow (the kernel provider's)."""
    return KernelProvider().kernel_id


@dataclass
class SweepDeps:
    """What a sweep touches; the defaults are the real world, tests pass fakes."""

    real_probe: RealProbe = field(default=real_probe)
    kernel_id: Callable[[str], str] = field(default_factory=kernel_ids)  # spec -> content id
    clock: Callable[[], float] = field(default=time.time)  # now, in epoch seconds
    debian_entries: Callable[[], list[dict]] = field(default=debian_entries)
    store: Callable[[], Store] = field(default=Store)


@dataclass
class SweepRequest:
    """The command as given: which bugs, lines and pinned kernels, and whether to boot afresh."""

    bug_ids: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    fresh: bool = False


@dataclass
class SweepOutcome:
    """What the command prints and exits on."""

    data: dict  # matrix.json's content
    html: Path
    regressions: list[Flagged]
    cells: list[Cell]

    @property
    def nothing_decided(self) -> bool:
        """Every cell a skip: nothing booted or could be fetched (a broken night, not a quiet one)."""
        return bool(self.cells) and all(c.verdict == "skip" for c in self.cells)


class Sweeper:
    """Decides cells one by one: stored verdicts first, real probes for the rest. `since` (a
    --fresh sweep's start) ignores verdicts stored before it, so a fresh sweep boots every kernel
    once and a resumed fresh sweep keeps what it already booted."""

    def __init__(self, store: Store, real_probe: RealProbe, kernel_id: Callable[[str], str],
                 since: float | None = None, run_key: str | None = None) -> None:
        self.store = store
        self.real_probe = real_probe
        self.since = since
        self.run_key = run_key  # the sweep's scope: its stored skips are reused by this sweep only
        self.kernel_id = kernel_id  # spec -> content id, what stored verdicts follow
        self.probers: dict[str, ResumingProbe] = {}
        self.decided: dict[tuple[str, str], Cell] = {}  # (bug, kernel) -> Cell, when two lines share a kernel

    def counts(self) -> dict[str, int]:
        out = {"probe": 0, "store": 0}
        for prober in self.probers.values():
            for k in out:
                out[k] += prober.counts[k]
        return out

    def _prober(self, bug: Bug) -> ResumingProbe:
        if bug.id not in self.probers:
            self.probers[bug.id] = ResumingProbe(bug, self.real_probe(bug), store=self.store, since=self.since,
                                                 kernel_id=self.kernel_id, run_key=self.run_key)
        return self.probers[bug.id]

    def cell(self, bug: Bug, line: str, spec: str | None) -> Cell:
        """The cell of `bug` on `line`'s kernel `spec` (None: the line has no reachable kernel).

        A probe failure app.policy calls a skip comes back from the prober as a skip run (source
        `error`, not stored as a probe: the next sweep asks again); any other failure stops the
        sweep, which a re-run resumes."""
        prober = self._prober(bug)
        if spec is None:
            what = f"Debian {line}" if line != "newest" else "Debian"
            return Cell(bug.id, line, "", "skip", f"no reachable {what} kernel", 0.0, "none", 0, prober.repro_hash)
        if (bug.id, spec) in self.decided:
            return replace(self.decided[(bug.id, spec)], line=line)
        probe = judge(bug.repeat, prober, Candidate(spec), "sweep")
        cell = Cell(bug.id, line, spec, probe.verdict.value, probe.reason, round(probe.seconds, 3),
                    "+".join(sorted(set(probe.origins))), probe.runs, prober.repro_hash)
        self.decided[(bug.id, spec)] = cell
        return cell


def plan(bug_ids: tuple[str, ...], lines: tuple[str, ...], kernels: tuple[str, ...]) -> tuple[list[Bug], list[str], list[str]]:
    """(bugs, requested lines, canonical pinned kernels); every input checked before any listing."""
    bugs = [catalog.resolve(b) for b in dict.fromkeys(bug_ids)] if bug_ids else catalog.all_bugs()
    if not bugs:
        raise KbisectError("the reproducer catalog is empty: nothing to sweep")
    wanted = requested_lines(lines, kernels)
    pinned = [column_of(k)[1] for k in kernels]
    return bugs, wanted, pinned


def run_sweep(request: SweepRequest, deps: SweepDeps | None = None,
              echo: Callable[[str], None] = lambda s: None) -> SweepOutcome:
    """Plan, open (or resume) today's sweep, decide every cell, flag and write the matrix.

    `echo` gets the progress lines. Bad input raises before anything is listed; a failure
    app.policy calls an abort raises with the sweep left unfinished, so a re-run resumes it."""
    deps = deps or SweepDeps()
    bugs, wanted, pinned = plan(request.bug_ids, request.lines, request.kernels)
    picked = pick_line_kernels(deps.debian_entries(), wanted) if wanted else {}
    columns = resolve_columns(wanted, pinned, picked)
    order = sort_columns(columns)
    ids = [b.id for b in bugs]
    now = deps.clock()
    store = deps.store()
    log = SweepLog(store)
    planned = {"bugs": ids, "lines": wanted, "kernels": pinned, "columns": {c: columns[c] for c in order}}
    sweep_id, resumed, started = log.open(sweep_key(ids, wanted, pinned), planned, fresh=request.fresh, now=now)
    history = log.cells(before=sweep_id)
    total = len(bugs) * len(order)
    echo(f"kbisect sweep {sweep_id}{' (resumed)' if resumed else ''}: {len(bugs)} reproducer(s) x "
         f"{len(order)} line(s) = {total} cells")
    for c in order:
        echo(f"  {c:<8} {columns[c] or 'no reachable kernel'}")
    sweeper = Sweeper(store, deps.real_probe, deps.kernel_id, since=started if request.fresh else None,
                      run_key=f"sweep:{sweep_id}")
    cells = []
    for n, (bug, line) in enumerate(((b, line) for b in bugs for line in order), start=1):
        tag = f"[{n}/{total}] {bug.id} on {line}"
        if columns[line]:
            echo(f"{tag} ({columns[line]}) ...")
        cell = sweeper.cell(bug, line, columns[line])
        cell.sweep_id, cell.at = sweep_id, started
        log.put_cell(sweep_id, cell)
        cells.append(cell)
        echo(f"{tag}: {cell.verdict} ({cell.source}, {cell.seconds:.1f}s) {cell.reason}")
    matrix = build_matrix(cells, history, columns, ids, order)
    finished = deps.clock()
    data = {"sweep": {"id": sweep_id, "day": utc_day(now), "started_at": started, "finished_at": finished,
                      "resumed": resumed, "fresh": request.fresh},
            "probes": sweeper.counts(), **matrix.to_json()}
    html = report.write_matrix(data, config.results_dir() / f"sweep-{utc_day(now).replace('-', '')}-{sweep_id}")
    log.finish(sweep_id, str(html), now=finished)
    store.close()
    echo(f"kbisect sweep {sweep_id}: " + ", ".join(f"{v} {k}" for k, v in data["counts"].items())
         + f"; {data['probes']['probe']} boot(s), {data['probes']['store']} stored")
    return SweepOutcome(data, html, matrix.with_flag(REGRESSION), cells)
