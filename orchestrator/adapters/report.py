"""Reports: result.json (machine-readable, the `--json` output) and report.html (for people).

Both go to `<results_dir>/<run-id>/`. The HTML report shows every probe with its verdict, runs,
time and reason, the console excerpt of each real boot (the evidence behind a verdict), the
kernel traces that matched none of the bug's signatures (per kernel: they made a run a skip, or
with `unrelated_traces: bad` a bad), every stage of the differential, and the git candidates, so
a finding can be checked without re-running anything. The template lives in this module so the report cannot go missing from
an install.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from orchestrator.adapters import config
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.core.classify import find_traces

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>kbisect {{ r.bug }}: {{ r.status }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: .3em .5em; text-align: left; vertical-align: top; }
.good { background: #e6f4e6; } .bad { background: #f8e0e0; } .skip { background: #f4f0d8; }
pre { background: #f6f6f6; padding: .5em; white-space: pre-wrap; font-size: 85%; max-height: 20em; overflow: auto; }
.flag { color: #a00; font-weight: bold; }
code { font-size: 95%; }
</style></head><body>
<h1>kbisect: {{ r.bug }}</h1>
<table>
<tr><th>status</th><td>{{ r.status }}{% if r.flagged %} <span class="flag">(low confidence)</span>{% endif %}</td></tr>
<tr><th>lineage</th><td>{{ r.lineage }}</td></tr>
<tr><th>last good</th><td>{{ r.last_good }}</td></tr>
<tr><th>first bad</th><td>{{ r.first_bad }}{% if r.suspects %} (one of: {{ r.suspects|join(", ") }}){% endif %}</td></tr>
<tr><th>origin</th><td>{{ r.origin or ("undecided" if r.status == "inconclusive" else "") }}{% if r.carrier %} (via the {{ r.carrier }} line){% endif %}</td></tr>
{% if r.undecided %}<tr><th>undecided</th><td class="skip">{% for u in r.undecided %}{{ u.kernel }} ({{ u.why }}{% if u.reason %}: {{ u.reason }}{% endif %}){% if not loop.last %}, {% endif %}{% endfor %}{% if r.advice %}<br>{{ r.advice }}{% endif %}</td></tr>{% endif %}
{% if r.upstream_first_bad %}<tr><th>upstream</th><td>{{ r.upstream_last_good }} good, {{ r.upstream_first_bad }} bad</td></tr>{% endif %}
<tr><th>confidence</th><td>{{ "%.3f"|format(r.confidence) }}</td></tr>
<tr><th>stopped</th><td>{{ r.stopped }}</td></tr>
<tr><th>run</th><td>{{ run_id }} at {{ when }}</td></tr>
</table>
{% if r.notes %}<h2>Notes</h2><ul>{% for n in r.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<h2>Stages</h2>
<table><tr><th>stage</th><th>lineage</th><th>status</th><th>last good</th><th>first bad</th><th>why it stopped / walk</th></tr>
{% for s in r.stages %}<tr><td>{{ s.name }}</td><td>{{ s.lineage or "" }}</td><td>{{ s.status or "" }}</td>
<td>{{ s.last_good or "" }}</td><td>{{ s.first_bad or "" }}</td>
<td>{{ s.stopped or "" }}{% if s.walk %}{% for w in s.walk %} <span class="{{ w.verdict }}">{{ w.kernel }}: {{ w.verdict }}</span>{% endfor %}{% endif %}</td></tr>
{% endfor %}</table>
<h2>Probes ({{ r.probes|length }})</h2>
<table><tr><th>#</th><th>kernel</th><th>phase</th><th>verdict</th><th>runs</th><th>seconds</th><th>from</th><th>reason</th></tr>
{% for p in r.probes %}<tr class="{{ p.verdict }}"><td>{{ loop.index }}</td><td><code>{{ p.kernel }}</code></td><td>{{ p.phase }}</td>
<td>{{ p.verdict }}</td><td>{{ p.runs }}{% if p.runs > 1 %} ({{ p.bad_runs }} bad){% endif %}</td><td>{{ p.seconds }}</td>
<td>{{ p.origins|join(", ") }}</td><td>{% if p.unverified %}<strong>UNVERIFIED kernel</strong> (no CHECKSUMS) {% endif %}{{ p.reason }}</td></tr>
{% if p.console_excerpt %}<tr><td></td><td colspan="7"><pre>{{ p.console_excerpt }}</pre></td></tr>{% endif %}
{% endfor %}</table>
{% if unrelated %}<h2>Unrelated kernel traces</h2>
<p>Traces that matched none of the bug's signatures, by kernel ({{ unrelated|length }} kernel{{ "" if unrelated|length == 1 else "s" }}).</p>
<table><tr><th>kernel</th><th>traces</th></tr>
{% for kernel, traces in unrelated.items() %}<tr><td><code>{{ kernel }}</code></td><td>{% for t in traces %}<b>{{ t.headline }}</b>
<pre>{{ t.excerpt }}</pre>{% endfor %}</td></tr>
{% endfor %}</table>{% endif %}
{% if r.candidates %}<h2>Candidate commits</h2>
<table><tr><th>#</th><th>sha</th><th>subject</th><th>score</th><th>upstream</th><th>reasons</th></tr>
{% for c in r.candidates %}<tr><td>{{ loop.index }}</td><td><code>{{ c.sha[:12] }}</code></td><td>{{ c.subject }}</td>
<td>{{ c.score }}</td><td>{% if c.upstream %}<code>{{ c.upstream[:12] }}</code>{% endif %}</td><td>{{ c.reasons|join("; ") }}</td></tr>
{% endfor %}</table>{% endif %}
{% if r.revert_check %}<h2>Revert check</h2><pre>{{ r.revert_check|tojson(indent=2) }}</pre>{% endif %}
</body></html>
"""


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


