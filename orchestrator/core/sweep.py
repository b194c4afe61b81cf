"""The nightly sweep, pure part: which cells to probe, and what changed since the earlier sweeps.

A sweep probes every reproducer on the newest kernel of each line. Columns are named by source:
Debian's lines keep their bare names ("5.10", "6.1", "6.12", "newest"); mainline columns are
"mainline:6.1" (the newest available build of the 6.1 stable line; `--lts` plans every line of
core.lts) and "mainline:newest" (the newest release); Ubuntu columns are "ubuntu:5.4" (the newest
upload of the series built on 5.4, focal). `--kernel` adds or pins a column named after the
kernel's line, the same names. Each column says which kernel it uses, why when newer builds were
unusable (`note`), and what moved since the previous sweep on that line (`moved`). Each (bug, line) cell
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
from orchestrator.core.lts import lts_lines, lts_of, ubuntu_swept_series
from orchestrator.core.textenum import TextEnum
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import SOURCES, parse_spec, series_of_base


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
LISTED_SOURCES = ("mainline", "ubuntu", "debian")  # the sources a sweep plans lines of (--source)
DEFAULT_SOURCES = ("debian",)  # works offline: kbisect's own apt lists
HISTORY_CELLS = 10  # earlier cells of one bug and line each cell carries (`history`)


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
    """Debian lines oldest first, then "newest", then the other sources' columns by source and
    line (mainline:4.19 … mainline:6.18, mainline:newest, ubuntu:4.15 …), variants after."""
    def key(c: str) -> tuple:
        if is_line(c):
            return (0, "", 0, ver_key(c), c)
        if c == "newest":
            return (1, "", 0, ver_key("0"), c)
        prefix, _, rest = c.rpartition(":")
        if is_line(rest):
            return (2, prefix, 0, ver_key(rest), c)
        if rest == "newest":
            return (2, prefix, 1, ver_key("0"), c)
        return (2, prefix, 2, ver_key("0"), c)
    return sorted(columns, key=key)


def check_sources(sources: Iterable[str], lts: bool) -> list[str]:
    """`--source` values, checked and deduplicated in order (default: Debian, which works offline)."""
    out: list[str] = []
    for text in sources:
        name = (text or "").strip().lower()
        if name not in LISTED_SOURCES:
            raise KbisectError(f"--source {text!r}: expected one of {', '.join(LISTED_SOURCES)}")
        if name not in out:
            out.append(name)
    if lts and "mainline" not in out:
        raise KbisectError("--lts plans kernel.org's long-term lines of the mainline source: add --source mainline")
    return out


@dataclass(frozen=True)
class LineRequest:
    """One column to resolve: which source's listing, which line of it."""

    column: str  # "6.1", "newest", "mainline:6.1", "mainline:newest", "ubuntu:5.4"
    source: str
    line: str  # "6.1" or "newest"
    series: str | None = None  # Ubuntu: the series whose uploads are listed
    ends: str | None = None  # an LTS line's projected end of life (YYYY-MM, core.lts)


def plan_lines(sources: Iterable[str], lines: Iterable[str], kernels: Iterable[str], lts: bool = False) -> list[LineRequest]:
    """The columns to resolve from listings, per source, in order.

    Without `--source`: Debian's `--line`s or its default lines, none with only `--kernel` pins
    (as before sources existed). Debian takes every `--line`; mainline takes them as its lines
    ("6.1", "newest") and, with `--lts` or without `--line`, every LTS line plus the newest
    release; Ubuntu takes a line as the series built on it and, without `--line`, every series
    it sweeps (core.lts)."""
    given = list(sources)
    picked = check_sources(given, lts) if given or lts else list(DEFAULT_SOURCES)
    kernels = list(kernels)
    wanted = requested_lines(lines, kernels if not given else [])
    explicit = [check_line(t) for t in lines]
    out: list[LineRequest] = []
    for source in picked:
        if source == "debian":
            out += [LineRequest(line, "debian", line) for line in wanted]
        elif source == "mainline":
            chosen = list(dict.fromkeys(explicit + (lts_lines() + ["newest"] if lts or not explicit else [])))
            for line in chosen:
                lts_line = lts_of(line)
                out.append(LineRequest(f"mainline:{line}", "mainline", line, ends=lts_line.ends if lts_line else None))
        else:
            out += _ubuntu_lines(explicit)
    seen: set[str] = set()
    return [r for r in out if not (r.column in seen or seen.add(r.column))]


