"""The sweep use case: every reproducer on the newest kernel of each line, kept as history.

It lists the requested sources' lines (Debian by default; mainline's LTS lines and newest
release; Ubuntu's swept series), takes the newest available build of each (saying so when a newer
one failed), asks each (bug, kernel) cell through the same resuming probe a bisection
uses (a stored verdict for the same kernel and reproducer hash costs no boot), folds repeated
runs with the repeat policy, records each cell the moment it is decided (store.SweepLog), flags
the matrix against earlier sweeps (core.sweep, pure) and writes matrix.html / matrix.json.
Whether a failed probe is a skip cell or stops the sweep is app.policy's, as everywhere.

The world comes in through `SweepDeps` (the real probe, the clock, the Debian, mainline and
Ubuntu listings, the store), so tests run whole sweeps on fakes. `plan_sweep` resolves the
columns without booting anything or opening a sweep (`kbisect sweep --plan`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from orchestrator.adapters import catalog, config, report
from orchestrator.adapters.store import Store, SweepLog
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.lines import debian_entries, mainline_entries, ubuntu_entries
from orchestrator.app.batch import BatchProbe, Handlers, KernelBatcher, run_batches
from orchestrator.app.policy import Decision
from orchestrator.app.policy import decide as decide_error
from orchestrator.app.prober import ResumingProbe
from orchestrator.app.run import run_probe
from orchestrator.core.bug import Bug
from orchestrator.core.engine import Candidate, judge
from orchestrator.core.errors import KbisectError
from orchestrator.core.lines import Pick, mainline_of_line, pick_line_kernels, pick_newest_build
from orchestrator.core.sweep import (DEFAULT_SOURCES, REGRESSION, BisectTarget, Cell, Column, Flagged, LineRequest,
                                     Matrix, bisect_targets, build_matrix, check_sources, column_of, column_source, describe_column, moved_since,
                                     plan_lines, resolve_columns, sort_columns, sweep_key, utc_day)
from orchestrator.core.sharing import ALONE, ISOLATED, RECHECKED, SHARED, Batch, probe_batch
from orchestrator.core.verdict import ProbeRecord

REPEAT = "repeat"  # a run beyond a cell's first (bug.repeat.runs > 1): one VM of its own
BOOT_KINDS = (SHARED, ISOLATED, ALONE, RECHECKED, REPEAT)

RealProbe = Callable[[Bug], Callable[[str], ProbeRecord]]


def real_probe(bug: Bug) -> Callable[[str], ProbeRecord]:
    """One real boot per call, quietly (the matrix is the output)."""
    def probe(spec: str) -> ProbeRecord:
        return run_probe(spec, bug, progress=False, echo_output=False)

    return probe


def auto_bisect(bug: Bug, good: str, bad: str) -> dict:
    """One bisection of `bug` from `good` to `bad`, the same use case as `kbisect bisect` (its
    stored verdicts reused: the sweep's own cells cost nothing again); result.json's content."""
    from orchestrator.app.bisect import BisectDeps, BisectRequest, run_bisect

    return run_bisect(bug, BisectRequest(good, bad), BisectDeps())


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
    # (mirror, lines) -> mainline listing rows of those lines (app.lines: newest first, to the first good)
    mainline_entries: Callable[[str | None, list[str]], list[dict]] = field(default=mainline_entries)
    # (distro mirror, series) -> every upload of that series' `linux` source
    ubuntu_entries: Callable[[str | None, str], list[dict]] = field(default=ubuntu_entries)
    # (bug, good spec, bad spec) -> a finished bisection's result (--auto-bisect)
    bisect: Callable[[Bug, str, str], dict] = field(default=auto_bisect)
    # (share one guest per kernel?, progress echo) -> the probe of every first run on one kernel;
    # None: real guests (app.batch) when `real_probe` is the real one, else a VM per cell over
    # the given `real_probe` (tests that fake single probes keep their meaning)
    batch_probe: Callable[[bool, Callable[[str], None]], BatchProbe] | None = None

    def batcher(self, share: bool, echo: Callable[[str], None]) -> BatchProbe:
        if self.batch_probe is not None:
            return self.batch_probe(share, echo)
        if self.real_probe is real_probe:
            return KernelBatcher(share=share, echo=echo)
        return per_cell(self.real_probe)


def per_cell(probe: RealProbe) -> BatchProbe:
    """A batch of single probes: one `probe(bug)(spec)` per reproducer (core.sharing's `share=False`)."""
    def batch(spec: str, bugs, stopped: Callable[[], bool], on_final: Callable[[ProbeRecord], None]) -> Batch:
        return probe_batch(bugs, lambda _group: [], lambda bug: probe(bug)(spec), share=False, stopped=stopped,
                           on_final=on_final)

    return batch


@dataclass
class SweepRequest:
    """The command as given: which bugs, lines and pinned kernels, and whether to boot afresh."""

    bug_ids: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    fresh: bool = False
    sources: tuple[str, ...] = ()  # --source: mainline, ubuntu, debian (none given: Debian)
    lts: bool = False  # --lts: every kernel.org LTS line of the mainline source
    mirror: str | None = None  # the mainline mirror (--mirror)
    distro_mirror: str | None = None  # the Ubuntu hosts (--distro-mirror)
    auto_bisect: bool = False  # --auto-bisect: bisect every bad cell that has a good kernel to start from
    jobs: int = 1  # --jobs: VMs at once (one kernel each)
    share: bool = True  # one guest per kernel for every reproducer (--vm-per-cell: False)


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
        self.boots = {k: 0 for k in BOOT_KINDS}  # VMs started, by how they were used (core.sharing)

    def counts(self) -> dict[str, int]:
        out = {"probe": 0, "store": 0}
        for prober in self.probers.values():
            for k in out:
                out[k] += prober.counts[k]
        return out

    def pending(self, bugs: list[Bug], spec: str) -> list[Bug]:
        """The bugs whose first run on `spec` needs a boot (not decided, stored or replayed)."""
        return [b for b in bugs if (b.id, spec) not in self.decided and not self._prober(b).answered(spec)]

    def offer(self, spec: str, record: ProbeRecord) -> None:
        """A batch's final first run of `record.bug` on `spec`: the cell takes it (and stores it)."""
        self.probers[record.bug].offer(spec, record)

    def count(self, batch: Batch) -> None:
        """A finished batch's boots, by kind."""
        for kind, n in batch.boots.items():
            self.boots[kind] += n

    def _counted(self, probe: Callable[[str], ProbeRecord]) -> Callable[[str], ProbeRecord]:
        """A repeat run beyond a batch's first is one VM of its own."""
        def counted(spec: str) -> ProbeRecord:
            self.boots[REPEAT] += 1
            return probe(spec)

        return counted

    def _prober(self, bug: Bug) -> ResumingProbe:
        if bug.id not in self.probers:
            self.probers[bug.id] = ResumingProbe(bug, self._counted(self.real_probe(bug)), store=self.store, since=self.since,
                                                 kernel_id=self.kernel_id, run_key=self.run_key)
        return self.probers[bug.id]

    def cell(self, bug: Bug, line: str, spec: str | None, note: str | None = None) -> Cell:
        """The cell of `bug` on `line`'s kernel `spec` (None: the line has no reachable kernel).

        A probe failure app.policy calls a skip comes back from the prober as a skip run (source
        `error`, not stored as a probe: the next sweep asks again); any other failure stops the
        sweep, which a re-run resumes."""
        prober = self._prober(bug)
        if spec is None:
            why = f"no reachable {describe_column(line)} kernel" + (f" ({note})" if note else "")
            return Cell(bug.id, line, "", "skip", why, 0.0, "none", 0, prober.repro_hash)
        if (bug.id, spec) in self.decided:
            return replace(self.decided[(bug.id, spec)], line=line)
        probe = judge(bug.repeat, prober, Candidate(spec), "sweep")
        cell = Cell(bug.id, line, spec, probe.verdict.value, probe.reason, round(probe.seconds, 3),
                    "+".join(sorted(set(probe.origins))), probe.runs, prober.repro_hash,
                    detail=cell_detail(probe.records[0] if probe.records else None))
        self.decided[(bug.id, spec)] = cell
        return cell


def cell_detail(record: ProbeRecord | None) -> dict:
    """What a cell links to and how its guest was used: the probe's log, console, record and
    artefacts (matrix.html's links), and the shared guest's word when a re-check overruled it."""
    if record is None:
        return {}
    out: dict = {}
    console = next((a for a in record.artefacts if a.endswith("/console.log")), "")
    if console:
        probe_dir = console.rsplit("/", 1)[0]
        out.update(console=console, log=f"{probe_dir}/output.txt", record=f"{probe_dir}/record.json")
    extra = {"artefacts": [a for a in record.artefacts if a != console], "console_excerpt": record.console_excerpt,
             "vm": record.vm, "vm_note": record.note}
    out.update({k: v for k, v in extra.items() if v})
    return out


def plan(bug_ids: tuple[str, ...], lines: tuple[str, ...], kernels: tuple[str, ...],
         sources: tuple[str, ...] = (), lts: bool = False) -> tuple[list[Bug], list[LineRequest], list[str]]:
    """(bugs, the columns to resolve from listings, canonical pinned kernels); every input checked
    before any listing."""
    bugs = [catalog.resolve(b) for b in dict.fromkeys(bug_ids)] if bug_ids else catalog.all_bugs()
    if not bugs:
        raise KbisectError("the reproducer catalog is empty: nothing to sweep")
    wanted = plan_lines(sources, lines, kernels, lts)
    pinned = [column_of(k)[1] for k in kernels]
    return bugs, wanted, pinned


@dataclass
class SweepPlan:
    """What a sweep will probe: the bugs, the columns in order (each resolved to a kernel, or
    None when its line has no available build) and the command's identity."""

    bugs: list[Bug]
    order: list[str]
    columns: dict[str, Column]
    key: str
    lines: list[str]  # the columns resolved from listings, as planned
    pinned: list[str]
    sources: list[str]

    @property
    def kernels(self) -> dict[str, str | None]:
        return {c: self.columns[c].kernel for c in self.order}

    def add_moved(self, history: list[Cell]) -> None:
        """Set each column's `moved` against the previous sweep that probed its line."""
        for line, text in moved_since(self.kernels, history, [b.id for b in self.bugs]).items():
            self.columns[line].moved = text

    def to_json(self) -> dict:
        return {"bugs": [b.id for b in self.bugs], "sources": list(self.sources),
                "columns": [self.columns[c].to_json() for c in self.order],
                "cells": [{"bug": b.id, "line": c, "kernel": self.columns[c].kernel}
                          for b in self.bugs for c in self.order],
                "total": len(self.bugs) * len(self.order)}


def resolve_lines(wanted: list[LineRequest], request: SweepRequest, deps: SweepDeps) -> dict[str, Column]:
    """Each planned column with the newest available build of its line, each source listed once
    (none at all when no column needs it)."""
    out: dict[str, Column] = {}
    asked = set(request.lines)
    debian = [r for r in wanted if r.source == "debian"]
    if debian:
        entries = deps.debian_entries()
        picked = pick_line_kernels(entries, [r.line for r in debian])
        for r in debian:
            if r.line in asked:
                _known_line(r, [e for e in entries if on_line(e.get("upstream") or e["version"], r.line)],
                            [e.get("upstream") or e["version"] for e in entries])
            out[r.column] = Column(r.column, picked.get(r.line), "debian")
    mainline = [r for r in wanted if r.source == "mainline"]
    if mainline:
        rows = deps.mainline_entries(request.mirror, [r.line for r in mainline])
        for r in mainline:
            of_line = mainline_of_line(rows, r.line)
            if r.line in asked:
                _known_line(r, of_line, [str(e.get("version", "")) for e in rows])
            _put(out, r, pick_newest_build(of_line, "mainline"))
    for r in (r for r in wanted if r.source == "ubuntu"):
        rows = [e for e in deps.ubuntu_entries(request.distro_mirror, r.series or "")
                if str(e.get("version", "")).startswith(f"{r.line}.")]
        _put(out, r, pick_newest_build(rows, "ubuntu"))
    return {r.column: out[r.column] for r in wanted}


def on_line(version: str, line: str) -> bool:
    """Whether `version` (6.1.170, 6.1.0-54-cloud-amd64) is of `line` (6.1), as pick_line_kernels reads it."""
    return line == "newest" or version.split(".")[:len(line.split("."))] == line.split(".")


def _known_line(r: LineRequest, listed: list[dict], versions: list[str]) -> None:
    """A --line the user asked for that lies past the next major release after every kernel the
    listing has (9.99 when the newest is 6.1: a typo) is refused: a column of "no reachable
    kernel" and exit 0 read as a sweep that ran. A line that may well exist but is not in this
    listing (6.12 from a suite this machine's apt does not reach, a line an archive dropped, a
    line whose builds all failed) stays a column that says so: a nightly sweep must not die of
    one missing suite."""
    if listed or r.line == "newest":
        return
    newest = max((_line_key(v) for v in versions), default=())
    wanted = _line_key(r.line)
    if not newest or (wanted and wanted[0] > newest[0] + 1):
        have = ".".join(map(str, newest)) if newest else "nothing"
        raise KbisectError(f"--line {r.line}: the {r.source} listing has no kernel of that line (its newest line "
                           f"is {have})")


def _line_key(version: str) -> tuple[int, ...]:
    """(major, minor) of 6.1.170 or 6.1.0-54-cloud-amd64, for comparing lines."""
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


def _put(out: dict[str, Column], r: LineRequest, pick: Pick) -> None:
    out[r.column] = Column(r.column, pick.spec, r.source, pick.note, ends=r.ends, series=r.series)


def plan_sweep(request: SweepRequest, deps: SweepDeps) -> SweepPlan:
    """Check the input, list every requested line and resolve the columns (pins included)."""
    bugs, wanted, pinned = plan(request.bug_ids, request.lines, request.kernels, request.sources, request.lts)
    resolved = resolve_lines(wanted, request, deps)
    kernels = resolve_columns(list(resolved), pinned, {c: col.kernel for c, col in resolved.items()})
    columns: dict[str, Column] = {}
    for c, spec in kernels.items():
        col = resolved.get(c)
        if col is None:
            columns[c] = Column(c, spec, column_source(c, spec))
        elif col.kernel != spec:  # pinned by --kernel: the listing's note is not about this kernel
            columns[c] = replace(col, kernel=spec, note=None, source=column_source(c, spec))
        else:
            columns[c] = col
    order = sort_columns(kernels)
    ids = [b.id for b in bugs]
    sources = check_sources(request.sources, request.lts) if request.sources else list(DEFAULT_SOURCES)
    lines = [r.column for r in wanted]
    return SweepPlan(bugs, order, {c: columns[c] for c in order}, sweep_key(ids, lines, pinned, sources, request.lts),
                     lines, pinned, sources)


def preview_sweep(request: SweepRequest, deps: SweepDeps | None = None) -> SweepPlan:
    """`--plan`: the columns and cells a sweep would probe now, with what moved since the last
    sweep of each line; nothing booted, no sweep opened."""
    deps = deps or SweepDeps()
    planned = plan_sweep(request, deps)
    store = deps.store()
    try:
        planned.add_moved(SweepLog(store).cells())
    finally:
        store.close()
    return planned


def column_text(col: Column) -> str:
    """One column as the progress and `--plan` print it: name, kernel, and what to know about it."""
    extra = [text for text in (col.note, f"moved {col.moved}" if col.moved else None,
                               f"LTS, ends {col.ends}" if col.ends else None, col.series) if text]
    return f"  {col.line:<16} {col.kernel or 'no reachable kernel'}" + (f"  ({'; '.join(extra)})" if extra else "")


def run_sweep(request: SweepRequest, deps: SweepDeps | None = None,
              echo: Callable[[str], None] = lambda s: None) -> SweepOutcome:
    """Plan, open (or resume) today's sweep, decide every cell, flag and write the matrix.

    `echo` gets the progress lines. Bad input raises before anything is listed; a failure
    app.policy calls an abort raises with the sweep left unfinished, so a re-run resumes it."""
    deps = deps or SweepDeps()
    planned = plan_sweep(request, deps)
    bugs, order, columns = planned.bugs, planned.order, planned.kernels
    ids = [b.id for b in bugs]
    now = deps.clock()
    store = deps.store()
    log = SweepLog(store)
    row = {"bugs": ids, "lines": planned.lines, "kernels": planned.pinned, "sources": planned.sources,
           "columns": dict(columns)}
    sweep_id, resumed, started = log.open(planned.key, row, fresh=request.fresh, now=now)
    history = log.cells(before=sweep_id)
    planned.add_moved(history)
    total = len(bugs) * len(order)
    echo(f"kbisect sweep {sweep_id}{' (resumed)' if resumed else ''}: {len(bugs)} reproducer(s) x "
         f"{len(order)} line(s) = {total} cells")
    for c in order:
        echo(column_text(planned.columns[c]))
    sweeper = Sweeper(store, deps.real_probe, deps.kernel_id, since=started if request.fresh else None,
                      run_key=f"sweep:{sweep_id}")
    cells = _decide_cells(planned, sweeper, deps.batcher(request.share, echo), request.jobs,
                          lambda cell: _put_cell(log, sweep_id, started, cell), echo)
    matrix = build_matrix(cells, history, columns, ids, order, planned.columns)
    finished = deps.clock()
    data = {"sweep": {"id": sweep_id, "day": utc_day(now), "started_at": started, "finished_at": finished,
                      "resumed": resumed, "fresh": request.fresh, "sources": planned.sources,
                      "jobs": request.jobs, "shared_vm": request.share},
            "probes": sweeper.counts(), "boots": sum(sweeper.boots.values()), "boots_by_kind": dict(sweeper.boots),
            **matrix.to_json()}
    if request.auto_bisect:
        data["bisections"] = _auto_bisect(matrix, history, {b.id: b for b in bugs}, log, deps, echo)
        _link_bisections(data, data["bisections"])
    html = report.write_matrix(data, config.results_dir() / f"sweep-{utc_day(now).replace('-', '')}-{sweep_id}")
    log.finish(sweep_id, str(html), now=finished)
    store.close()
    echo(f"kbisect sweep {sweep_id}: " + ", ".join(f"{v} {k}" for k, v in data["counts"].items())
         + f"; {data['boots']} VM boot(s) ({boots_text(sweeper.boots)}), {data['probes']['probe']} probe(s), "
         f"{data['probes']['store']} stored")
    return SweepOutcome(data, html, matrix.with_flag(REGRESSION), cells)


def boots_text(boots: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in boots.items() if n) or "none"


def _put_cell(log: SweepLog, sweep_id: int, started: float, cell: Cell) -> None:
    cell.sweep_id, cell.at = sweep_id, started
    log.put_cell(sweep_id, cell)


def _decide_cells(planned: SweepPlan, sweeper: Sweeper, batch: BatchProbe, jobs: int,
                  put: Callable[[Cell], None], echo: Callable[[str], None]) -> list[Cell]:
    """Every cell, each stored the moment it is decided. Stored verdicts and lines without a
    kernel cost nothing and come first; the kernels whose cells need boots go through one batch
    each (`jobs` at once), and a cell is decided the moment its batch has its answer."""
    bugs, order, columns = planned.bugs, planned.order, planned.kernels
    by_kernel: dict[str, list[str]] = {}
    for line in order:
        if columns[line]:
            by_kernel.setdefault(str(columns[line]), []).append(line)
    work = {spec: sweeper.pending(bugs, spec) for spec in by_kernel}
    total, cells = len(bugs) * len(order), []
    decided: set[tuple[str, str]] = set()

    def decide(spec: str | None, todo: list[Bug]) -> None:
        for bug in todo:
            for line in (by_kernel[spec] if spec else [c for c in order if not columns[c]]):
                if (bug.id, line) in decided:
                    continue
                decided.add((bug.id, line))
                cell = sweeper.cell(bug, line, columns[line], planned.columns[line].note)
                put(cell)
                cells.append(cell)
                echo(f"[{len(cells)}/{total}] {bug.id} on {line}: {cell.verdict} ({cell.source}, "
                     f"{cell.seconds:.1f}s) {cell.reason}")

    def on_record(spec: str, record: ProbeRecord) -> None:
        sweeper.offer(spec, record)
        decide(spec, [b for b in bugs if b.id == record.bug])

    def on_done(spec: str, done: Batch | None, error: Exception | None) -> None:
        if error is not None and (not isinstance(error, KbisectError) or decide_error(error) is Decision.ABORT):
            raise error
        if done is not None:
            sweeper.count(done)
        decide(spec, bugs)  # after a skip-kind error the rest ask again, one by one, and skip

    decide(None, bugs)
    for spec in (s for s in by_kernel if not work[s]):
        decide(spec, bugs)
    booting = {spec: todo for spec, todo in work.items() if todo}
    if booting:
        echo(f"booting {len(booting)} kernel(s) for {sum(map(len, booting.values()))} reproducer run(s), "
             f"{jobs} VM(s) at once")
    run_batches(booting, batch, jobs, Handlers(on_record, on_done))
    return cells


def _auto_bisect(matrix: Matrix, history: list[Cell], bugs: dict[str, Bug], log: SweepLog, deps: SweepDeps,
                 echo: Callable[[str], None]) -> list[dict]:
    """A bisection for each bad cell with a good kernel to start from (core.sweep.bisect_targets);
    one already finished for the same bug, ends and reproducer is linked, not run again. A
    bisection that fails is recorded with its error and the sweep goes on: the regression
    flag and the exit code do not depend on it."""
    flagged = [matrix.cells[(b, line)] for b in matrix.bugs for line in matrix.lines if (b, line) in matrix.cells]
    out = []
    for target in bisect_targets(flagged, history):
        repro_hash = matrix.cells[(target.bug, target.line)].cell.repro_hash
        done = log.bisection(target.bug, target.good, target.bad, repro_hash)
        if done is None:
            echo(f"auto-bisect {target.bug} on {target.line}: {target.good} (good, {target.why}) .. {target.bad} (bad)")
            done = _run_one(target, bugs[target.bug], deps)
            if done.get("status") != "error":
                log.put_bisection(target.bug, target.good, target.bad, repro_hash, done)
        else:
            echo(f"auto-bisect {target.bug} on {target.line}: finished earlier ({done.get('status')})")
        echo(f"auto-bisect {target.bug} on {target.line}: {done.get('status')}"
             + (f", first bad {done['first_bad']}" if done.get("first_bad") else "")
             + (f" ({done['report']})" if done.get("report") else ""))
        out.append({"bug": target.bug, "line": target.line, "good": target.good, "bad": target.bad,
                    "why": target.why, **done})
    return out


def _run_one(target: BisectTarget, bug: Bug, deps: SweepDeps) -> dict:
    """The bisection's summary as the sweep keeps it: status, answer, report path."""
    try:
        result = deps.bisect(bug, target.good, target.bad)
    except KbisectError as exc:
        return {"status": "error", "reason": str(exc)}
    keep = ("status", "origin", "last_good", "first_bad", "lineage", "stopped", "confidence", "report", "run_id")
    return {k: result.get(k) for k in keep if k in result}


def _link_bisections(data: dict, bisections: list[dict]) -> None:
    """Each bisected cell of the sweep's JSON names its bisection (result and report path)."""
    by_cell = {(b["bug"], b["line"]): b for b in bisections}
    for cell in data.get("cells", []):
        found = by_cell.get((cell.get("bug"), cell.get("line")))
        if found is not None:
            cell["bisection"] = {k: found.get(k) for k in ("status", "first_bad", "last_good", "origin", "report",
                                                           "good", "bad", "reason") if found.get(k) is not None}
