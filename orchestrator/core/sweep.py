"""The nightly sweep, pure part: which cells to probe, and what changed since the earlier sweeps.

A sweep probes every reproducer on the newest kernel of each line (columns "5.10", "6.1", "6.12",
"newest"; `--kernel` adds or pins a column named after the kernel's line). Each (bug, line) cell
gets a verdict, and is compared with the same bug on the same line in the most recent earlier
sweep that had a good or bad verdict there:

* ``regression``  good then, bad now (typically the line's newest kernel moved);
* ``fixed``       bad then, good now;
* ``new``         no earlier good/bad verdict for this bug on this line;
* ``unchanged``   the same verdict as then;
* ``skip``        this sweep could not tell (kernel unreachable, boot failure, exit 125). A skip
                  is neither good nor bad and never a regression; the earlier verdict is kept
                  beside it, and the next sweep compares with that verdict, not with the skip.

Each earlier verdict remembers the kernel it was seen on, so a flag reads "good on 6.1.0-55 (sweep
3), bad on 6.1.0-56". Flags and verdicts are str-valued enums (`Flag`, `Verdict`): matrix.json and
the sweep database hold their values. Everything here is plain data in, plain data out: the
sweep use case does the probing, storage (`store.SweepLog`) and writing.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

from orchestrator.core.bug import DEFAULT_LINES
from orchestrator.core.errors import KbisectError
from orchestrator.core.lineages import kernel_of
from orchestrator.core.lines import is_line, ver_key
from orchestrator.core.textenum import TextEnum
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import parse_spec


class Flag(TextEnum):
    """What one cell says against the earlier sweeps (see the module docstring)."""

    REGRESSION = "regression"
    FIXED = "fixed"
    NEW = "new"
    UNCHANGED = "unchanged"
    SKIP = "skip"


# The flags as module constants, for callers outside the core that still import them (the sweep
# use case and command); the core compares with Flag.
REGRESSION, FIXED, NEW, UNCHANGED, SKIP = Flag.REGRESSION, Flag.FIXED, Flag.NEW, Flag.UNCHANGED, Flag.SKIP
FLAGS = tuple(Flag)
DECIDED = (Verdict.GOOD, Verdict.BAD)


# -- the plan ---------------------------------------------------------------------------------

def check_line(text: str) -> str:
    """A Debian line as `--line` takes it: "6.1", "5.10" or "newest"."""
    line = (text or "").strip().lower()
    if line != "newest" and not is_line(line):
        raise KbisectError(f"--line {text!r}: expected a kernel line such as 6.1 or 5.10, or 'newest'")
    return line


def column_of(spec: str) -> tuple[str, str]:
    """(column, canonical spec) of a `--kernel` spec: a Debian kernel's column is its line
    ("debian:6.1.0-54-cloud-amd64" -> "6.1"), other sources keep their name ("mainline:5.4");
    a patched variant gets a column of its own ("6.1+revert-227adfb2b1df") so it is never
    compared with the stock kernels of its line."""
    parsed = parse_spec(spec)
    if parsed.source == "local":
        return str(parsed), str(parsed)
    kernel = kernel_of(parsed)
    column = str(kernel.base) if parsed.source == "debian" else f"{parsed.source}:{kernel.base}"
    if parsed.variant:
        column += f"+{parsed.variant}"
    return column, str(parsed)


def requested_lines(lines: Iterable[str], kernels: Iterable[str]) -> list[str]:
    """The lines to pick kernels for: `--line` values (deduplicated, in order), the default
    lines when neither `--line` nor `--kernel` is given, none when only `--kernel` is."""
    out: list[str] = []
    for text in lines:
        line = check_line(text)
        if line not in out:
            out.append(line)
    if not out and not list(kernels):
        out = list(DEFAULT_LINES)
    return out


def resolve_columns(lines: list[str], kernels: Iterable[str], picked: dict[str, str | None]) -> dict[str, str | None]:
    """Column -> kernel spec (None when the line has no reachable kernel).

    `picked` is `lines.pick_line_kernels(...)` for `lines`. A `--kernel` on a requested line pins
    that line's kernel; one on another line adds a column. Two `--kernel`s on one column are
    refused: a cell has one kernel.
    """
    columns: dict[str, str | None] = {line: picked.get(line) for line in lines}
    pinned: dict[str, str] = {}
    for text in kernels:
        column, spec = column_of(text)
        if column in pinned and pinned[column] != spec:
            raise KbisectError(f"--kernel {pinned[column]} and --kernel {spec} are both on line {column}: "
                               "give one kernel per line")
        pinned[column] = spec
        columns[column] = spec
    return columns


def sort_columns(columns: dict[str, str | None]) -> list[str]:
    """Lines oldest first, then "newest", then other sources and variants."""
    def key(c: str) -> tuple:
        if is_line(c):
            return (0, ver_key(c), c)
        if c == "newest":
            return (1, (), c)
        return (2, (), c)
    return sorted(columns, key=key)


def sweep_key(bugs: Iterable[str], lines: Iterable[str], kernels: Iterable[str]) -> str:
    """Identity of the command, not of its answers: the same bugs, lines and pinned kernels on the
    same day are one sweep, so re-running a killed sweep finishes it instead of starting another."""
    plan = {"bugs": sorted(set(bugs)), "lines": sorted(set(lines)), "kernels": sorted(set(kernels))}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


# -- cells and their flags --------------------------------------------------------------------

@dataclass
class Cell:
    """One reproducer on one line's kernel in one sweep."""

    bug: str
    line: str
    kernel: str  # spec; "" when the line had no reachable kernel
    verdict: Verdict  # a "good" / "bad" / "skip" string (the database's) is taken too
    reason: str = ""
    seconds: float = 0.0
    source: str = ""  # where the verdict came from: probe | store | probe+store | error | none
    runs: int = 0
    repro_hash: str = ""
    sweep_id: int = 0
    at: float = 0.0  # when the sweep that holds this cell started (epoch seconds)

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