def _ubuntu_lines(explicit: list[str]) -> list[LineRequest]:
    swept = ubuntu_swept_series()
    if not explicit:
        return [LineRequest(f"ubuntu:{base}", "ubuntu", base, series) for series, base in swept]
    out = []
    for line in explicit:
        series, base = swept[-1] if line == "newest" else (series_of_base("ubuntu", line), line)
        if series is not None:
            out.append(LineRequest(f"ubuntu:{base}", "ubuntu", base, series))
    if not out:  # a line another source has is that source's; Ubuntu must get one at least
        known = ", ".join(f"{s} {b}" for s, b in swept)
        raise KbisectError(f"--line {', '.join(explicit)} --source ubuntu: no Ubuntu series is built on "
                           f"{' or '.join(explicit)} (known: {known})")
    return out


@dataclass
class Column:
    """One column of the matrix: its line, the kernel the sweep uses there, and what to say
    about it (a passed-over newer build, what moved since the previous sweep)."""

    line: str
    kernel: str | None
    source: str
    note: str | None = None  # "6.1.120 build failed; using 6.1.119", or None
    moved: str | None = None  # "6.1.119 → 6.1.120", or None
    ends: str | None = None  # an LTS line's projected end of life
    series: str | None = None  # an Ubuntu column's series

    def to_json(self) -> dict:
        return asdict(self)


def column_source(column: str, kernel: str | None = None) -> str:
    """The source a column's kernels come from: its kernel's, else its name's prefix, else Debian."""
    if kernel:
        try:
            return parse_spec(kernel).source
        except KbisectError:
            pass
    prefix = column.split(":", 1)[0] if ":" in column else ""
    return prefix if prefix in SOURCES else "debian"


def describe_column(column: str) -> str:
    """How a column's line reads in a sentence: "Debian 6.1", "Debian", "mainline 6.1", "ubuntu 5.4"."""
    if ":" not in column:
        return "Debian" if column == "newest" else f"Debian {column}"
    source, _, line = column.partition(":")
    return source if line == "newest" else f"{source} {line}"


def bare(spec: str) -> str:
    """A kernel without its source ("6.1.119" for mainline:6.1.119): how `moved` names them."""
    return spec.split(":", 1)[1] if ":" in spec else spec


def moved_since(columns: dict[str, str | None], history: Iterable[Cell], bugs: Iterable[str]) -> dict[str, str]:
    """Column -> "6.1.119 → 6.1.120" where the most recent earlier sweep that probed this line
    (for any of `bugs`) had another kernel there. Cells without a kernel (the line had none
    reachable) say nothing about what the line held."""
    wanted = set(bugs)
    last: dict[str, tuple[int, str]] = {}
    for c in history:
        if c.bug in wanted and c.kernel and c.line in columns and (c.line not in last or c.sweep_id >= last[c.line][0]):
            last[c.line] = (c.sweep_id, c.kernel)
    return {line: f"{bare(last[line][1])} → {bare(kernel)}" for line, kernel in columns.items()
            if kernel and line in last and last[line][1] != kernel}


def sweep_key(bugs: Iterable[str], lines: Iterable[str], kernels: Iterable[str],
              sources: Iterable[str] = DEFAULT_SOURCES, lts: bool = False) -> str:
    """Identity of the command, not of its answers: the same bugs, lines, sources and pinned
    kernels on the same day are one sweep, so re-running a killed sweep finishes it instead of
    starting another. The default (Debian only) keys as it did before sources existed."""
    plan: dict = {"bugs": sorted(set(bugs)), "lines": sorted(set(lines)), "kernels": sorted(set(kernels))}
    sources = list(sources)
    if sources != list(DEFAULT_SOURCES) or lts:
        plan.update(sources=sources, lts=lts)
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
    # the probe behind the verdict (app.sweep.cell_detail): log, console, record and artefact
    # paths, console excerpt, how its guest was shared ("vm") and a re-check's note
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        detail = data.pop("detail") or {}
        data.update({k: v for k, v in detail.items() if k not in data})
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
    history: list[dict] = field(default_factory=list)  # earlier cells of this bug and line, oldest first

    def to_json(self) -> dict:
        data = self.cell.to_json()
        data.update(flag=self.flag.value, note=self.note, earlier=self.earlier.to_json() if self.earlier else None,
                    history=list(self.history))
        return data


