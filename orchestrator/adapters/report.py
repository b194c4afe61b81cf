"""Reports: result.json / matrix.json (machine-readable) and report.html / matrix.html (for people),
the sweep's junit.xml (for CI systems), and results/index.html listing the recent ones.

A bisection goes to `<results_dir>/<run-id>/`: result.json (the `--json` output), report.html and
evidence.json (the console excerpts and artefact paths of each probe, which result.json does not
hold, so `kbisect report --run ID` can render the same page again). The HTML states the answer in
one sentence, draws every probed kernel on an inline-SVG timeline per lineage, lists the caveats,
the candidates (linked to git.kernel.org), every probe with its folded console excerpt and
artefacts, the unrelated kernel traces and every stage of the differential.

A sweep goes to its own directory: matrix.json, matrix.html (regressions and fixes first, cells
coloured by verdict with their flag, earlier sweeps as small marks, links to logs and to the
cell's auto-bisection) and junit.xml (one testcase per cell).

Pages are static and offline (inline CSS and SVG, no script, no external asset); the Jinja2
templates are package data (orchestrator/adapters/templates/), found from an installed package.
"""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from orchestrator.adapters import config
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.classify import find_traces
from orchestrator.core.errors import KbisectError

TEMPLATES = Path(__file__).resolve().parent / "templates"
# The upstream commit page on git.kernel.org (a link in a report; never fetched by kbisect).
TORVALDS_COMMIT = "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/commit/?id="
STABLE_COMMIT = "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git/commit/?id="
INDEX_LIMIT = 50  # sweeps and bisections listed in index.html, each
HISTORY_MARKS = 10  # earlier sweeps drawn per matrix cell


def new_run_id(bug: str, root: Path | None = None) -> str:
    """Sortable and readable: `20260522-081501-gretap-ecn`; the run's directory is claimed here
    (mkdir, not exist_ok) so two runs in the same second never share a report."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", bug)
    stem = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{safe}"
    base = Path(root) if root else config.results_dir()
    for n in range(1, 1000):
        run_id = stem if n == 1 else f"{stem}-{n}"
        try:
            (base / run_id).mkdir(parents=True)
            return run_id
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot claim a results directory for {stem} under {base}")


class ProbeConsoles(dict):
    """Console excerpts of real boots by probe position (a `dict[int, str]`), carrying the
    artefact paths of the same boots (`artefacts`: position -> host paths, console.log first),
    so the report links each probe's files without another argument through every caller."""

    def __init__(self, excerpts: dict[int, str] | None = None, artefacts: dict[int, list[str]] | None = None) -> None:
        super().__init__(excerpts or {})
        self.artefacts: dict[int, list[str]] = dict(artefacts or {})


def probe_consoles(probes: list[Any]) -> ProbeConsoles:
    """Console excerpts of real boots, by probe position (replayed verdicts have none), with
    their artefacts."""
    out = ProbeConsoles()
    for i, p in enumerate(probes):
        records = getattr(p, "records", [])
        excerpts = [rec.console_excerpt for rec in records if rec.console_excerpt]
        if excerpts:
            out[i] = "\n---\n".join(excerpts)[-4000:]
        files = [a for rec in records for a in (getattr(rec, "artefacts", None) or [])]
        if files:
            out.artefacts[i] = list(dict.fromkeys(files))
    return out