@dataclass
class Earlier:
    """The verdict a cell is compared with: the most recent earlier good/bad one on that line."""

    sweep_id: int
    at: float
    kernel: str
    verdict: Verdict
    repro_hash: str = ""

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["date"] = _date(self.at)
        return data


@dataclass
class Flagged:
    cell: Cell
    flag: Flag
    earlier: Earlier | None = None
    note: str = ""

    def to_json(self) -> dict:
        data = self.cell.to_json()
        data.update(flag=self.flag.value, note=self.note, earlier=self.earlier.to_json() if self.earlier else None)
        return data


def utc_day(at: float) -> str:
    """The UTC day of `at`: a sweep's identity (one per command per day) and how flags date it."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _date(at: float) -> str:
    return utc_day(at) if at else "?"


def short(spec: str) -> str:
    """A kernel as people say it: "6.1.0-55-cloud-amd64" for debian:6.1.0-55-cloud-amd64."""
    return spec.split(":", 1)[1] if spec.startswith("debian:") else spec


def latest_decided(history: Iterable[Cell], before: int | None = None) -> dict[tuple[str, str], Earlier]:
    """(bug, line) -> the most recent good/bad verdict among `history` (cells of earlier sweeps,
    any order); only sweeps with an id below `before` when given. Skips never count."""
    out: dict[tuple[str, str], Earlier] = {}
    for c in history:
        if c.verdict not in DECIDED or (before is not None and c.sweep_id >= before):
            continue
        key = (c.bug, c.line)
        if key not in out or c.sweep_id > out[key].sweep_id:
            out[key] = Earlier(c.sweep_id, c.at, c.kernel, c.verdict, c.repro_hash)
    return out


def flag_cell(cell: Cell, earlier: Earlier | None) -> Flagged:
    """The flag of one cell against the earlier verdict on its line, with the sentence that says
    which kernels the two verdicts were seen on."""
    then = (f"{earlier.verdict} on {short(earlier.kernel)} (sweep {earlier.sweep_id}, {_date(earlier.at)})"
            if earlier else "")
    if cell.verdict not in DECIDED:
        return Flagged(cell, Flag.SKIP, earlier, f"skip; last verdict {then}" if earlier else "skip; no earlier verdict")
    now = f"{cell.verdict} on {short(cell.kernel)}"
    if earlier is None:
        return Flagged(cell, Flag.NEW, None, f"{now}; no earlier verdict on this line")
    if earlier.verdict is cell.verdict:
        return Flagged(cell, Flag.UNCHANGED, earlier, f"{cell.verdict} also on {short(earlier.kernel)} "
                                                 f"(sweep {earlier.sweep_id}, {_date(earlier.at)})")
    flag = Flag.REGRESSION if cell.verdict is Verdict.BAD else Flag.FIXED
    note = f"{then}, {now}"
    if earlier.kernel == cell.kernel:
        if earlier.repro_hash and cell.repro_hash and earlier.repro_hash != cell.repro_hash:
            note += " (same kernel: the reproducer changed since)"
        else:
            note += " (same kernel and reproducer: flaky, or the host changed)"
    return Flagged(cell, flag, earlier, note)


@dataclass
class Matrix:
    """Rows = bugs, columns = lines; one flagged cell per (bug, line)."""

    bugs: list[str]
    lines: list[str]
    kernels: dict[str, str | None]  # line -> the kernel this sweep used for it
    cells: dict[tuple[str, str], Flagged] = field(default_factory=dict)

    def cell(self, bug: str, line: str) -> Flagged | None:
        return self.cells.get((bug, line))

    def with_flag(self, flag: Flag | str) -> list[Flagged]:
        return [self.cells[(b, line)] for b in self.bugs for line in self.lines
                if (b, line) in self.cells and self.cells[(b, line)].flag == flag]

    def counts(self) -> dict[str, int]:
        out = {f.value: 0 for f in Flag}
        for f in self.cells.values():
            out[f.flag] += 1
        return out

    def to_json(self) -> dict:
        return {
            "bugs": list(self.bugs),
            "lines": list(self.lines),
            "columns": [{"line": line, "kernel": self.kernels.get(line)} for line in self.lines],
            "counts": self.counts(),
            "regressions": [{"bug": f.cell.bug, "line": f.cell.line, "note": f.note} for f in self.with_flag(Flag.REGRESSION)],
            "fixed": [{"bug": f.cell.bug, "line": f.cell.line, "note": f.note} for f in self.with_flag(Flag.FIXED)],
            "cells": [self.cells[(b, line)].to_json() for b in self.bugs for line in self.lines
                      if (b, line) in self.cells],
        }


def build_matrix(cells: Iterable[Cell], history: Iterable[Cell], kernels: dict[str, str | None],
                 bugs: list[str] | None = None, lines: list[str] | None = None) -> Matrix:
    """Flag this sweep's `cells` against `history` (cells of earlier sweeps). Row and column order
    follow `bugs` and `lines` when given, else the order cells appear in."""
    cells = list(cells)
    this = {c.sweep_id for c in cells}
    before = min(this) if this and 0 not in this else None
    earlier = latest_decided(history, before)
    bugs = list(bugs) if bugs is not None else list(dict.fromkeys(c.bug for c in cells))
    lines = list(lines) if lines is not None else list(dict.fromkeys(c.line for c in cells))
    matrix = Matrix(bugs, lines, dict(kernels))
    for c in cells:
        matrix.cells[(c.bug, c.line)] = flag_cell(c, earlier.get((c.bug, c.line)))
    return matrix


def replay_history(cells: Iterable[Cell]) -> dict[int, dict[str, int]]:
    """Flag counts of every sweep, oldest first, each against the sweeps before it (what
    `kbisect sweep history` lists). One pass: the latest decided verdict per (bug, line) is
    carried forward sweep by sweep."""
    by_sweep: dict[int, list[Cell]] = {}
    for c in cells:
        by_sweep.setdefault(c.sweep_id, []).append(c)
    latest: dict[tuple[str, str], Earlier] = {}
    out: dict[int, dict[str, int]] = {}
    for sweep_id in sorted(by_sweep):
        counts = {f.value: 0 for f in Flag}
        for c in by_sweep[sweep_id]:
            counts[flag_cell(c, latest.get((c.bug, c.line))).flag] += 1
        latest.update(latest_decided(by_sweep[sweep_id]))
        out[sweep_id] = counts
    return out
