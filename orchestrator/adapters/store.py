"""The results database: every probe stored the moment it finishes, so a killed bisection resumes.

A probe is found by (bug id, kernel content id, reproducer content hash, sequence number). The
kernel's content id (core.identity) means a name that comes to stand for other bytes (a rebuilt
`local:` tree) is asked again; the reproducer hash means editing the reproducer invalidates old
verdicts automatically (they answered a different question); the sequence number is the n-th time
this run asked for that kernel, so boundary re-runs are stored too and a resumed run replays
exactly the answers the killed run had already paid for, in the same order, and then continues
with real probes. The spec a probe was asked under is kept beside it, for people reading the rows.

Each row also records the run that wrote it (`run_key`): good and bad answers are reused by any
later run, a skip only by the run that stored it (see `get`). Bisections get their run keys from
`open_run` (a bisection killed and started again is the same run until one of them finishes);
sweeps use their sweep id.

Rows written before content ids existed have an empty `kernel_id` and are never reused: which
bytes they tested is unknown. They stay in the table, for inspection.

SQLite because it is transactional (a kill mid-write loses at most the probe in flight) and needs
no daemon; it lives under `$KBISECT_HOME/results.db`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from orchestrator.adapters import catalog, config
from orchestrator.core.bug import Bug
from orchestrator.core.errors import KbisectError
from orchestrator.core.sweep import utc_day
from orchestrator.core.verdict import ProbeRecord, Verdict

_PROBES_COLUMNS = """
    bug TEXT NOT NULL,
    kernel TEXT NOT NULL,
    kernel_id TEXT NOT NULL,
    repro_hash TEXT NOT NULL,
    seq INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    record TEXT NOT NULL,
    stored_at REAL NOT NULL,
    run_key TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (bug, kernel, kernel_id, repro_hash, seq)
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS probes ({_PROBES_COLUMNS});
CREATE INDEX IF NOT EXISTS probes_by_content ON probes (bug, kernel_id, repro_hash, seq);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL
);
"""

# The probes table before content ids (no kernel_id, no run_key): its rows are copied over with
# an empty kernel_id, which no lookup matches.
_MIGRATE_V1 = f"""
ALTER TABLE probes RENAME TO probes_v1;
CREATE TABLE probes ({_PROBES_COLUMNS});
INSERT INTO probes SELECT bug, kernel, '', repro_hash, seq, verdict, reason, seconds, record, stored_at, ''
    FROM probes_v1;