def unrelated_traces(probes: list[Any]) -> dict[str, list[dict[str, str]]]:
    """Per kernel, the distinct traces of its real boots that matched none of the bug's
    signatures ({"headline", "excerpt"} each), in probe order; kernels without any are left out."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in probes:
        for rec in getattr(p, "records", []):
            excerpt = getattr(rec, "unrelated_trace", "")
            if not excerpt:
                continue
            found = find_traces(excerpt)
            headline = found[0].headline if found else excerpt.strip().splitlines()[0][:300]
            traces = out.setdefault(str(getattr(p, "kernel", rec.kernel)), [])
            if all(t["headline"] != headline for t in traces):
                traces.append({"headline": headline, "excerpt": excerpt})
    return out


# -- the bisection report -----------------------------------------------------------------------

def write(result: dict[str, Any], run_id: str, consoles: dict[int, str] | None = None,
          out_dir: Path | None = None, unrelated: dict[str, list[dict[str, str]]] | None = None,
          artefacts: dict[int, list[str]] | None = None) -> Path:
    """Write result.json, evidence.json and report.html; return the directory. `result["report"]`
    is set to the HTML path before anything is written, so both files agree. `unrelated` (from
    `unrelated_traces`) goes into both as `unrelated_traces`. Artefacts come from `artefacts` or
    from `consoles` when it is a `ProbeConsoles`."""
    directory = Path(out_dir) if out_dir else config.results_dir() / run_id
    directory.mkdir(parents=True, exist_ok=True)
    html_path = directory / "report.html"
    result["report"] = str(html_path)
    result.setdefault("run_id", run_id)
    if unrelated:
        result["unrelated_traces"] = unrelated
    consoles = consoles or {}
    files = artefacts if artefacts is not None else getattr(consoles, "artefacts", {})
    evidence = {"consoles": {str(i): t for i, t in consoles.items()},
                "artefacts": {str(i): list(a) for i, a in (files or {}).items()}}
    atomic_write(directory / "evidence.json", json.dumps(evidence, indent=2) + "\n")
    atomic_write(directory / "result.json", json.dumps(result, indent=2, sort_keys=False) + "\n")
    atomic_write(html_path, render_bisect(result, run_id, evidence, directory))
    write_index()
    return directory


def render_bisect(result: dict[str, Any], run_id: str, evidence: dict[str, dict], directory: Path) -> str:
    """report.html's text for `result` (result.json's content) and its `evidence`."""
    view = json.loads(json.dumps(result))  # plain data for the template
    consoles, files = evidence.get("consoles", {}), evidence.get("artefacts", {})
    for i, p in enumerate(view.get("probes", [])):
        p["console_excerpt"] = consoles.get(str(i)) or p.get("console_excerpt") or ""
        p.setdefault("origins", [])
        p.setdefault("bad_runs", 0)
        p.setdefault("phase", "")
        p["links"], p["unlinked"] = _file_links(files.get(str(i)) or p.get("artefacts") or [], directory)
    view.setdefault("flagged", False)
    view.setdefault("confidence", 0.0)
    for c in view.get("candidates") or []:
        c["sha_link"], c["upstream_link"] = _commit_links(c, view)
    handed = view.get("commit_bisection")
    if isinstance(handed, dict) and handed.get("report"):
        handed["href"] = os.path.relpath(str(handed["report"]), directory)
    shown = [(i, p) for i, p in enumerate(view.get("probes", []), 1) if p.get("verdict") == "bad" and p.get("console_excerpt")]
    first_bad_probe = next((i for i, p in shown if p.get("label") == view.get("first_bad")), shown[0][0] if shown else 0)
    return _render("bisect.html.j2", r=view, run_id=run_id, when=_utc(), answer=answer_sentence(view),
                   answer_class=_answer_class(view), timeline=timeline_svg(view), caveats=caveats(view),
                   unrelated=view.get("unrelated_traces") or {}, first_bad_probe=first_bad_probe,
                   has_evidence=(directory / "evidence.json").exists(), index_href=_index_href(directory),
                   any_links=any(p["links"] or p["unlinked"] for p in view.get("probes", [])))


def _name(lineage: str | None) -> str:
    """A lineage as people say it: "stable-5.4" -> "stable 5.4", "debian:6.1" -> "Debian 6.1"."""
    text = str(lineage or "")
    if text.startswith("stable-"):
        return "stable " + text[len("stable-"):]
    source, sep, rest = text.partition(":")
    if sep and source in ("debian", "ubuntu"):
        return f"{source.capitalize()} {rest}"
    return text or "the given range"


def _fix_sentence(r: dict[str, Any]) -> str:
    """A fix bisection's answer: where the bug went away, what to ask a backport for."""
    status, line = r.get("status"), _name(r.get("lineage"))
    last_bad, first_good = r.get("last_bad"), r.get("first_good")
    if status == "found":
        what = (f"commit {first_good}" + (f" \"{(r.get('first_good_commit') or {}).get('subject')}\""
                                         if r.get("first_good_commit") else "")
                if r.get("kind") == "commits" else first_good)
        return f"Fixed in {line} at {what}: first good {first_good}, last bad {last_bad}."
    if status == "inconclusive":
        return (f"Inconclusive: in {line} the first good kernel is one of {', '.join(r.get('suspects') or [])}"
                + (f" (last bad {last_bad})" if last_bad else "") + ".")
    return _no_answer(r, line, "see the probes below")


