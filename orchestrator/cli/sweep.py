"""`kbisect sweep` and `kbisect sweep history`: the nightly matrix of every reproducer across the
newest kernel of each line, kept as history, with regressions flagged.

This is the layer that touches the world for a sweep: it lists Debian kernels (orchestrator.lines),
asks each (bug, kernel) through the same resuming probe a bisection uses (store.ResumingProbe:
a stored verdict for the same kernel and reproducer hash costs no boot), folds repeated runs with
the bisection engine's repeat policy, records each cell in the results database the moment it is
decided (store.SweepLog), flags the matrix against earlier sweeps (orchestrator.sweep, pure) and
writes matrix.html / matrix.json (orchestrator.report).

Exit codes: 0 no regression, 1 at least one regression flagged (for a cron to alert on), 2 bad
input or a failure before any cell could be decided, 3 when every cell is a skip: a night in which
nothing booted (libvirt down, archive unreachable) must not look like a quiet, healthy night.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

import click

from orchestrator.cli.base import cli
from orchestrator.core.errors import KbisectError


def clock() -> float:
    """Now, in epoch seconds (tests move it to the next night)."""
    return time.time()


def real_probe(bug) -> Callable[[str], object]:
    """One real boot per call (tests replace this to inject a fake probe)."""
    from orchestrator.app.run import run_probe

    def probe(spec: str):
        return run_probe(spec, bug, progress=False, echo_output=False)

    return probe


class Sweeper:
    """Decides cells one by one: stored verdicts first, real probes for the rest. `since` (a
    --fresh sweep's start) ignores verdicts stored before it, so a fresh sweep boots every kernel
    once and a resumed fresh sweep keeps what it already booted."""

    def __init__(self, store, since: float | None = None) -> None:
        self.store = store
        self.since = since
        self.probers: dict[str, object] = {}
        self.decided: dict[tuple[str, str], object] = {}  # (bug, kernel) -> Cell, when two lines share a kernel

    def counts(self) -> dict[str, int]:
        out = {"probe": 0, "store": 0}
        for prober in self.probers.values():
            for k in out:
                out[k] += prober.counts[k]
        return out

    def cell(self, bug, line: str, spec: str | None):
        from dataclasses import replace

        from orchestrator.core.engine import Candidate, Engine
        from orchestrator.app.prober import ResumingProbe
        from orchestrator.core.sweep import Cell

        if bug.id not in self.probers:
            self.probers[bug.id] = ResumingProbe(bug, real_probe(bug), store=self.store, since=self.since)
        prober = self.probers[bug.id]
        if spec is None:
            what = f"Debian {line}" if line != "newest" else "Debian"
            return Cell(bug.id, line, "", "skip", f"no reachable {what} kernel", 0.0, "none", 0, prober.repro_hash)
        if (bug.id, spec) in self.decided:
            return replace(self.decided[(bug.id, spec)], line=line)
        engine = Engine([Candidate(spec)], prober, policy=bug.repeat, verify=0)
        try:
            probe = engine.judge(Candidate(spec), "sweep")
        except KbisectError as exc:
            # one unreachable kernel never hides the rest of the matrix; not remembered as a
            # probe, so the next sweep (or a resumed one) asks again
            cell = Cell(bug.id, line, spec, "skip", f"error: {exc}", 0.0, "error", 0, prober.repro_hash)
        else:
            cell = Cell(bug.id, line, spec, probe.verdict.value, probe.reason, round(probe.seconds, 3),
                        "+".join(sorted(set(probe.origins))), probe.runs, prober.repro_hash)
        self.decided[(bug.id, spec)] = cell
        return cell


def _plan(bug_ids: tuple[str, ...], lines: tuple[str, ...], kernels: tuple[str, ...]):
    """(bugs, requested lines, canonical pinned kernels); every input checked before any listing."""
    from orchestrator.adapters import catalog
    from orchestrator.core.sweep import column_of, requested_lines

    bugs = [catalog.resolve(b) for b in dict.fromkeys(bug_ids)] if bug_ids else catalog.all_bugs()
    if not bugs:
        raise KbisectError("the reproducer catalog is empty: nothing to sweep")
    wanted = requested_lines(lines, kernels)
    pinned = [column_of(k)[1] for k in kernels]
    return bugs, wanted, pinned


@cli.group("sweep", invoke_without_command=True)
@click.option("--bug", "bug_ids", multiple=True, help="Reproducer id (repeatable; default: the whole catalog).")
@click.option("--line", "lines", multiple=True,
              help="Kernel line: 5.10, 6.1, 6.12, newest (repeatable; default: all four).")
@click.option("--kernel", "kernels", multiple=True,
              help="A kernel spec to use for its line (pins that column) or as an extra column (repeatable).")
@click.option("--fresh", is_flag=True, help="Boot every kernel again (earlier stored verdicts ignored) in a new sweep; "
              "re-running a killed --fresh sweep the same day keeps what it already booted.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.pass_context
def sweep_cmd(ctx: click.Context, bug_ids: tuple[str, ...], lines: tuple[str, ...], kernels: tuple[str, ...],
              fresh: bool, as_json: bool, quiet: bool) -> None:
    """Every reproducer on the newest kernel of each line: a matrix stored as history, regressions
    flagged against earlier sweeps, written to matrix.html and matrix.json. Exit 1 on a regression, 3 when every cell skipped.

    Re-running the same command on the same (UTC) day resumes that day's sweep; decided cells come
    back from the results database without booting."""
    if ctx.invoked_subcommand is not None:
        if bug_ids or lines or kernels or fresh or as_json or quiet:
            raise KbisectError(f"`kbisect sweep {ctx.invoked_subcommand}` takes its own options after its name")
        return
    sys.exit(run_sweep(bug_ids, lines, kernels, fresh, as_json, quiet))


def run_sweep(bug_ids: tuple[str, ...], lines: tuple[str, ...], kernels: tuple[str, ...],
              fresh: bool, as_json: bool, quiet: bool) -> int:
    from orchestrator.adapters import config, report
    from orchestrator.app import lines as debian_lines
    from orchestrator.core.lines import pick_line_kernels
    from orchestrator.adapters.store import Store, SweepLog
    from orchestrator.core.sweep import REGRESSION, build_matrix, resolve_columns, sort_columns, sweep_key, utc_day

    def echo(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    bugs, wanted, pinned = _plan(bug_ids, lines, kernels)
    picked = pick_line_kernels(debian_lines.debian_entries(), wanted) if wanted else {}
    columns = resolve_columns(wanted, pinned, picked)
    order = sort_columns(columns)
    ids = [b.id for b in bugs]
    now = clock()
    store = Store()
    log = SweepLog(store)
    plan = {"bugs": ids, "lines": wanted, "kernels": pinned, "columns": {c: columns[c] for c in order}}
    sweep_id, resumed, started = log.open(sweep_key(ids, wanted, pinned), plan, fresh=fresh, now=now)
    history = log.cells(before=sweep_id)
    total = len(bugs) * len(order)
    echo(f"kbisect sweep {sweep_id}{' (resumed)' if resumed else ''}: {len(bugs)} reproducer(s) x "
         f"{len(order)} line(s) = {total} cells")
    for c in order:
        echo(f"  {c:<8} {columns[c] or 'no reachable kernel'}")
    sweeper = Sweeper(store, since=started if fresh else None)
    cells = []
    n = 0
    for bug in bugs:
        for line in order:
            n += 1
            tag = f"[{n}/{total}] {bug.id} on {line}"
            if columns[line]:
                echo(f"{tag} ({columns[line]}) ...")
            cell = sweeper.cell(bug, line, columns[line])
            cell.sweep_id, cell.at = sweep_id, started
            log.put_cell(sweep_id, cell)
            cells.append(cell)
            echo(f"{tag}: {cell.verdict} ({cell.source}, {cell.seconds:.1f}s) {cell.reason}")
    matrix = build_matrix(cells, history, columns, ids, order)
    finished = clock()
    data = {"sweep": {"id": sweep_id, "day": utc_day(now), "started_at": started, "finished_at": finished,
                      "resumed": resumed, "fresh": fresh},
            "probes": sweeper.counts(), **matrix.to_json()}
    html = report.write_matrix(data, config.results_dir() / f"sweep-{utc_day(now).replace('-', '')}-{sweep_id}")
    log.finish(sweep_id, str(html), now=finished)
    store.close()
    regressions = matrix.with_flag(REGRESSION)
    counts = data["counts"]
    echo(f"kbisect sweep {sweep_id}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
         + f"; {data['probes']['probe']} boot(s), {data['probes']['store']} stored")
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for f in regressions:
            click.echo(f"REGRESSION {f.cell.bug} on {f.cell.line}: {f.note}")
        click.echo(f"matrix: {html}")
    if regressions:
        return 1
    if cells and all(c.verdict == "skip" for c in cells):
        click.echo("kbisect sweep: no cell was decided (every one is a skip): check the VM host and the "
                   "kernel archive; the matrix says why for each cell", err=True)
        return 3
    return 0


@sweep_cmd.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print the sweeps as JSON on stdout.")
def history_cmd(as_json: bool) -> None:
    """Earlier sweeps, oldest first, with their regression counts (each against the sweeps before it)."""
    from orchestrator.adapters.store import Store, SweepLog
    from orchestrator.core.sweep import FLAGS, replay_history

    store = Store()
    log = SweepLog(store)
    sweeps = log.sweeps()
    counts = replay_history(log.cells())
    store.close()
    for s in sweeps:
        s["counts"] = counts.get(s["id"], {f: 0 for f in FLAGS})
    if as_json:
        click.echo(json.dumps(sweeps, indent=2))
        return
    if not sweeps:
        click.echo("no sweeps yet (run `kbisect sweep`)")
        return
    click.echo(f"{'id':>4}  {'started (UTC)':<19}  {'state':<10}  {'cells':>7}  "
               + "  ".join(f"{f:>10}" for f in FLAGS) + "  matrix")
    for s in sweeps:
        state = "finished" if s["finished_at"] else "unfinished"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["started_at"]))
        click.echo(f"{s['id']:>4}  {started:<19}  {state:<10}  {s['cells']:>3}/{s['planned']:<3}  "
                   + "  ".join(f"{s['counts'][f]:>10}" for f in FLAGS) + f"  {s['report'] or '-'}")
