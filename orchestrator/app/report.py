"""`kbisect report`: render a report again from what is stored, and the results index.

A bisection is read back from its run directory (`<results_dir>/<run-id>/result.json`, with the
console excerpts and artefact paths of evidence.json when the run wrote one). A sweep is rebuilt
from the results database (store.SweepLog: its plan, its cells and the cells of the sweeps before
it, flagged again by core.sweep exactly as the sweep did), each cell given its earlier sweeps as
`history`; what the database does not hold (probe counts, boots, artefacts, auto-bisections,
what moved) is taken from the sweep's stored matrix.json when there is one.

The world comes in through `ReportDeps` (the store), so tests pass their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.adapters import config, report
from orchestrator.adapters.store import Store, SweepLog
from orchestrator.core.errors import KbisectError
from orchestrator.core.sweep import Cell, build_matrix, utc_day

HISTORY = report.HISTORY_MARKS  # earlier sweeps kept per cell


@dataclass
class ReportDeps:
    """What regenerating touches; the default is the real results database."""

    store: Callable[[], Store] = field(default=Store)


@dataclass
class Regenerated:
    """What the command prints: the page written, and the index."""

    html: Path
    index: Path


def regenerate_run(run_id: str, out: Path | None = None) -> Regenerated:
    """report.html of bisection `run_id` again, from its result.json (into `out`, default the run's
    own directory, where result.json and evidence.json are rewritten beside it)."""
    directory = _run_dir(run_id)
    result = _read_json(directory / "result.json", f"run {run_id}")
    evidence = _read_json(directory / "evidence.json", f"run {run_id}") if (directory / "evidence.json").exists() else {}
    consoles = {int(k): v for k, v in (evidence.get("consoles") or {}).items()}
    files = {int(k): list(v) for k, v in (evidence.get("artefacts") or {}).items()}
    target = Path(out) if out else directory
    this = str(result.get("run_id") or run_id)
    refuse_foreign(target, directory, RUN_REPORT, lambda d: d.get("run_id"), this, f"run {this}")
    written = report.write(result, str(result.get("run_id") or run_id), consoles, out_dir=target, artefacts=files)
    return Regenerated(written / "report.html", config.results_dir() / "index.html")  # write() updated it


def regenerate_sweep(sweep_id: int, out: Path | None = None, deps: ReportDeps | None = None) -> Regenerated:
    """matrix.html, matrix.json and junit.xml of sweep `sweep_id` again, from the results database."""
    deps = deps or ReportDeps()
    store = deps.store()
    try:
        log = SweepLog(store)
        row = next((s for s in log.sweeps() if s["id"] == sweep_id), None)
        if row is None:
            raise KbisectError(f"--sweep {sweep_id}: no such sweep in the results database "
                               "(`kbisect sweep history` lists them)")
        cells = log.cells(sweep_id)
        earlier = log.cells(before=sweep_id)
    finally:
        store.close()
    stored = _stored_matrix(row.get("report") or "")
    data = sweep_data(row, cells, earlier, stored)
    directory = Path(out) if out else _sweep_dir(row)
    refuse_foreign(directory, _sweep_dir(row), SWEEP_REPORT, lambda d: (d.get("sweep") or {}).get("id"), sweep_id,
                   f"sweep {sweep_id}")
    html = report.write_matrix(data, directory)
    return Regenerated(html, config.results_dir() / "index.html")  # write_matrix() updated it


# what report.write and report.write_matrix put into a directory; the first names the report's owner
RUN_REPORT = ("result.json", "evidence.json", "report.html")
SWEEP_REPORT = ("matrix.json", "matrix.html", "junit.xml")


def refuse_foreign(out: Path, own: Path, files: tuple[str, ...], owner: Callable[[dict[str, Any]], Any],
                   this: Any, what: str) -> None:
    """One line unless `out` is the report's own directory, new or empty, or holds nothing but an
    earlier copy of this same report (`files`, its first naming `this` as its owner).

    Why: `report --run A --out DIR_OF_RUN_B` overwrote run B's result.json, report and evidence;
    a directory of anything else would get a report mixed into it."""
    if not out.is_dir() or out.resolve() == own.resolve():
        return
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if n not in files]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise KbisectError(f"--out {out}: holds {foreign[0]}{more}, which this report did not write "
                           f"(give a new or empty directory)")
    if not names:
        return
    found = owner(_read_record(out / files[0]))
    if found != this:
        whose = f"{what.split()[0]} {found}'s" if found is not None else "another"
        raise KbisectError(f"--out {out}: holds {whose} report ({', '.join(names)}), not {what}'s "
                           "(give a new or empty directory)")


def _read_record(path: Path) -> dict[str, Any]:
    """A report's JSON record, or {} when there is none or it is unreadable (then it names no owner)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sweep_data(row: dict[str, Any], cells: list[Cell], earlier: list[Cell], stored: dict[str, Any]) -> dict[str, Any]:
    """The sweep's JSON from the database: its row (`SweepLog.sweeps()`), its cells and the cells
    of earlier sweeps; `stored` (the sweep's own matrix.json, or {}) adds what only it holds."""
    columns = dict(row.get("columns") or {})
    lines = list(columns) or list(dict.fromkeys(c.line for c in cells))
    matrix = build_matrix(cells, earlier, columns, list(row.get("bugs") or []) or None, lines)
    data: dict[str, Any] = {
        "sweep": {"id": row["id"], "day": row.get("day") or utc_day(row["started_at"]), "started_at": row["started_at"],
                  "finished_at": row.get("finished_at"), "resumed": bool((stored.get("sweep") or {}).get("resumed")),
                  "fresh": bool(row.get("fresh"))},
        "probes": stored.get("probes") or _probe_counts(cells),
        **matrix.to_json(),
    }
    for key, value in stored.items():  # facts only the sweep's own JSON holds (boots, bisections, ...)
        data.setdefault(key, value)
    old_cells = {(c.get("bug"), c.get("line")): c for c in stored.get("cells") or [] if isinstance(c, dict)}
    old_cols = {c.get("line"): c for c in stored.get("columns") or [] if isinstance(c, dict)}
    for col in data["columns"]:
        for key, value in old_cols.get(col["line"], {}).items():
            col.setdefault(key, value)
    history = _history(earlier)
    for cell in data["cells"]:
        for key, value in old_cells.get((cell["bug"], cell["line"]), {}).items():
            cell.setdefault(key, value)
        cell.setdefault("history", history.get((cell["bug"], cell["line"]), [])[-HISTORY:])
    return data