def probe_consoles(probes: list[Any]) -> dict[int, str]:
    """Console excerpts of real boots, by probe position (replayed verdicts have none)."""
    out: dict[int, str] = {}
    for i, p in enumerate(probes):
        excerpts = [rec.console_excerpt for rec in getattr(p, "records", []) if rec.console_excerpt]
        if excerpts:
            out[i] = "\n---\n".join(excerpts)[-4000:]
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


def write(result: dict[str, Any], run_id: str, consoles: dict[int, str] | None = None,
          out_dir: Path | None = None, unrelated: dict[str, list[dict[str, str]]] | None = None) -> Path:
    """Write result.json and report.html; return the directory. `result["report"]` is set to
    the HTML path before anything is written, so both files agree. `unrelated` (from
    `unrelated_traces`) goes into both as `unrelated_traces`."""
    directory = Path(out_dir) if out_dir else config.results_dir() / run_id
    directory.mkdir(parents=True, exist_ok=True)
    html_path = directory / "report.html"
    result["report"] = str(html_path)
    result.setdefault("run_id", run_id)
    if unrelated:
        result["unrelated_traces"] = unrelated
    view = json.loads(json.dumps(result))  # plain data for the template
    for i, text in (consoles or {}).items():
        if i < len(view.get("probes", [])):
            view["probes"][i]["console_excerpt"] = text
    for p in view.get("probes", []):
        p.setdefault("console_excerpt", "")
        p.setdefault("origins", [])
        p.setdefault("bad_runs", 0)
        p.setdefault("phase", "")
    view.setdefault("flagged", False)
    atomic_write(html_path, _render(TEMPLATE, r=view, run_id=run_id, when=_utc(),
                                    unrelated=view.get("unrelated_traces") or {}))
    atomic_write(directory / "result.json", json.dumps(result, indent=2, sort_keys=False) + "\n")
    return directory


