"""`kbisect sweep` and `kbisect sweep history`: the nightly matrix of every reproducer across the
newest kernel of each line, kept as history, with regressions flagged.

The sweep itself (listing, probing, storing, flagging, writing the matrix) is the use case in
orchestrator.app.sweep; this module parses the options, prints and picks the exit code.

Exit codes: 0 no regression, 1 at least one regression flagged (for a cron to alert on), 2 bad
input or a failure before any cell could be decided, 3 when every cell is a skip: a night in which
nothing booted (libvirt down, archive unreachable) must not look like a quiet, healthy night.
"""

from __future__ import annotations

import json
import sys
import time

import click

from orchestrator.cli.base import check_results_dir, cli
from orchestrator.core.errors import KbisectError

EXIT_REGRESSION = 1
EXIT_NOTHING_DECIDED = 3


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
    sys.exit(_sweep(bug_ids, lines, kernels, fresh, as_json, quiet))


def _sweep(bug_ids: tuple[str, ...], lines: tuple[str, ...], kernels: tuple[str, ...],
           fresh: bool, as_json: bool, quiet: bool) -> int:
    """Run the sweep use case, print its answer, return the exit code."""
    # imported when the command runs: the use case pulls in the guest runtime and the variant
    # builder (~0.4 s), which every other kbisect command would pay for at startup
    from orchestrator.app.deps import current
    from orchestrator.app.sweep import SweepDeps, SweepRequest, run_sweep

    def echo(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    check_results_dir()  # the matrix is written after the last boot
    outcome = run_sweep(SweepRequest(bug_ids, lines, kernels, fresh), current(SweepDeps), echo)
    if as_json:
        click.echo(json.dumps(outcome.data, indent=2))
    else:
        for f in outcome.regressions:
            click.echo(f"REGRESSION {f.cell.bug} on {f.cell.line}: {f.note}")
        click.echo(f"matrix: {outcome.html}")
    if outcome.regressions:
        return EXIT_REGRESSION
    if outcome.nothing_decided:
        click.echo("kbisect sweep: no cell was decided (every one is a skip): check the VM host and the "
                   "kernel archive; the matrix says why for each cell", err=True)
        return EXIT_NOTHING_DECIDED
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
