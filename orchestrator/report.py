"""Reports: result.json (machine-readable, the `--json` output) and report.html (for people).

Both go to `<results_dir>/<run-id>/`. The HTML report shows every probe with its verdict, runs,
time and reason, the console excerpt of each real boot (the evidence behind a verdict), every
stage of the differential, and the git candidates, so a finding can be checked without
re-running anything. The template lives in this module so the report cannot go missing from
an install.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from orchestrator import config

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
<tr><th>origin</th><td>{{ r.origin }}{% if r.carrier %} (via the {{ r.carrier }} line){% endif %}</td></tr>
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
<td>{{ p.origins|join(", ") }}</td><td>{{ p.reason }}</td></tr>
{% if p.console_excerpt %}<tr><td></td><td colspan="7"><pre>{{ p.console_excerpt }}</pre></td></tr>{% endif %}
{% endfor %}</table>
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


def write(result: dict[str, Any], run_id: str, consoles: dict[int, str] | None = None,
          out_dir: Path | None = None) -> Path:
    """Write result.json and report.html; return the directory. `result["report"]` is set to
    the HTML path before anything is written, so both files agree."""
    import jinja2

    directory = Path(out_dir) if out_dir else config.results_dir() / run_id
    directory.mkdir(parents=True, exist_ok=True)
    html_path = directory / "report.html"
    result["report"] = str(html_path)
    result.setdefault("run_id", run_id)
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
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    html = env.from_string(TEMPLATE).render(
        r=view, run_id=run_id, when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    tmp = directory / "report.html.tmp"
    tmp.write_text(html)
    tmp.replace(html_path)
    tmp = directory / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    tmp.replace(directory / "result.json")
    return directory
