"""Sweep flags and cell verdicts are str-valued enums; matrix.json keeps the same strings."""

from __future__ import annotations

import json

from orchestrator.core.sweep import FLAGS, REGRESSION, Cell, Flag, build_matrix, flag_cell, latest_decided
from orchestrator.core.verdict import Verdict

K55, K56 = "debian:6.1.0-55-cloud-amd64", "debian:6.1.0-56-cloud-amd64"


def test_flags_are_an_enum_that_still_reads_as_the_old_strings() -> None:
    assert FLAGS == ("regression", "fixed", "new", "unchanged", "skip") and REGRESSION is Flag.REGRESSION
    earlier = latest_decided([Cell("b", "6.1", K55, "good", sweep_id=1)])[("b", "6.1")]
    got = flag_cell(Cell("b", "6.1", K56, "bad"), earlier)
    assert got.flag is Flag.REGRESSION and got.flag == "regression"
    assert flag_cell(Cell("b", "6.1", K56, "skip"), earlier).flag is Flag.SKIP
    assert flag_cell(Cell("b", "6.1", K56, Verdict.GOOD), earlier).flag is Flag.UNCHANGED


def test_cells_hold_verdicts_whatever_they_were_built_from() -> None:
    # the database and older callers hand strings; the core compares verdicts
    from_db = Cell("b", "6.1", K55, "bad")
    assert from_db.verdict is Verdict.BAD and from_db == Cell("b", "6.1", K55, Verdict.BAD)
    assert latest_decided([from_db])[("b", "6.1")].verdict is Verdict.BAD


def test_matrix_json_holds_plain_strings() -> None:
    history = [Cell("b", "6.1", K55, "good", sweep_id=1)]
    m = build_matrix([Cell("b", "6.1", K56, "bad", sweep_id=2)], history, {"6.1": K56})
    data = m.to_json()
    cell = data["cells"][0]
    assert (cell["verdict"], cell["flag"], cell["earlier"]["verdict"]) == ("bad", "regression", "good")
    assert all(type(v) is str for v in (cell["verdict"], cell["flag"], cell["earlier"]["verdict"]))
    assert all(type(k) is str for k in data["counts"]) and data["counts"]["regression"] == 1
    assert json.loads(json.dumps(data)) == data
