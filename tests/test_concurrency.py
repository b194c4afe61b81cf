"""Two sweeps and two bisections at once against one $KBISECT_HOME (issue 11, item 8).

Each runs in its own process on fake probes (tests/concurrency_driver.py), all four released
together by a go-file. What must hold: the sweeps agree on one row for the day (the look-up and
the insert are one write transaction), every cell is stored once, both bisections give the same
answer, and nobody dies of a locked database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from orchestrator.adapters.store import Store, SweepLog

ROOT = Path(__file__).resolve().parents[1]


def _start(what: str, go: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.concurrency_driver", what, str(go)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_sweeps_and_two_bisections_at_once(kbisect_home, tmp_path):
    env = {**os.environ, "KBISECT_HOME": str(kbisect_home), "KBISECT_RESULTS": str(tmp_path / "results")}
    Store().close()  # the schema exists before the race: the race is about rows, not tables
    go = tmp_path / "go"
    procs = [_start(what, go, env) for what in ("sweep", "sweep", "bisect", "bisect")]
    go.touch()
    answers = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "locked" not in err
        answers.append(json.loads(out.strip().splitlines()[-1]))
    sweep_a, sweep_b, bisect_a, bisect_b = answers
    assert sweep_a["sweep"] == sweep_b["sweep"]
    assert sweep_a["cells"] == sweep_b["cells"] and len(sweep_a["cells"]) == 4
    assert bisect_a["status"] == bisect_b["status"] == "found"
    assert bisect_a["first_bad"] == bisect_b["first_bad"]

    db = sqlite3.connect(kbisect_home / "results.db")
    assert db.execute("SELECT COUNT(*) FROM sweeps").fetchone() == (1,)
    assert db.execute("SELECT COUNT(*) FROM sweep_cells").fetchone() == (4,)
    assert db.execute("SELECT COUNT(DISTINCT command) FROM runs").fetchone() >= (1,)


def _open_many(home: Path, barrier, keys: int) -> None:
    """Child process body: open `keys` sweeps on one day, in step with the other process."""
    os.environ["KBISECT_HOME"] = str(home)
    log = SweepLog(Store())
    for k in range(keys):
        barrier.wait(60)
        log.open(f"key-{k}", {}, now=1_760_000_000.0)


def test_the_day_row_is_claimed_once_under_a_race(kbisect_home, tmp_path):
    """Many keys opened by two processes in step: a select-then-insert outside one write
    transaction gives some key two rows for the day; claimed under BEGIN IMMEDIATE, never."""
    import multiprocessing

    store = Store()
    SweepLog(store)  # the tables exist first
    store.close()  # a connection must not cross fork()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_open_many, args=(kbisect_home, barrier, 200)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = sqlite3.connect(kbisect_home / "results.db")
    dupes = db.execute("SELECT key, COUNT(*) FROM sweeps GROUP BY key, day HAVING COUNT(*) > 1").fetchall()
    assert dupes == []
    assert db.execute("SELECT COUNT(*) FROM sweeps").fetchone() == (200,)