DROP TABLE probes_v1;
"""


def reproducer_hash(bug: Bug) -> str:
    """sha256 over the reproducer directory (relative paths and contents, sorted): the same
    reproducer on the same kernel gives the same answer, a changed one must be re-asked."""
    digest = hashlib.sha256()
    if not Path(bug.dir).is_dir():
        digest.update(bug.id.encode())
        return digest.hexdigest()[:16]
    for root in catalog.guest_dirs(bug):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _record_from_json(data: dict) -> ProbeRecord:
    return ProbeRecord.from_json(data)


class Store:
    """Probe records in SQLite. One connection per Store; each put is its own transaction."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else config.home() / "results.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self._migrate()
            self.conn.executescript(SCHEMA)
            self.conn.commit()
        except sqlite3.DatabaseError as exc:  # not a database, damaged, or its disk full
            raise KbisectError(f"results database {self.path}: {exc}") from None

    def _migrate(self) -> None:
        """Bring a results.db from before content ids to this schema, once, under a write lock
        (two kbisect processes opening an old database: the second finds it migrated)."""
        if "kernel_id" in self._probe_columns() or not self._probe_columns():
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if "kernel_id" not in self._probe_columns():
                for statement in filter(str.strip, _MIGRATE_V1.split(";")):
                    self.conn.execute(statement)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    def _probe_columns(self) -> set[str]:
        return {row[1] for row in self.conn.execute("PRAGMA table_info(probes)")}

    def get(self, bug: str, kernel_id: str, repro_hash: str, seq: int, since: float | None = None, *,
            run_key: str | None = None) -> ProbeRecord | None:
        """The stored probe of these kernel bytes, if any (only one stored at or after `since`,
        when given; the newest when the same bytes were stored under several specs).

        A skip is returned only to the run that stored it (`run_key`): a resumed run keeps what
        it paid for, but a later one asks again, since a skip says more about that night (a
        broken mirror, a host that could not boot a VM) than about the kernel."""
        if not kernel_id:
            return None
        row = self.conn.execute(
            "SELECT record FROM probes WHERE bug=? AND kernel_id=? AND repro_hash=? AND seq=? AND stored_at>=? "
            "AND (verdict != ? OR run_key = ?) ORDER BY stored_at DESC LIMIT 1",
            (bug, kernel_id, repro_hash, seq, since if since is not None else float("-inf"),
             Verdict.SKIP.value, run_key if run_key else None),
        ).fetchone()
        return _record_from_json(json.loads(row[0])) if row else None

    def put(self, bug: str, kernel: str, repro_hash: str, seq: int, record: ProbeRecord, *, kernel_id: str,
            run_key: str | None = None) -> None:
        """Store (or, under --fresh, replace) one finished probe of `kernel` (the spec asked) whose
        bytes have `kernel_id`, written by the run `run_key`, and commit at once."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO probes (bug, kernel, kernel_id, repro_hash, seq, verdict, reason, seconds, "
                "record, stored_at, run_key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (bug, kernel, kernel_id, repro_hash, seq, record.verdict.value, record.reason, record.seconds,
                 json.dumps(record.to_json()), time.time(), run_key or ""),
            )

    def all(self, bug: str | None = None) -> list[tuple[str, str, str, int, str]]:
        """(bug, kernel, repro_hash, seq, verdict) rows, for inspection and tests."""
        sql = "SELECT bug, kernel, repro_hash, seq, verdict FROM probes"
        args: tuple = ()
        if bug:
            sql += " WHERE bug=?"
            args = (bug,)
        return [tuple(r) for r in self.conn.execute(sql + " ORDER BY stored_at", args)]

    def open_run(self, command: str, now: float | None = None) -> str:
        """The run key for a bisection described by `command` (its bug, ends, distro): the
        unfinished run of that command if there is one (a killed run started again resumes),
        else a new run. `finish_run` closes it, so the next identical command is a new run."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")  # two processes opening the same command agree on one run
            row = self.conn.execute("SELECT run_key FROM runs WHERE command=? AND finished_at IS NULL "
                                    "ORDER BY started_at DESC LIMIT 1", (command,)).fetchone()
            if row:
                return str(row[0])
            (count,) = self.conn.execute("SELECT COUNT(*) FROM runs WHERE command=?", (command,)).fetchone()
            run_key = f"{command}#{count + 1}"
            self.conn.execute("INSERT INTO runs (run_key, command, started_at) VALUES (?,?,?)",
                              (run_key, command, time.time() if now is None else now))
            return run_key

    def finish_run(self, run_key: str, now: float | None = None) -> None:
        """Mark a bisection's run finished: its stored skips are not reused by the next one."""
        with self.conn:
            self.conn.execute("UPDATE runs SET finished_at=? WHERE run_key=?",
                              (time.time() if now is None else now, run_key))

    def close(self) -> None:
        self.conn.close()


# -- sweep history -----------------------------------------------------------------------------

SWEEP_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    day TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    plan TEXT NOT NULL,
    fresh INTEGER NOT NULL DEFAULT 0,
    report TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sweeps_key_day ON sweeps (key, day);
