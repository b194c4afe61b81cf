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
import time
from dataclasses import asdict, dataclass
from typing import Callable

import click
from rich.console import Console
from rich.table import Table

from orchestrator.adapters import catalog
from orchestrator.core.bug import Bug
from orchestrator.cli.base import cli
from orchestrator.core.errors import KbisectError
from orchestrator.app.lines import debian_entries
from orchestrator.core.lines import is_line, pick_line_kernels, ver_key


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
        out.append(f"  {ctl.name} on {ctl.base} (expect {ctl.expect}): {ctl.note.strip()}")
    if not bug.controls:
        out.append(f"  none: {bug.verify.no_control.strip() or '-'}")
    out.append(f"verify      lines {', '.join(bug.verify.lines)}"
               + (f"; affected kernels {', '.join(bug.verify.bad_kernels)}" if bug.verify.bad_kernels else ""))
    click.echo("\n".join(out))


# --------------------------------------------------------------------------------------------
# verify: plan (pure, testable) and run (real boots through orchestrator.app.run.run_probe).


@dataclass
class Row:
    """One line of the proof table: one reproducer on one kernel, expected vs. seen."""

    bug: str
    role: str  # "positive control", "affected kernel", "fixed line 6.1", "no control"
    kernel: str  # kernel spec, or "" when the row only states that no control exists
    expect: str  # good / bad / "" (no probe)
    verdict: str = ""  # good / bad / skip / "" (not run)
    reason: str = ""
    seconds: float = 0.0
    note: str = ""

    @property
    def outcome(self) -> str:
        """ok (as expected), MISMATCH (the opposite verdict), unproven (skip / not run / n.a.)."""
        if not self.expect:
            return "n/a"
        if self.verdict == self.expect:
            return "ok"
        if self.verdict in ("good", "bad"):
            return "MISMATCH"
        return "unproven"

    def to_json(self) -> dict:
        record = asdict(self)
        record["outcome"] = self.outcome
        return record


def _resolve_base(base: str, line_kernels: dict[str, str | None]) -> str | None:
    """A control's base: a full spec (`debian:6.1.0-54-cloud-amd64`) or a line (`debian:6.1`)."""
    source, _, rest = base.partition(":")
    if source == "debian" and is_line(rest):
        return line_kernels.get(rest)
    return base


def plan_rows(bug: Bug, line_kernels: dict[str, str | None], available: set[str] | None = None) -> list[Row]:
    """The rows `verify` will probe for one bug, before any boot.

    `line_kernels` maps each Debian line to its newest kernel (None when unreachable);
    `available` (specs known to the sources), when given, marks affected kernels that cannot be
    had instead of probing them.
    """
    rows: list[Row] = []
    for ctl in bug.controls:
        base = _resolve_base(ctl.base, line_kernels)
        if base is None:
            rows.append(Row(bug.id, "positive control", f"{ctl.base}+{ctl.name}", ctl.expect,
                            verdict="", reason=f"base {ctl.base} is not reachable"))
            continue
        rows.append(Row(bug.id, "positive control", f"{base}+{ctl.name}", ctl.expect, note=ctl.patch))
    for spec in bug.verify.bad_kernels:
        if available is not None and spec.startswith("debian:") and spec not in available:
            rows.append(Row(bug.id, "affected kernel", spec, "bad", reason="not reachable from the debian source"))
            continue
        rows.append(Row(bug.id, "affected kernel", spec, "bad"))
    if not bug.controls:
        rows.append(Row(bug.id, "no control", "", "", reason=bug.verify.no_control.strip()
                        or "no positive-control patch is shipped"))
    seen: set[str] = set()
    for line in bug.verify.lines:
        spec = line_kernels.get(line)
        role = f"fixed line {line}" if line != "newest" else "newest"
        if spec is None:
            rows.append(Row(bug.id, role, "", bug.verify.expect.get(line, "good"), reason=f"no reachable Debian {line} kernel"))
            continue
        if spec in seen:
            continue
        seen.add(spec)
        rows.append(Row(bug.id, role, spec, bug.verify.expect.get(line, "good")))
    return rows