def answer_sentence(r: dict[str, Any]) -> str:
    """The answer in one sentence, first on the page: where the bug came in and the boundary, or
    what is still open."""
    if r.get("mode") == "fix":
        return _fix_sentence(r)
    status, origin, line = r.get("status"), r.get("origin"), _name(r.get("lineage"))
    good, bad = r.get("last_good"), r.get("first_bad")
    ends = f"first bad {bad}, last good {good}" if bad and good else ""
    up = r.get("upstream_first_bad")
    if status == "found":
        if origin == "stable-backport":
            via = " (carried by the stable line)" if r.get("carrier") == "distro" else ""
            return f"Entered {line} at {bad} as a backport of mainline {up}{via}; {ends}."
        if origin == "mainline":
            return f"Entered mainline at {bad}; {ends}."
        if origin == "stable-only":
            return f"Entered {line} at {bad}, and no mainline release after its base shows it (stable-only); {ends}."
        if origin == "distro":
            return f"Entered {line} at {bad} with a distro-only patch (no upstream kernel shows it); {ends}."
        if origin == "variant":
            return f"The patch of the variant {bad} brings it in (its base {good} is good); {ends}."
        if origin == "commit":
            subject = (r.get("first_bad_commit") or {}).get("subject", "")
            return f"First bad commit {bad}" + (f" \"{subject}\"" if subject else "") + f", built and tested; {ends}."
        return f"Entered {line} at {bad}; {ends}."
    if status == "inconclusive":
        undecided = r.get("undecided") or []
        open_part = (f"open: {len(undecided)} kernel{'s' if len(undecided) != 1 else ''} without a verdict ("
                     + ", ".join(f"{u.get('kernel')} {u.get('why')}" for u in undecided[:4])
                     + (", …" if len(undecided) > 4 else "") + ")") if undecided else "open: the origin"
        if r.get("suspects"):
            where = (f"in {line} the first bad kernel is one of {', '.join(r['suspects'])}"
                     + (f" (last good {good})" if good else ""))
        elif bad:
            where = f"{line} went bad at {bad}" + (f" (last good {good})" if good else "")
        else:
            where = f"no boundary in {line}"
        return f"Inconclusive: {where}; {open_part}."
    return _no_answer(r, line, "see the stages below")


def _no_answer(r: dict[str, Any], line: str, see: str) -> str:
    """The sentence of a bisection (cause or fix) whose boundary did not hold or was not found."""
    status = r.get("status")
    if status == "unstable":
        return f"Unstable: the boundary in {line} did not hold on re-runs ({r.get('stopped') or 'see the probes'})."
    return f"No answer ({status}): {r.get('stopped') or see}."


def _answer_class(r: dict[str, Any]) -> str:
    status = r.get("status")
    return status if status in ("found", "inconclusive", "unstable") else "failed"


