"""`kbisect bugs list|show|verify`: the reproducer catalog, and the proof that each reproducer
tells a kernel with the bug from one without.

`verify` exists because a bisection is only as true as its reproducer: each one must say BAD on a
kernel with the bug (a positive-control variant, or a genuinely affected kernel) and GOOD on a
fixed kernel of every reachable Debian line, on real boots. Where no positive control can be
built the table says so instead of pretending; an unexpected verdict is a failure, never
re-labelled.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from orchestrator.adapters import catalog, config
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.cli.base import check_output_file, cli
from orchestrator.core.bug import Bug
from orchestrator.core.errors import KbisectError
from orchestrator.core.verify import Row, failed, markdown_table


@cli.group()
def bugs() -> None:
    """The reproducer catalog: list, show, and prove reproducers on real kernels."""


def _console() -> Console:
    return Console(width=max(100, shutil.get_terminal_size().columns))


def _history_line(bug: Bug) -> str:
    intro = ", ".join(f"{c.sha[:12]} {c.version}".strip() for c in bug.history.introduced) or "long-standing"
    fixed = ", ".join(f"{c.sha[:12]} {c.version}".strip() for c in bug.history.fixed)
    return f"{intro} -> {fixed}"


def _repeat_text(bug: Bug) -> str:
    r = bug.repeat
    return f"{r.bad_needed}/{r.runs} flaky" if r.flaky else "deterministic"


def bug_json(bug: Bug) -> dict:
    """Everything the catalog knows about one bug, JSON-ready (paths as strings)."""
    record = asdict(bug)
    record["dir"] = str(bug.dir)
    record.pop("data", None)
    record["writeup_path"] = str(bug.writeup_path) if bug.writeup_path else None
    for ctl, raw in zip(bug.controls, record["controls"]):
        raw["name"] = ctl.name
    return record


@bugs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_cmd(as_json: bool) -> None:
    """Every catalog entry, validated (a malformed bug.yaml stops the listing with its file and field)."""
    _check_catalog()
    entries = catalog.all_bugs()
    if as_json:
        click.echo(json.dumps([bug_json(b) for b in entries], indent=2))
        return
    table = Table(title=f"reproducers ({len(entries)})")
    for col in ("id", "title", "history", "repeat", "isolate", "controls"):
        table.add_column(col)
    for bug in entries:
        table.add_row(bug.id, bug.title, _history_line(bug), _repeat_text(bug), "yes" if bug.isolate else "no",
                      ", ".join(c.name for c in bug.controls) or "[yellow]none[/yellow]")
    _console().print(table)


@bugs.command("show")
@click.argument("bug_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(bug_id: str, as_json: bool) -> None:
    """One reproducer: summary, history, search keywords and paths, controls, verify plan."""
    bug = catalog.resolve(bug_id)
    if as_json:
        click.echo(json.dumps(bug_json(bug), indent=2))
        return
    out = [f"{bug.id}: {bug.title}", ""]
    if bug.summary:
        out += [bug.summary, ""]
    out.append(f"directory   {bug.dir}  (entry {bug.entry}, timeout {bug.timeout}s)")
    out.append(f"repeat      {_repeat_text(bug)} (runs {bug.repeat.runs}, bad needed {bug.repeat.bad_needed})")
    out.append(f"isolate     {'yes' if bug.isolate else 'no'}")
    out.append(f"write-up    {bug.writeup_path or bug.writeup or '-'}")
    out.append(f"modules     {', '.join(bug.modules) or '-'}")
    out.append(f"tools       {', '.join(bug.tools) or '-'}")
    out.append(f"keywords    {', '.join(bug.keywords)}")
    out.append(f"paths       {', '.join(bug.paths)}")
    out.append("history")
    for label, commits in (("introduced", bug.history.introduced), ("fixed", bug.history.fixed)):
        for c in commits:
            note = f"  ({c.note})" if c.note else ""
            out.append(f"  {label:<11}{c.sha[:12]} {c.version:<10} {c.subject}{note}")
    for kind, series in bug.history.stable_backports.items():
        for line, version in series.items():
            out.append(f"  stable     {kind} in {line}: {version}")
    for k in bug.history.known:
        out.append(f"  known      {k.kernel}: {k.verdict}{'  ' + k.note if k.note else ''}")
    if bug.history.note:
        out.append(f"  note       {bug.history.note.strip()}")
    out.append("controls")
    for ctl in bug.controls:
        how = "whole kernel" if ctl.build == "kernel" else "modules rebuilt"
        out.append(f"  {ctl.name} on {ctl.base} ({how}, expect {ctl.expect}): {ctl.note.strip()}")
    if not bug.controls:
        out.append(f"  none: {bug.verify.no_control.strip() or '-'}")
    out.append(f"verify      lines {', '.join(bug.verify.lines)}"
               + (f"; affected kernels {', '.join(bug.verify.bad_kernels)}" if bug.verify.bad_kernels else ""))
    click.echo("\n".join(out))


@bugs.command("verify")
@click.argument("bug_ids", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the proof rows as JSON on stdout.")
@click.option("--markdown", "markdown", type=click.Path(dir_okay=False), default=None,
              help="Also write the proof table as Markdown to this file.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the rows that would be probed; boot nothing.")
@click.option("--kernel", "kernels", multiple=True,
              help="Probe these kernels as fixed kernels instead of the newest of each Debian line.")
@click.option("--fresh", is_flag=True, help="Boot every row, even one whose kernel bytes and reproducer were "
              "already probed (by default the stored verdict answers it).")
def verify_cmd(bug_ids: tuple[str, ...], as_json: bool, markdown: str | None, plan_only: bool,
               kernels: tuple[str, ...], fresh: bool) -> None:
    """Prove reproducers both ways on real boots: BAD on a positive control or affected kernel,
    GOOD on the newest kernel of each reachable Debian line. Exit 1 if any row disagrees."""
    # imported when the command runs: the use case pulls in the guest runtime and the variant
    # builder (~0.4 s), which `bugs list` and `bugs show` would pay for at startup
    from orchestrator.app import verify
    from orchestrator.app.deps import current

    # every input, and where the table goes, is checked before the first boot
    if markdown:
        check_output_file("--markdown", markdown)
    for spec in kernels:
        _check_kernel(spec)
    if not bug_ids:
        _check_catalog()
    deps = current(verify.VerifyDeps)
    selected = [catalog.resolve(b) for b in bug_ids] if bug_ids else catalog.all_bugs()
    rows = verify.plan(selected, kernels, deps)
    if not plan_only:
        store = deps.store() if deps.store else None
        try:
            verify.run_rows(rows, {b.id: b for b in selected}, deps.probe, echo=lambda s: click.echo(s, err=True),
                            store=store, kernel_id=deps.kernel_id, fresh=fresh)
        finally:
            if store is not None:
                store.close()
    if markdown:
        try:  # whole or not at all: a full disk leaves the previous table (or none), never half of one
            atomic_write(Path(markdown), markdown_table(rows) + "\n")
        except OSError as exc:
            raise KbisectError(f"--markdown {markdown}: cannot write: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        _print_rows(rows, plan_only)
    if not plan_only and failed(rows):
        sys.exit(1)


def _check_catalog() -> None:
    root = config.reproducers_dir()
    if not root.is_dir():
        raise KbisectError(f"reproducer catalog {root} ($KBISECT_REPRODUCERS): no such directory")


def _check_kernel(spec: str) -> None:
    """A --kernel is an unpacked kernel directory or a spec that parses."""
    from orchestrator.core.versions import parse_spec

    if "/" in spec and Path(spec).is_dir():
        return
    try:
        parse_spec(spec)
    except KbisectError as exc:
        raise KbisectError(f"--kernel: {exc}") from None


def _print_rows(rows: list[Row], plan_only: bool) -> None:
    table = Table(title="proof table" + (" (plan)" if plan_only else ""))
    for col in ("bug", "role", "kernel", "expect", "verdict", "outcome", "reason"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.bug, r.role, r.kernel or "-", r.expect or "-", r.verdict or "-", r.outcome, r.reason)
    _console().print(table)