def cell_histories(history: Iterable[Cell], before: int | None = None,
                   keep: int = HISTORY_CELLS) -> dict[tuple[str, str], list[dict]]:
    """(bug, line) -> its last `keep` earlier cells, oldest first, each {sweep, kernel, verdict,
    at} (skips included: the marks a report draws are every night, not only decided ones)."""
    grouped: dict[tuple[str, str], list[Cell]] = {}
    for c in history:
        if before is None or c.sweep_id < before:
            grouped.setdefault((c.bug, c.line), []).append(c)
    out = {}
    for key, cells in grouped.items():
        cells.sort(key=lambda c: (c.sweep_id, c.at))
        out[key] = [{"sweep": c.sweep_id, "kernel": c.kernel, "verdict": c.verdict.value, "at": c.at}
                    for c in cells[-keep:]]
    return out


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
    columns: dict[str, Column] = field(default_factory=dict)  # line -> what its header says

    def column(self, line: str) -> Column:
        kernel = self.kernels.get(line)
        return self.columns.get(line) or Column(line, kernel, column_source(line, kernel))

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
            "columns": [self.column(line).to_json() for line in self.lines],
            "counts": self.counts(),
            "regressions": [{"bug": f.cell.bug, "line": f.cell.line, "note": f.note} for f in self.with_flag(Flag.REGRESSION)],
            "fixed": [{"bug": f.cell.bug, "line": f.cell.line, "note": f.note} for f in self.with_flag(Flag.FIXED)],
            "cells": [self.cells[(b, line)].to_json() for b in self.bugs for line in self.lines
                      if (b, line) in self.cells],
        }


def build_matrix(cells: Iterable[Cell], history: Iterable[Cell], kernels: dict[str, str | None],
                 bugs: list[str] | None = None, lines: list[str] | None = None,
                 columns: dict[str, Column] | None = None) -> Matrix:
    """Flag this sweep's `cells` against `history` (cells of earlier sweeps), each carrying its
    last HISTORY_CELLS earlier cells. Row and column order follow `bugs` and `lines` when given,
    else the order cells appear in; `columns` are the headers (kernel, note, moved)."""
    cells = list(cells)
    history = list(history)
    this = {c.sweep_id for c in cells}
    before = min(this) if this and 0 not in this else None
    earlier = latest_decided(history, before)
    past = cell_histories(history, before)
    bugs = list(bugs) if bugs is not None else list(dict.fromkeys(c.bug for c in cells))
    lines = list(lines) if lines is not None else list(dict.fromkeys(c.line for c in cells))
    matrix = Matrix(bugs, lines, dict(kernels), columns=dict(columns or {}))
    for c in cells:
        flagged = flag_cell(c, earlier.get((c.bug, c.line)))
        flagged.history = past.get((c.bug, c.line), [])
        matrix.cells[(c.bug, c.line)] = flagged
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


# -- auto-bisect: which bad cells have a good kernel to start from ---------------------------------

@dataclass(frozen=True)
class BisectTarget:
    """One bisection `--auto-bisect` asks for: `bug` on `line`, from a kernel known good there."""

    bug: str
    line: str
    good: str
    bad: str
    why: str  # where the good end came from, for the progress line and the JSON


def bisect_targets(flagged: list[Flagged], history: list[Cell]) -> list[BisectTarget]:
    """Every bad cell with a good kernel to start from, in matrix order, each pair once.

    The good end is, in order: the earlier verdict a regression was flagged against; for a
    patched variant (a pinned positive control), its base kernel (the bisection probes it when
    the sweep did not: a bad base is the bisection's ends-disagree, not a guess here); else the
    most recent good kernel of that bug on that line in the history. A bad cell with
    none of these (a new line that was never good) has nothing to bisect from."""
    good_now = {(f.cell.bug, f.cell.kernel) for f in flagged if f.cell.verdict == "good" and f.cell.kernel}
    out: list[BisectTarget] = []
    seen: set[tuple[str, str, str]] = set()
    for f in flagged:
        c = f.cell
        if c.verdict != "bad" or not c.kernel:
            continue
        start = _good_end(f, good_now, history)
        if start is None or start[0] == c.kernel or (c.bug, start[0], c.kernel) in seen:
            continue
        seen.add((c.bug, start[0], c.kernel))
        out.append(BisectTarget(c.bug, c.line, start[0], c.kernel, start[1]))
    return out


def _good_end(f: Flagged, good_now: set[tuple[str, str]], history: list[Cell]) -> tuple[str, str] | None:
    c = f.cell
    if f.earlier is not None and f.earlier.verdict is Verdict.GOOD:
        return f.earlier.kernel, f"good in sweep {f.earlier.sweep_id}"
    base = c.kernel.split("+", 1)[0]
    if base != c.kernel:  # a patched variant (a pinned positive control) starts from its base
        known = (c.bug, base) in good_now
        return base, "the variant's base" + (", good in this sweep" if known else " (the bisection probes it)")
    goods = [h for h in history if h.bug == c.bug and h.line == c.line and h.verdict == "good" and h.kernel]
    if goods:
        last = max(goods, key=lambda h: (h.sweep_id or 0, h.at or 0.0))
        return last.kernel, f"good in sweep {last.sweep_id}"
    return None
