"""`kbisect sweep` and `kbisect sweep history`: the nightly matrix of every reproducer across the
newest kernel of each line, kept as history, with regressions flagged. Lines come from Debian
(the default, offline), mainline (`--source mainline`: kernel.org's LTS lines and the newest
release, from `--mirror`) and Ubuntu (`--source ubuntu`: each swept series, `--distro-mirror`);
`--plan` resolves them and prints what would be probed without booting or recording anything.

The sweep itself (listing, probing, storing, flagging, writing the matrix) is the use case in
orchestrator.app.sweep; this module parses the options, prints and picks the exit code.

Exit codes: 0 no regression, 1 at least one regression flagged (for a cron to alert on), 2 bad
input or a failure before any cell could be decided, 3 when every cell is a skip: a night in which
nothing booted (libvirt down, archive unreachable) must not look like a quiet, healthy night.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from orchestrator.cli.base import check_keyring, check_results_dir, cli, mainline_options
from orchestrator.core.errors import KbisectError
from orchestrator.core.lts import lts_lines

EXIT_REGRESSION = 1
EXIT_NOTHING_DECIDED = 3


@cli.group("sweep", invoke_without_command=True)
@click.option("--bug", "bug_ids", multiple=True, help="Reproducer id (repeatable; default: the whole catalog).")
@click.option("--source", "sources", multiple=True,
              help="Where the lines come from: debian (default, works offline), mainline, ubuntu (repeatable).")
@click.option("--lts", is_flag=True, help=f"Mainline: one column per kernel.org long-term line ({lts_lines()[0]} … "
              f"{lts_lines()[-1]}) plus the newest release, each the newest available build (the mainline default "
              "without --line).")
@click.option("--line", "lines", multiple=True,
              help="Kernel line: 5.10, 6.1, 6.12, newest (repeatable; Debian default: all four). Mainline and "
                   "Ubuntu take it too (an Ubuntu line is the series built on it).")
@click.option("--kernel", "kernels", multiple=True,
              help="A kernel spec to use for its line (pins that column) or as an extra column (repeatable).")
@click.option("--fresh", is_flag=True, help="Boot every kernel again (earlier stored verdicts ignored) in a new sweep; "
              "re-running a killed --fresh sweep the same day keeps what it already booted.")
@click.option("--auto-bisect", is_flag=True, help="Bisect every bad cell that has a good kernel to start from on "
              "its line (a regression's earlier good kernel, a variant's good base, the line's last good kernel), "
              "reusing stored verdicts; a finished bisection is linked, not run again. The exit code stays 1 on a "
              "regression.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="VMs at once, one kernel each (default: one per core, as memory allows, at least 1).")
@click.option("--vm-per-cell", is_flag=True, help="Boot a fresh VM for every cell instead of one per kernel "
              "(the slower design; for a reproducer you suspect of cross-talk).")
@click.option("--mirror", default=None, help="Mainline mirror base URL (default: the public one).")
@click.option("--distro-mirror", default=None, help="Base URL standing for the Ubuntu hosts (URL/api/ Launchpad's "
              "API root, URL/ubuntu/ the archive, URL/launchpad/ its +files; default $KBISECT_UBUNTU_MIRROR).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the columns and cells the sweep would probe "
              "(every line resolved) and stop: nothing booted, no sweep recorded.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix (with --plan: the plan) as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@mainline_options
@click.pass_context
def sweep_cmd(ctx: click.Context, bug_ids: tuple[str, ...], sources: tuple[str, ...], lts: bool,
              lines: tuple[str, ...], kernels: tuple[str, ...], fresh: bool, auto_bisect: bool, jobs: int | None,
              vm_per_cell: bool, mirror: str | None,
              distro_mirror: str | None, plan_only: bool, as_json: bool, quiet: bool, allow_unverified: bool,
              keyring: str | None) -> None:
    """Every reproducer on the newest kernel of each line: a matrix stored as history, regressions
    flagged against earlier sweeps, written to matrix.html and matrix.json. Exit 1 on a regression, 3 when every cell skipped.

    Lines: Debian's (default), mainline's LTS lines and newest release (--source mainline), each
    supported Ubuntu series (--source ubuntu); each column is the newest available build of its
    line, and says when a newer build failed and what moved since the previous sweep.

    Re-running the same command on the same (UTC) day resumes that day's sweep; decided cells come
    back from the results database without booting.

    One VM per kernel runs every reproducer in turn; a reproducer marked `isolate: true`, those
    after a crash or trace in that VM, and every bad verdict (re-checked alone before it counts)
    get a VM of their own. The boots are counted in the output and the JSON."""
    if ctx.invoked_subcommand is not None:
        if (bug_ids or sources or lts or lines or kernels or fresh or auto_bisect or mirror or distro_mirror or plan_only
                or as_json or quiet or allow_unverified or keyring or jobs or vm_per_cell):
            raise KbisectError(f"`kbisect sweep {ctx.invoked_subcommand}` takes its own options after its name")
        return
    from orchestrator.app.batch import default_jobs
    from orchestrator.app.sweep import SweepRequest

    request = SweepRequest(bug_ids, lines, kernels, fresh, sources, lts, mirror, distro_mirror, auto_bisect,
                           jobs=jobs or default_jobs(), share=not vm_per_cell)
    with _source_environment(mirror, distro_mirror, allow_unverified, check_keyring(keyring)):
        sys.exit(_plan(request, as_json) if plan_only else _sweep(request, as_json, quiet))


@contextmanager
def _source_environment(mirror: str | None, distro_mirror: str | None, allow_unverified: bool,
                        keyring: str | None) -> Iterator[None]:
    """The mirrors and the mainline trust options for every listing and every probe's fetch, which
    build their sources from the environment (as `kbisect bisect` does), restored afterwards."""
    values = {"KBISECT_MAINLINE_MIRROR": mirror, "KBISECT_UBUNTU_MIRROR": distro_mirror,
              "KBISECT_ALLOW_UNVERIFIED": "1" if allow_unverified else None,
              "KBISECT_MAINLINE_KEYRING": str(Path(keyring).resolve()) if keyring else None}
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def _plan(request, as_json: bool) -> int:
    """`--plan`: resolve every line, print the columns and cells, boot nothing."""
    from orchestrator.app.deps import current
    from orchestrator.app.sweep import SweepDeps, column_text, preview_sweep

    planned = preview_sweep(request, current(SweepDeps))
    data = planned.to_json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return 0
    click.echo(f"kbisect sweep plan: {len(data['bugs'])} reproducer(s) x {len(data['columns'])} column(s) = "
               f"{data['total']} cells")
    for c in planned.order:
        click.echo(column_text(planned.columns[c]))
    probed = [c for c in planned.order if planned.columns[c].kernel]
    for bug in data["bugs"]:
        click.echo(f"  {bug}: {len(probed)} cell(s) to probe"
                   + (f", {len(planned.order) - len(probed)} skip (no kernel)" if len(probed) < len(planned.order) else ""))
    return 0


def _sweep(request, as_json: bool, quiet: bool) -> int:
    """Run the sweep use case, print its answer, return the exit code."""
    # imported when the command runs: the use case pulls in the guest runtime and the variant
    # builder (~0.4 s), which every other kbisect command would pay for at startup
    from orchestrator.app.deps import current
    from orchestrator.app.sweep import SweepDeps, run_sweep

    def echo(text: str) -> None:
        if not quiet:
            click.echo(text, err=True)

    check_results_dir()  # the matrix is written after the last boot
    outcome = run_sweep(request, current(SweepDeps), echo)
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