def _history(earlier: list[Cell]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(bug, line) -> its earlier cells, oldest first, as the matrix draws them."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in sorted(earlier, key=lambda c: c.sweep_id):
        out.setdefault((c.bug, c.line), []).append({"sweep": c.sweep_id, "kernel": c.kernel,
                                                    "verdict": str(c.verdict), "at": c.at})
    return out


def _probe_counts(cells: list[Cell]) -> dict[str, int]:
    """Real boots and stored verdicts, as the cells' sources say (when no matrix.json kept them)."""
    return {"probe": sum(1 for c in cells if "probe" in c.source.split("+")),
            "store": sum(1 for c in cells if "store" in c.source.split("+"))}


def _stored_matrix(html: str) -> dict[str, Any]:
    return _read_record(Path(html).with_name("matrix.json")) if html else {}


def _sweep_dir(row: dict[str, Any]) -> Path:
    if row.get("report"):
        return Path(row["report"]).parent
    return config.results_dir() / f"sweep-{str(row.get('day') or utc_day(row['started_at'])).replace('-', '')}-{row['id']}"


def _run_dir(run_id: str) -> Path:
    """The run's directory under the results directory; the id is a directory name, nothing more."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise KbisectError(f"--run {run_id!r}: a run id is a directory name under the results directory "
                           "(e.g. 20260522-081501-gretap-ecn)")
    directory = config.results_dir() / run_id
    if not (directory / "result.json").is_file():
        raise KbisectError(f"--run {run_id}: no result.json in {directory}")
    return directory


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise KbisectError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KbisectError(f"{what}: {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KbisectError(f"{what}: {path} does not hold a JSON object")
    return data


def write_index() -> Path:
    """results/index.html, from what the results directory holds."""
    return report.write_index()
