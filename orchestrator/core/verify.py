"""The proof table, pure part: which rows `kbisect bugs verify` probes and what each expects.

A bisection is only as true as its reproducer, so each one must say BAD on a kernel with the bug
(a positive-control variant, or a genuinely affected kernel) and GOOD on a fixed kernel of every
reachable Debian line. Planning that needs no boot and no network: the Debian listing comes in as
plain records, and running the rows is the app's (orchestrator.app.verify).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from orchestrator.core.bug import GUEST_BUILD, Bug
from orchestrator.core.lines import is_line, pick_line_kernels, ver_key


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

    @property
    def to_probe(self) -> bool:
        """Whether the row still needs a boot: it names a kernel, expects a verdict, and nothing
        (an unreachable base, an unreachable kernel) has already decided it."""
        return bool(self.kernel and self.expect and not self.reason)

    def to_json(self) -> dict:
        record = asdict(self)
        record["outcome"] = self.outcome
        return record


@dataclass
class LinePlan:
    """The kernels the rows are planned on: each line's kernel, and (when known) the specs the
    Debian source can deliver, so an affected kernel it no longer has is marked, not probed."""

    line_kernels: dict[str, str | None]
    available: set[str] | None = None


def _resolve_base(base: str, line_kernels: dict[str, str | None]) -> str | None:
    """A control's base: a full spec (`debian:6.1.0-54-cloud-amd64`) or a line (`debian:6.1`)."""
    source, _, rest = base.partition(":")
    if source == "debian" and is_line(rest):
        return line_kernels.get(rest)
    return base


def lines_needed(bugs: list[Bug]) -> list[str]:
    """The Debian lines the bugs' proofs need: their verify lines and the lines their controls
    are built on (`debian:6.1`), oldest first."""
    lines = {line for bug in bugs for line in bug.verify.lines}
    lines |= {c.base.partition(":")[2] for bug in bugs for c in bug.controls
              if c.base.startswith("debian:") and is_line(c.base.partition(":")[2])}
    return sorted(lines, key=ver_key)


def plan_lines(bugs: list[Bug], entries: list[dict]) -> LinePlan:
    """The newest kernel of every line the bugs need, from Debian listing records."""
    available = {e.get("spec") or f"debian:{e['version']}" for e in entries if e.get("available")}
    return LinePlan(pick_line_kernels(entries, lines_needed(bugs)), available)


def pinned_lines(bugs: list[Bug], kernels: tuple[str, ...]) -> LinePlan:
    """`--kernel`s as the fixed kernels: one pseudo-line each, expected good, replacing the bugs'
    own lines (the bugs are changed in place: the plan is what this invocation proves). A pinned
    Debian kernel is also its line's kernel for the controls built on that line."""
    pinned: dict[str, str | None] = {f"k{i}": k for i, k in enumerate(kernels)}
    line_kernels = dict(pinned)
    for spec in kernels:  # a pinned Debian kernel also stands for its line: controls on `debian:6.1` use it
        source, _, version = spec.partition(":")
        if source == "debian" and "+" not in version and re.match(r"\d+\.\d+\.", version):
            line_kernels.setdefault(".".join(version.split(".")[:2]), spec)
    for bug in bugs:
        bug.verify.lines = list(pinned)
        bug.verify.expect = {}
    return LinePlan(line_kernels, None)


def plan_rows(bug: Bug, line_kernels: dict[str, str | None], available: set[str] | None = None) -> list[Row]:
    """The rows `verify` will probe for one bug, before any boot.

    `line_kernels` maps each Debian line to its newest kernel (None when unreachable);
    `available` (specs known to the sources), when given, marks affected kernels that cannot be
    had instead of probing them.
    """
    rows = _control_rows(bug, line_kernels)
    for spec in bug.verify.bad_kernels:
        if available is not None and spec.startswith("debian:") and spec not in available:
            rows.append(Row(bug.id, "affected kernel", spec, "bad", reason="not reachable from the debian source"))
            continue
        rows.append(Row(bug.id, "affected kernel", spec, "bad"))
    if not bug.controls:
        rows.append(Row(bug.id, "no control", "", "", reason=bug.verify.no_control.strip()
                        or "no positive-control patch is shipped"))
    return rows + _line_rows(bug, line_kernels)


def _control_rows(bug: Bug, line_kernels: dict[str, str | None]) -> list[Row]:
    rows = []
    for ctl in bug.controls:
        base = _resolve_base(ctl.base, line_kernels)
        if base is None:
            rows.append(Row(bug.id, "positive control", f"{ctl.base}+{ctl.name}", ctl.expect,
                            verdict="", reason=f"base {ctl.base} is not reachable"))
            continue
        rows.append(Row(bug.id, "positive control", f"{base}+{ctl.name}", ctl.expect, note=ctl.patch))
        if ctl.build == "kernel":
            rows.append(Row(bug.id, "control's build without its patch", f"{base}+{GUEST_BUILD}", "good",
                            note="the same whole-kernel build, guest config, no patch: the config alone "
                                 "does not make the reproducer say bad"))
    return rows


def _line_rows(bug: Bug, line_kernels: dict[str, str | None]) -> list[Row]:
    """One row per fixed line (a kernel two lines share is probed once)."""
    rows = []
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


def markdown_table(rows: list[Row]) -> str:
    """The README's proof table."""
    out = ["| reproducer | role | kernel | expected | verdict | outcome | what the reproducer saw |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        seen = (r.reason or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{r.bug}` | {r.role} | {('`' + r.kernel + '`') if r.kernel else '-'} | {r.expect or '-'} "
                   f"| {r.verdict or '-'} | {r.outcome} | {seen} |")
    return "\n".join(out)


def failed(rows: list[Row]) -> bool:
    """Whether a run of the table proves less than it should (exit 1): a row disagrees or could
    not be decided."""
    return any(r.outcome in ("MISMATCH", "unproven") for r in rows)