CREATE TABLE IF NOT EXISTS sweep_cells (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
    bug TEXT NOT NULL,
    line TEXT NOT NULL,
    kernel TEXT NOT NULL,
    repro_hash TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    source TEXT NOT NULL,
    runs INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (sweep_id, bug, line)
);
CREATE TABLE IF NOT EXISTS sweep_bisections (
    bug TEXT NOT NULL,
    good TEXT NOT NULL,
    bad TEXT NOT NULL,
    repro_hash TEXT NOT NULL,
    result TEXT NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (bug, good, bad, repro_hash)
);
"""


def _detail(text: str) -> dict:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class SweepLog:
    """Sweeps and their cells, in the probe store's database (`kbisect sweep`).

    A sweep is opened before its first cell and each cell is committed the moment it is decided,
    so a killed sweep keeps what it paid for. Opening the same command (same `key`) again on the
    same UTC day resumes that day's sweep instead of starting another (finished or not: a re-run
    recomputes the same flags against the same earlier sweeps). `fresh` resumes only an unfinished
    fresh sweep of the same command and day, and otherwise starts a new one.
    """

    def __init__(self, store: Store) -> None:
        self.conn = store.conn
        self.conn.executescript(SWEEP_SCHEMA)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(sweep_cells)")}
        if "detail" not in columns:  # a database from before cells linked their probes
            try:
                self.conn.execute("ALTER TABLE sweep_cells ADD COLUMN detail TEXT NOT NULL DEFAULT '{}'")
            except sqlite3.OperationalError:  # another kbisect added it first
                pass
        self.conn.commit()

    def open(self, key: str, plan: dict, fresh: bool = False, now: float | None = None) -> tuple[int, bool, float]:
        """(sweep id, resumed?, when the sweep started)."""
        now = time.time() if now is None else now
        day = utc_day(now)
        sql = "SELECT id, started_at FROM sweeps WHERE key=? AND day=?"
        if fresh:
            sql += " AND fresh=1 AND finished_at IS NULL"
        with self.conn:
            # One write transaction from the look-up to the insert: two sweeps started together
            # must agree on one row for the day, not each find none and insert its own.
            self.conn.execute("BEGIN IMMEDIATE")
            row = self.conn.execute(sql + " ORDER BY id DESC LIMIT 1", (key, day)).fetchone()
            if row:
                self.conn.execute("UPDATE sweeps SET plan=?, finished_at=NULL WHERE id=?", (json.dumps(plan), row[0]))
                return int(row[0]), True, float(row[1])
            cur = self.conn.execute("INSERT INTO sweeps (key, day, started_at, plan, fresh) VALUES (?,?,?,?,?)",
                                    (key, day, now, json.dumps(plan), int(fresh)))
            return int(cur.lastrowid), False, now

    def put_cell(self, sweep_id: int, cell: Any) -> None:
        """Store (or, on resume, replace) one decided cell (a `sweep.Cell`) and commit at once."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO sweep_cells (sweep_id, bug, line, kernel, repro_hash, verdict, reason, "
                "seconds, source, runs, stored_at, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (sweep_id, cell.bug, cell.line, cell.kernel, cell.repro_hash, cell.verdict, cell.reason,
                 cell.seconds, cell.source, cell.runs, time.time(), json.dumps(getattr(cell, "detail", {}) or {})))

    def finish(self, sweep_id: int, report: str = "", now: float | None = None) -> None:
        with self.conn:
            self.conn.execute("UPDATE sweeps SET finished_at=?, report=? WHERE id=?",
                              (time.time() if now is None else now, report, sweep_id))

    def bisection(self, bug: str, good: str, bad: str, repro_hash: str) -> dict | None:
        """The finished auto-bisection of `bug` between these kernels (same reproducer), if any."""
        row = self.conn.execute("SELECT result FROM sweep_bisections WHERE bug=? AND good=? AND bad=? AND repro_hash=?",
                                (bug, good, bad, repro_hash)).fetchone()
        return json.loads(row[0]) if row else None

    def put_bisection(self, bug: str, good: str, bad: str, repro_hash: str, result: dict,
                      now: float | None = None) -> None:
        """Record a finished auto-bisection: a later sweep links it instead of bisecting again."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO sweep_bisections VALUES (?,?,?,?,?,?)",
                              (bug, good, bad, repro_hash, json.dumps(result), time.time() if now is None else now))

    def cells(self, sweep_id: int | None = None, before: int | None = None) -> list[Any]:
        """`sweep.Cell`s, oldest sweep first: of one sweep, or of every sweep with an id below
        `before`, or all."""
        from orchestrator.core.sweep import Cell

        sql = ("SELECT c.bug, c.line, c.kernel, c.verdict, c.reason, c.seconds, c.source, c.runs, c.repro_hash, "
               "c.sweep_id, s.started_at, c.detail FROM sweep_cells c JOIN sweeps s ON s.id = c.sweep_id")
        args: tuple = ()
        if sweep_id is not None:
            sql, args = sql + " WHERE c.sweep_id=?", (sweep_id,)
        elif before is not None:
            sql, args = sql + " WHERE c.sweep_id<?", (before,)
        rows = self.conn.execute(sql + " ORDER BY c.sweep_id, c.stored_at", args)
        return [Cell(*row[:-1], detail=_detail(row[-1])) for row in rows]

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep, oldest first, with how many cells it holds of how many planned."""
        rows = self.conn.execute(
            "SELECT s.id, s.day, s.started_at, s.finished_at, s.plan, s.fresh, s.report, "
            "(SELECT COUNT(*) FROM sweep_cells c WHERE c.sweep_id = s.id) FROM sweeps s ORDER BY s.id").fetchall()
        out = []
        for sid, day, started, finished, plan, fresh, rep, ncells in rows:
            plan = json.loads(plan)
            out.append({"id": sid, "day": day, "started_at": started, "finished_at": finished,
                        "fresh": bool(fresh), "report": rep, "cells": ncells,
                        "planned": len(plan.get("bugs", [])) * len(plan.get("columns", {})),
                        "bugs": plan.get("bugs", []), "columns": plan.get("columns", {})})
        return out