def _utc(at: float | None = None) -> str:
    """A timestamp as reports print it (now when `at` is None)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _render(template: str, **context: Any) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(template).render(**context)


# -- the sweep matrix ---------------------------------------------------------------------------

MATRIX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>kbisect sweep {{ s.sweep.id }}: {{ s.counts.regression }} regression{{ "" if s.counts.regression == 1 else "s" }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: .35em .5em; text-align: left; vertical-align: top; }
table.matrix td { min-width: 14em; max-width: 28em; }
.good { background: #e3f3e3; } .bad { background: #f6dcdc; } .skip { background: #f4f0d8; } .none { background: #eee; }
td.regression { outline: 3px solid #c00; outline-offset: -3px; }
td.fixed { outline: 3px solid #080; outline-offset: -3px; }
.verdict { font-weight: bold; text-transform: uppercase; }
.flag { font-size: 80%; font-weight: bold; padding: 0 .3em; border-radius: .2em; margin-left: .4em; }
.flag.regression { background: #c00; color: #fff; } .flag.fixed { background: #080; color: #fff; }
.flag.new { background: #446; color: #fff; } .flag.unchanged { color: #666; } .flag.skip { color: #866; }
.reason { font-size: 85%; margin-top: .2em; }
.meta { font-size: 75%; color: #555; margin-top: .2em; }
code { font-size: 95%; }
</style></head><body>
<h1>kbisect nightly sweep {{ s.sweep.id }}</h1>
<table>
<tr><th>started</th><td>{{ s.sweep.started }}{% if s.sweep.resumed %} (resumed){% endif %}</td></tr>
<tr><th>finished</th><td>{{ s.sweep.finished }}</td></tr>
<tr><th>cells</th><td>{{ s.cells|length }}: {% for k, v in s.counts.items() %}{{ v }} {{ k }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
<tr><th>verdicts from</th><td>{{ s.probes.probe }} real boot{{ "" if s.probes.probe == 1 else "s" }}, {{ s.probes.store }} stored run{{ "" if s.probes.store == 1 else "s" }}{% if s.sweep.fresh %} (--fresh){% endif %}</td></tr>
</table>
{% if s.regressions %}<h2 class="flag regression">Regressions ({{ s.regressions|length }})</h2>
<ul>{% for r in s.regressions %}<li><b>{{ r.bug }}</b> on {{ r.line }}: {{ r.note }}</li>{% endfor %}</ul>{% endif %}
{% if s.fixed %}<h2>Fixed ({{ s.fixed|length }})</h2>
<ul>{% for r in s.fixed %}<li><b>{{ r.bug }}</b> on {{ r.line }}: {{ r.note }}</li>{% endfor %}</ul>{% endif %}
<h2>Matrix</h2>
<table class="matrix">
<tr><th>reproducer</th>{% for c in s.columns %}<th>{{ c.line }}<br>{% if c.kernel %}<code>{{ c.kernel }}</code>{% else %}<i>no reachable kernel</i>{% endif %}</th>{% endfor %}</tr>
{% for row in rows %}<tr><th>{{ row.bug }}</th>
{% for c in row.cells %}{% if c %}<td class="{{ c.verdict }} {{ c.flag }}">
<span class="verdict">{{ c.verdict }}</span><span class="flag {{ c.flag }}">{{ c.flag }}</span>
<div class="reason">{{ c.reason }}</div>
<div class="meta">{{ c.note }}</div>
<div class="meta">{{ c.source }}{% if c.runs > 1 %}, {{ c.runs }} runs{% endif %}, {{ "%.1f"|format(c.seconds) }} s</div>
</td>{% else %}<td class="none">not run</td>{% endif %}
{% endfor %}</tr>
{% endfor %}</table>
<p class="meta">Flags compare each cell with the most recent earlier sweep that had a good or bad verdict for
the same reproducer on the same line: regression (good then, bad now), fixed (bad then, good now), new (no
earlier verdict), unchanged. A skip is neither good nor bad; the earlier verdict is kept for comparison.</p>
</body></html>
"""


def write_matrix(data: dict[str, Any], directory: Path) -> Path:
    """Write matrix.json and matrix.html (the sweep's rows = bugs, columns = lines) into
    `directory`; `data` is the sweep's JSON (`Matrix.to_json()` plus the sweep's facts), and
    gets `report` and `json` set to the two paths. Returns the HTML path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    html_path, json_path = directory / "matrix.html", directory / "matrix.json"
    data["report"], data["json"] = str(html_path), str(json_path)
    view = json.loads(json.dumps(data))
    by_key = {(c["bug"], c["line"]): c for c in view["cells"]}
    rows = [{"bug": b, "cells": [by_key.get((b, line)) for line in view["lines"]]} for b in view["bugs"]]
    sweep = view["sweep"]
    for key in ("started", "finished"):
        at = sweep.get(f"{key}_at")
        sweep[key] = _utc(at) if at else "not finished"
    atomic_write(json_path, json.dumps(data, indent=2) + "\n")
    atomic_write(html_path, _render(MATRIX_TEMPLATE, s=view, rows=rows))
    return html_path