def caveats(r: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the answer: unrelated traces, unverified kernels,
    undecided kernels and stages that did not end in a boundary."""
    out: list[str] = []
    for kernel, traces in (r.get("unrelated_traces") or {}).items():
        heads = "; ".join(t.get("headline", "") for t in traces)
        out.append(f"Unrelated kernel trace on {kernel}: {heads} (see “Unrelated kernel traces”).")
    unverified = sorted({p["kernel"] for p in r.get("probes", []) if p.get("unverified")})
    if unverified:
        out.append(f"Unverified kernel{'s' if len(unverified) > 1 else ''} (no CHECKSUMS): {', '.join(unverified)}.")
    for u in r.get("undecided") or []:
        out.append(f"No verdict for {u.get('kernel')} ({u.get('why')}{': ' + u['reason'] if u.get('reason') else ''}).")
    for s in r.get("stages", []):
        status = s.get("status")
        if status in ("inconclusive", "unstable", "no-candidates"):
            why = str(s.get("stopped") or "").removeprefix(f"{status}:").strip().rstrip(".")
            out.append(f"Stage “{s.get('name')}” is {status}" + (f": {why}." if why else "."))
    if r.get("advice"):
        out.append(f"Next: {r['advice']}")
    return out


def _commit_links(c: dict[str, Any], r: dict[str, Any]) -> tuple[str, str]:
    """(link of the candidate's sha, link of its upstream sha) on git.kernel.org."""
    sha, upstream = c.get("sha") or "", c.get("upstream") or ""
    mainline = c.get("range") == "upstream" or (not c.get("range") and (r.get("lineage") == "mainline"
                                                                     or r.get("origin") == "mainline"))
    stable = str(r.get("lineage") or "").startswith("stable-") and c.get("range") != "upstream"
    sha_link = TORVALDS_COMMIT + sha if sha and mainline else STABLE_COMMIT + sha if sha and stable else ""
    return sha_link, (TORVALDS_COMMIT + upstream if upstream else "")


# -- the timeline (inline SVG) --------------------------------------------------------------------

def timeline_svg(r: dict[str, Any]) -> str:
    """One horizontal track per lineage, a mark per probed kernel (in version order, coloured by
    its verdict, "mixed" when its probes disagreed), the boundary ringed and cut; marks link to the
    kernel's first probe row."""
    from markupsafe import escape

    tracks = _tracks(r)
    most = max((len(t["marks"]) for t in tracks), default=1)
    step, left, top, height = max(62, min(110, 800 // most)), 150, 24, 86
    width = left + most * step + 40
    total = top + len(tracks) * height + 10
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" '
             f'viewBox="0 0 {width} {total}" role="img" aria-label="probed kernels by lineage">']
    for n, t in enumerate(tracks):
        y = top + n * height + 14
        x_end = left + (len(t["marks"]) - 1) * step
        parts.append(f'<text class="track-name" x="8" y="{y + 4}">{escape(t["name"])}</text>')
        parts.append(f'<line class="track-line" x1="{left - 14}" y1="{y}" x2="{x_end + 14}" y2="{y}"/>')
        for i, m in enumerate(t["marks"]):
            x = left + i * step
            if m["cut_before"]:
                cx = x - step // 2
                parts.append(f'<line class="cut" x1="{cx}" y1="{y - 16}" x2="{cx}" y2="{y + 16}"/>')
            ring = " boundary" if m["boundary"] else ""
            title = escape(f"{m['kernel']}: {m['verdict']} ({m['probes']} probe{'s' if m['probes'] != 1 else ''})"
                           + (f" — {m['boundary']}" if m["boundary"] else ""))
            parts.append(f'<a href="#probe-{m["first"]}"><circle class="mark {m["verdict"]}{ring}" '
                         f'data-kernel="{escape(m["kernel"])}" data-verdict="{m["verdict"]}" cx="{x}" cy="{y}" r="8" '
                         f'aria-label="{title}"/></a>')
            parts.append(f'<text class="kernel-label" x="{x - 4}" y="{y + 20}" '
                         f'transform="rotate(35 {x - 4} {y + 20})">{escape(m["label"])}</text>')
    parts += _backport_line(tracks, r, left, top, height, step)
    parts.append("</svg>")
    return "".join(parts)


def _backport_line(tracks: list[dict[str, Any]], r: dict[str, Any], left: int, top: int, height: int,
                   step: int) -> list[str]:
    """A dashed arrow from mainline's first bad to the lineage's first bad: the backport."""
    ends = []
    for want in ("upstream first bad", "first bad"):
        for n, t in enumerate(tracks):
            i = next((i for i, m in enumerate(t["marks"]) if m["boundary"] == want), None)
            if i is not None:
                ends.append((left + i * step, top + n * height + 14))
                break
    if len(ends) != 2 or r.get("origin") != "stable-backport":
        return []
    (x1, y1), (x2, y2) = ends
    down = 1 if y2 > y1 else -1
    return [f'<line class="cut" x1="{x1 - 12}" y1="{y1 + down * 8}" x2="{x2 - 12}" y2="{y2 - down * 8}"/>',
            f'<text class="cut-label" x="{x2 + 12}" y="{y2 - down * 12}">backport of {r.get("upstream_first_bad")}</text>']


def _tracks(r: dict[str, Any]) -> list[dict[str, Any]]:
    from orchestrator.core.lineages import make_kernel
    from orchestrator.core.versions import parse_spec

    kernels: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(r.get("probes", []), 1):
        k = kernels.setdefault(p["kernel"], {"kernel": p["kernel"], "label": p.get("label") or p["kernel"],
                                             "verdicts": set(), "probes": 0, "first": i})
        k["verdicts"].add(p.get("verdict"))
        k["probes"] += 1
    by_track: dict[str, list[tuple[Any, dict]]] = {}
    for k in kernels.values():
        try:
            ref = parse_spec(k["kernel"])
            kern = make_kernel(ref.source, ref.version, variant=ref.variant)
            track, key, k["label"] = str(kern.lineage), kern.sort_key, kern.label
        except (KbisectError, ValueError):  # an odd spec still gets a mark, on a track of its own name
            track, key = k["kernel"].split(":", 1)[0], ((), 0, k["kernel"])
        k["verdict"] = next(iter(k["verdicts"])) if len(k["verdicts"]) == 1 else "mixed"
        by_track.setdefault(track, []).append((key, k))
    bounds = {(str(r.get("lineage")), r.get("last_good")): "last good", (str(r.get("lineage")), r.get("first_bad")): "first bad",
              (str(r.get("lineage")), r.get("last_bad")): "last bad", (str(r.get("lineage")), r.get("first_good")): "first good",
              ("mainline", r.get("upstream_last_good")): "upstream last good",
              ("mainline", r.get("upstream_first_bad")): "upstream first bad"}
    order = sorted(by_track, key=lambda t: (t != "mainline", t))
    tracks = []
    for name in order:
        marks = [k for _, k in sorted(by_track[name], key=lambda kk: _safe_key(kk[0]))]
        prev = ""
        for m in marks:
            m["boundary"] = bounds.get((name, m["label"]), "")
            m["cut_before"] = prev.endswith("last good") and m["boundary"].endswith("first bad")
            prev = m["boundary"]
        tracks.append({"name": _name(name), "marks": marks})
    return tracks


def _safe_key(key: Any) -> tuple:
    """Version keys of one lineage compare with each other; a fallback key sorts last by text."""
    return (0, key) if not isinstance(key[0], tuple) or key[0] != () else (1, key)


# -- the sweep matrix and its JUnit file ----------------------------------------------------------

def write_matrix(data: dict[str, Any], directory: Path) -> Path:
    """Write matrix.json, matrix.html and junit.xml (the sweep's rows = bugs, columns = lines)
    into `directory`; `data` is the sweep's JSON (`Matrix.to_json()` plus the sweep's facts), and
    gets `report`, `json` and `junit` set to the three paths. Returns the HTML path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    html_path, json_path, junit_path = directory / "matrix.html", directory / "matrix.json", directory / "junit.xml"
    data["report"], data["json"], data["junit"] = str(html_path), str(json_path), str(junit_path)
    atomic_write(json_path, json.dumps(data, indent=2) + "\n")
    atomic_write(junit_path, junit_xml(data))
    atomic_write(html_path, render_matrix(data, directory))
    write_index()
    return html_path


# how a cell's guest was used (core.sharing), as the matrix says it
VM_WORDS = {"shared": "shared VM", "isolated": "own VM (isolate)", "alone": "own VM",
            "rechecked": "re-checked in its own VM"}


def render_matrix(data: dict[str, Any], directory: Path) -> str:
    """matrix.html's text for the sweep's JSON."""
    view = json.loads(json.dumps(data))
    for c in view["cells"]:
        c["anchor"] = _anchor(c["bug"], c["line"])
        c["marks"] = [dict(m, date=_day(m.get("at"))) for m in (c.get("history") or [])[-HISTORY_MARKS:]]
        links, _ = _file_links(_cell_files(c), directory)
        c["links"] = links[:MAIN_CELL_LINKS]  # the probe's own: output, console, record, dmesg
        c["more_links"] = links[MAIN_CELL_LINKS:]  # what the reproducer saved, folded
        c["bisection_link"] = _bisection_link(c.get("bisection"), directory)
        c.setdefault("console_excerpt", "")
    by_key = {(c["bug"], c["line"]): c for c in view["cells"]}
    for group in ("regressions", "fixed"):
        for f in view.get(group, []):
            f["anchor"] = _anchor(f["bug"], f["line"])
            f["bisection"] = by_key.get((f["bug"], f["line"]), {}).get("bisection_link")
    rows = [{"bug": b, "cells": [by_key.get((b, line)) for line in view["lines"]]} for b in view["bugs"]]
    sweep = view["sweep"]
    for key in ("started", "finished"):
        at = sweep.get(f"{key}_at")
        sweep[key] = _utc(at) if at else "not finished"
    any_moved = any(c.get("moved") or c.get("note") for c in view["columns"])
    bad_now = [c for c in view["cells"] if c.get("verdict") == "bad" and c.get("flag") != "regression"]
    return _render("matrix.html.j2", s=view, rows=rows, any_moved=any_moved, index_href=_index_href(directory),
                   vm_words=VM_WORDS, bad_now=bad_now)


MAIN_CELL_LINKS = 4


def _cell_files(c: dict[str, Any]) -> list[str]:
    """The files a cell names: its probe's log, console, record and dmesg first (the probe's
    own, MAIN_CELL_LINKS of them when all exist), then what the reproducer saved in out/."""
    main = [c[k] for k in ("log", "console", "record") if isinstance(c.get(k), str) and c.get(k)]
    rest = [a for a in (c.get("artefacts") or []) if isinstance(a, str)]
    probe_dmesg = [a for a in rest if a.endswith("/dmesg.txt") and "/out/" not in a]
    return list(dict.fromkeys(main + probe_dmesg + rest))


def _bisection_link(b: Any, directory: Path) -> dict[str, str] | None:
    if not isinstance(b, dict) or not b.get("report"):
        return None
    links, _ = _file_links([b["report"]], directory)
    if not links:
        return None
    return {"href": links[0]["href"], "status": str(b.get("status") or ""), "first_bad": str(b.get("first_bad") or "")}


def _anchor(bug: str, line: str) -> str:
    return "cell-" + re.sub(r"[^A-Za-z0-9_-]+", "-", f"{bug}-{line}")


def junit_xml(data: dict[str, Any]) -> str:
    """JUnit XML of the sweep: one testcase per cell (classname = reproducer, name = line and
    kernel); a bad cell is a <failure>, a skip a <skipped>, each with the reason and the log path.
    Follows the schema Jenkins and GitLab read (testsuites/testsuite/testcase)."""
    cells = data.get("cells", [])
    failures = sum(1 for c in cells if c.get("verdict") == "bad")
    skipped = sum(1 for c in cells if c.get("verdict") not in ("good", "bad"))
    seconds = sum(float(c.get("seconds") or 0.0) for c in cells)
    sweep = data.get("sweep", {})
    name = f"kbisect sweep {sweep.get('id', '')}".strip()
    root = ET.Element("testsuites", name=name, tests=str(len(cells)), failures=str(failures),
                      skipped=str(skipped), errors="0", time=f"{seconds:.3f}")
    suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cells)), failures=str(failures),
                          skipped=str(skipped), errors="0", time=f"{seconds:.3f}",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sweep.get("started_at") or 0)))
    for c in cells:
        kernel = c.get("kernel") or "no reachable kernel"
        case = ET.SubElement(suite, "testcase", classname=str(c.get("bug")), name=f"{c.get('line')} {kernel}",
                             time=f"{float(c.get('seconds') or 0.0):.3f}")
        files = _cell_files(c)
        detail = "\n".join([f"reason: {c.get('reason') or ''}", f"flag: {c.get('flag') or ''}: {c.get('note') or ''}"]
                           + [f"log: {f}" for f in files])
        if c.get("verdict") == "bad":
            el = ET.SubElement(case, "failure", message=str(c.get("reason") or "bad"), type=str(c.get("flag") or "bad"))
            el.text = detail
        elif c.get("verdict") != "good":
            el = ET.SubElement(case, "skipped", message=str(c.get("reason") or "skip"))
            el.text = detail
        if files:
            ET.SubElement(case, "system-out").text = "\n".join(f"[[ATTACHMENT|{f}]]" for f in files)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# -- results/index.html ---------------------------------------------------------------------------

def write_index(root: Path | None = None) -> Path:
    """results/index.html: the recent sweeps and bisections under the results directory, newest
    first, from their JSON files (a directory that holds none is not listed)."""
    root = Path(root) if root else config.results_dir()
    sweeps, runs = [], []
    for path in _newest(root.glob("*/matrix.json")):
        data = _load(path)
        if not data:
            continue
        counts = data.get("counts") or {}
        sweeps.append({"id": (data.get("sweep") or {}).get("id", "?"), "day": (data.get("sweep") or {}).get("day", ""),
                       "regressions": counts.get("regression", 0), "fixed": counts.get("fixed", 0),
                       "cells": len(data.get("cells") or []), "flagged": data.get("regressions") or [],
                       "href": _rel(path.with_name("matrix.html"), root), "json_href": _rel(path, root),
                       "junit_href": _rel(path.with_name("junit.xml"), root) if path.with_name("junit.xml").exists() else ""})
    for path in _newest(root.glob("*/result.json")):
        data = _load(path)
        if not data or not path.with_name("report.html").exists():
            continue
        runs.append({"id": data.get("run_id") or path.parent.name, "bug": data.get("bug", ""),
                     "status": data.get("status", ""), "answer": answer_sentence(data),
                     "href": _rel(path.with_name("report.html"), root), "json_href": _rel(path, root)})
    out = root / "index.html"
    atomic_write(out, _render("index.html.j2", sweeps=sweeps, runs=runs, when=_utc(), limit=INDEX_LIMIT))
    return out


def _newest(paths: Any) -> list[Path]:
    found = []
    for p in paths:
        try:
            found.append((p.stat().st_mtime, p))
        except OSError:
            continue
    return [p for _, p in sorted(found, reverse=True)[:INDEX_LIMIT]]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _index_href(directory: Path) -> str:
    """The link from a report in `directory` to the results index, when it is inside the results dir."""
    try:
        root = config.results_dir().resolve()
        Path(directory).resolve().relative_to(root)
    except (OSError, ValueError):
        return ""
    return _rel(root / "index.html", Path(directory))


# -- helpers --------------------------------------------------------------------------------------

def _file_links(paths: list[str], directory: Path) -> tuple[list[dict[str, str]], list[str]]:
    """({href, name} relative to `directory` for each existing file, paths that do not exist)."""
    links, missing = [], []
    for p in paths:
        path = Path(p)
        if path.exists():
            links.append({"href": _rel(path, Path(directory)), "name": path.name})
        else:
            missing.append(str(p))
    return links, missing


def _rel(path: Path, directory: Path) -> str:
    """A relative link (URL-quoted) from a page in `directory` to `path`."""
    from urllib.parse import quote

    return quote(os.path.relpath(Path(path).resolve(), Path(directory).resolve()))


def _utc(at: float | None = None) -> str:
    """A timestamp as reports print it (now when `at` is None)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _day(at: Any) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(float(at))) if isinstance(at, (int, float)) and at else ""


_ENV: Any = None


def _render(name: str, **context: Any) -> str:
    global _ENV
    import jinja2

    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                  undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    return _ENV.get_template(name).render(**context)