def run_rows(rows: list[Row], bugs_by_id: dict[str, Bug], probe: Callable[[str, Bug], object],
             echo: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Probe every row that names a kernel and has not been decided yet (mutates and returns rows).

    A probe that raises (kernel not fetchable, variant not buildable) becomes a skip with the error
    as its reason, so one unreachable kernel never hides the rest of the table.
    """
    for row in rows:
        if not row.kernel or not row.expect or row.reason:
            continue
        bug = bugs_by_id[row.bug]
        echo(f"verify: {row.bug} on {row.kernel} (expect {row.expect})")
        t0 = time.monotonic()
        try:
            rec = probe(row.kernel, bug)
        except KbisectError as exc:
            row.verdict, row.reason = "skip", f"error: {exc}"
        else:
            verdict = getattr(rec, "verdict", "skip")
            row.verdict = getattr(verdict, "value", str(verdict))
            row.reason = getattr(rec, "reason", "") or ""
            row.seconds = float(getattr(rec, "seconds", 0.0) or 0.0)
        if not row.seconds:
            row.seconds = round(time.monotonic() - t0, 1)
        echo(f"verify: {row.bug} on {row.kernel}: {row.verdict} ({row.outcome}) - {row.reason}")
    return rows


def markdown_table(rows: list[Row]) -> str:
    """The README's proof table."""
    out = ["| reproducer | role | kernel | expected | verdict | outcome | what the reproducer saw |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        seen = (r.reason or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{r.bug}` | {r.role} | {('`' + r.kernel + '`') if r.kernel else '-'} | {r.expect or '-'} "
                   f"| {r.verdict or '-'} | {r.outcome} | {seen} |")
    return "\n".join(out)


@bugs.command("verify")
@click.argument("bug_ids", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the proof rows as JSON on stdout.")
@click.option("--markdown", "markdown", type=click.Path(dir_okay=False), default=None,
              help="Also write the proof table as Markdown to this file.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the rows that would be probed; boot nothing.")
@click.option("--kernel", "kernels", multiple=True,
              help="Probe these kernels as fixed kernels instead of the newest of each Debian line.")
def verify_cmd(bug_ids: tuple[str, ...], as_json: bool, markdown: str | None, plan_only: bool,
               kernels: tuple[str, ...]) -> None:
    """Prove reproducers both ways on real boots: BAD on a positive control or affected kernel,
    GOOD on the newest kernel of each reachable Debian line. Exit 1 if any row disagrees."""
    selected = [catalog.resolve(b) for b in bug_ids] if bug_ids else catalog.all_bugs()
    if kernels:
        line_kernels: dict[str, str | None] = {f"k{i}": k for i, k in enumerate(kernels)}
        available = None
        for bug in selected:
            bug.verify.lines = list(line_kernels)
            bug.verify.expect = {}
    else:
        entries = debian_entries()
        lines = sorted({line for bug in selected for line in bug.verify.lines}
                       | {c.base.partition(":")[2] for bug in selected for c in bug.controls
                          if c.base.startswith("debian:") and is_line(c.base.partition(":")[2])}, key=ver_key)
        line_kernels = pick_line_kernels(entries, lines)
        available = {e.get("spec") or f"debian:{e['version']}" for e in entries if e.get("available")}
    rows = [row for bug in selected for row in plan_rows(bug, line_kernels, available)]
    if not plan_only:
        from orchestrator.app.run import run_probe

        def probe(spec: str, bug: Bug):
            return run_probe(spec, bug, progress=False, echo_output=False)

        run_rows(rows, {b.id: b for b in selected}, probe, echo=lambda s: click.echo(s, err=True))
    if markdown:
        with open(markdown, "w") as fh:
            fh.write(markdown_table(rows) + "\n")
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        table = Table(title="proof table" + (" (plan)" if plan_only else ""))
        for col in ("bug", "role", "kernel", "expect", "verdict", "outcome", "reason"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.bug, r.role, r.kernel or "-", r.expect or "-", r.verdict or "-", r.outcome, r.reason)
        _console().print(table)
    if not plan_only and any(r.outcome in ("MISMATCH", "unproven") for r in rows):
        sys.exit(1)
