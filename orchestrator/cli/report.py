"""`kbisect report`: regenerate a bisection's or a sweep's report from what is stored, and
results/index.html (the recent sweeps and bisections). The use case is orchestrator.app.report."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.base import check_output_dir, check_results_dir, cli
from orchestrator.core.errors import KbisectError


@cli.command("report")
@click.option("--run", "run_id", default=None, help="A bisection's run id (its directory under the results directory).")
@click.option("--sweep", "sweep_id", type=int, default=None, help="A sweep id (`kbisect sweep history` lists them).")
@click.option("--out", "out", default=None, help="Write the report into this directory (default: where it was).")
def report_cmd(run_id: str | None, sweep_id: int | None, out: str | None) -> None:
    """Write a report again from the stored data (--run ID or --sweep ID), and results/index.html.
    With neither, only the index is written."""
    from orchestrator.app.deps import current
    from orchestrator.app.report import ReportDeps, regenerate_run, regenerate_sweep, write_index

    if run_id is not None and sweep_id is not None:
        raise KbisectError("give --run or --sweep, not both")
    if out is not None and run_id is None and sweep_id is None:
        raise KbisectError("--out needs --run or --sweep")
    check_results_dir()
    target = check_output_dir("--out", out) if out else None
    if run_id is None and sweep_id is None:
        click.echo(f"index: {write_index()}")
        return
    if run_id is not None:
        done = regenerate_run(run_id, Path(target) if target else None)
        click.echo(f"report: {done.html}")
    elif sweep_id is not None:
        done = regenerate_sweep(sweep_id, Path(target) if target else None, current(ReportDeps))
        click.echo(f"matrix: {done.html}")
        click.echo(f"junit: {done.html.with_name('junit.xml')}")
    click.echo(f"index: {done.index}")
