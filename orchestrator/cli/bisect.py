"""`kbisect bisect` and `kbisect candidates`: the user's command, wired to the pure engine.

This is the only layer that touches the world for a bisection: it lists kernels (sources), wraps
the guest runtime (probe) with replayed and stored verdicts (store.ResumingProbe), shows progress
on stderr, writes the report and, with --repo, narrows the boundary to commits (gitlog).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.base import check_keyring, cli, mainline_options
from orchestrator.core.errors import KbisectError


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# -- listings ---------------------------------------------------------------------------------

def _entries(source: str, mirror: str | None, lo: str | None = None, hi: str | None = None,
             series: str | None = None) -> list[Any]:
    """Ask the sources layer for a listing; one clear line when it cannot be had."""
    try:
        from orchestrator.adapters.sources import get_source

        if source == "ubuntu" and series:
            from orchestrator.adapters.sources.ubuntu import UbuntuSource

            src = UbuntuSource(mirror, series=series)
        else:
            src = get_source(source, mirror=mirror)
    except ImportError:
        raise KbisectError(f"the {source} kernel source is not available in this build") from None
    return list(src.list(lo, hi))


def _ubuntu_series(distro: str | None, specs: list[Any]) -> str | None:
    """The Ubuntu series to list: named by --distro (ubuntu:focal), or the one whose kernels
    carry the base of an ubuntu spec (5.4 -> focal)."""
    from orchestrator.core.differential import DISTRO_SERIES

    by_base = {base: name for name, base in DISTRO_SERIES["ubuntu"].items()}
    if distro and distro.split(":", 1)[0].strip().lower() == "ubuntu":
        series = distro.split(":", 1)[1].strip().lower()
        return by_base.get(series, series)
    for spec in specs:
        if spec.source == "ubuntu":
            major, minor = spec.version.split(".")[:2]
            return by_base.get(f"{major}.{minor}")
    return None


def build_index(good: str, bad: str, distro: str | None, mirror: str | None,
                distro_mirror: str | None = None):
    """All kernels the differential may need, listed lazily per source: the mainline listing
    (releases, rc's and the stable lines, all from the mainline mirror) from the oldest base
    named on, and the distro sources; a source is only asked when a lineage of it is needed.
    Patched variants (`debian:6.1.0-54-cloud-amd64+revert-x`) are in no listing: they join the
    lineage of the kernel they were built from, right after it."""
    from orchestrator.core.differential import KernelIndex, make_kernel
    from orchestrator.core.versions import parse_spec

    g, b = parse_spec(good), parse_spec(bad)
    bases = []
    for spec in (g, b):
        k = make_kernel(spec.source, spec.version)
        if k.base is not None:
            bases.append(k.base)
    lo = str(min(bases)) if bases else None

    series = _ubuntu_series(distro, [g, b])

    def loader(source: str):
        def load():
            kernels = []
            for entry in _entries(source, mirror if source == "mainline" else distro_mirror,
                                  lo if source == "mainline" else None, None,
                                  series if source == "ubuntu" else None):
                version = getattr(entry, "version", entry)
                try:
                    kernels.append(make_kernel(source, str(version), bool(getattr(entry, "available", True)),
                                               str(getattr(entry, "reason", "") or "")))
                except KbisectError:
                    continue  # odd names the listing kept (legacy side builds) are not candidates
            return kernels
        return load

    sources = {"mainline", "ubuntu", "debian", "local"}
    index = KernelIndex(loaders={s: loader(s) for s in sources})
    for spec in (g, b):
        if spec.variant:
            index.add([make_kernel(spec.source, spec.version, variant=spec.variant)])
    return index


def _real_probe(bug, mirror: str | None):
    """The guest runtime, imported only when a verdict is not known already."""

    def probe(spec: str):
        from orchestrator.app.run import run_probe

        return run_probe(spec, bug, mirror=mirror)

    return probe


# -- progress ---------------------------------------------------------------------------------

class Progress:
    """Bisection steps on stderr: which stage, which kernel, what it said and where from."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = _console()
        self.quiet = quiet

    def event(self, message: str) -> None:
        from rich.markup import escape

        if not self.quiet:
            self.console.print(f"[bold cyan]kbisect[/] {escape(message)}", markup=True)

    def probe(self, p) -> None:
        if self.quiet:
            return
        colour = {"good": "green", "bad": "red", "skip": "yellow"}.get(p.verdict.value, "white")
        origin = ",".join(sorted(set(p.origins)))
        runs = f"{p.runs} run{'s' if p.runs != 1 else ''}" if p.runs else "known"
        from rich.markup import escape

        self.console.print(f"  {p.phase:<7} {escape(p.label):<24} [{colour}]{p.verdict.value:<4}[/] "
                           f"({runs}, {p.seconds:.1f}s, {origin}) {escape(p.reason)}", markup=True,
                           highlight=False)


# -- git narrowing ----------------------------------------------------------------------------

def _git_rev(label: str, lineage: str | None) -> str:
    """Tag names of a Linux clone: v5.7-rc4, v5.4.41; Ubuntu's Ubuntu-5.4.0-31.35."""
    if lineage and lineage.startswith("ubuntu:"):
        return f"Ubuntu-{label}"
    return f"v{label}"


def narrow(repo: str, result, bug) -> list[dict[str, Any]]:
    """Candidates for the result's ranges; the intersection first in a differential. A range the
    clone cannot resolve (no Ubuntu tags in a mainline clone, say) becomes a note, never a
    failure: the bisection's answer stands without it."""
    from orchestrator.adapters.gitlog import find_candidates, merge_differential

    ranges = result.git_ranges()
    lineage = result.lineage

    def search(key: str, rev_lineage: str | None) -> list:
        if key not in ranges:
            return []
        lo, hi = ranges[key]
        good, bad = _git_rev(lo, rev_lineage), _git_rev(hi, rev_lineage)
        try:
            return find_candidates(repo, good, bad, bug.keywords, bug.paths)
        except KbisectError as exc:
            result.notes.append(f"git narrowing of {good}..{bad} skipped: {exc}")
            return []

    if result.origin == "mainline" or lineage == "mainline":
        return [c.to_json() for c in search("range", "mainline")]
    stable = search("range", lineage)
    upstream = search("upstream", "mainline")
    return [c.to_json() for c in merge_differential(stable, upstream)]


# -- commands ---------------------------------------------------------------------------------

# Exit statuses of `kbisect bisect`; the result is printed (and with --json as JSON) before any of them.
EXIT_FOUND = 0  # boundary found; an origin is named only when the kernels deciding it were probed
EXIT_NOT_FOUND = 3  # ends-disagree, no-candidates, unstable
EXIT_INCONCLUSIVE = 4  # unavailable or skipped kernels left the boundary or the origin undecided


def exit_code(status: str) -> int:
    """The process exit status for a result status (see EXIT_*)."""
    from orchestrator.core.engine import FOUND, INCONCLUSIVE

    return {FOUND: EXIT_FOUND, INCONCLUSIVE: EXIT_INCONCLUSIVE}.get(status, EXIT_NOT_FOUND)


@cli.command("bisect")
@click.option("--bug", "bug_id", required=True, help="Reproducer id (catalog) or directory.")
@click.option("--good", required=True, help="A good kernel: 4.15, mainline:5.6, ubuntu:5.4.0-26.30 ...")
@click.option("--bad", required=True, help="A bad kernel (the one you saw the bug on).")
@click.option("--mirror", default=None, help="Mainline mirror base URL (default: the public one).")
@click.option("--distro", default=None, help="Distro series to compare with mainline: ubuntu:focal, debian:bookworm.")
@click.option("--distro-mirror", default=None, help="Base URL standing for the distro source's hosts (Ubuntu: "
              "URL/api/ the Launchpad API root, used as URL/api/devel/; URL/ubuntu/ the archive; URL/launchpad/ "
              "for Launchpad's +files).")
@click.option("--verdicts", "verdicts_file", type=click.Path(path_type=Path), default=None,
              help="YAML/JSON object of known verdicts ('mainline:5.7-rc5': bad); the rest are probed.")
@click.option("--repo", type=click.Path(path_type=Path), default=None,
              help="A Linux git clone: narrow the boundary to ranked candidate commits.")
@click.option("--verify", "verify_runs", type=click.IntRange(0, 20), default=3, show_default=True,
              help="Re-run last good and first bad this many times before reporting.")
@click.option("--verify-revert", is_flag=True, help="Build the first-bad kernel with the top candidate "
              "reverted and probe it (bad→good confirms the culprit).")
@click.option("--fresh", is_flag=True, help="Ignore stored verdicts (new ones replace them).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@mainline_options
def bisect_cmd(bug_id: str, good: str, bad: str, mirror: str | None, distro: str | None,
               distro_mirror: str | None, verdicts_file: Path | None, repo: Path | None, verify_runs: int, verify_revert: bool,
               fresh: bool, as_json: bool, quiet: bool, allow_unverified: bool, keyring: str | None) -> None:
    """Find the first bad kernel between GOOD and BAD, and whether it came from mainline, a stable
    backport or a distro patch.

    Unavailable or skipped kernels never decide anything: when they leave the boundary or the
    origin open, the result is `inconclusive`, the origin is null, the untested kernels are
    listed as undecided and the result says what to try next. The result is printed in every
    status (with --json as JSON on stdout); then the exit status is:

    \b
      0  found
      4  inconclusive: unavailable or skipped kernels left the answer undecided
      3  ends-disagree, no-candidates or unstable
      2  bad input or an error (one line on stderr)
    """
    from orchestrator.adapters import catalog, report
    from orchestrator.core.differential import Differential, canonical, distro_lineage
    from orchestrator.app.prober import ResumingProbe, load_replay
    from orchestrator.adapters.store import Store

    bug = catalog.resolve(bug_id)
    if distro:
        distro_lineage(distro)
    # the listing and every probe's fetch build their mainline source from the environment
    if allow_unverified:
        os.environ["KBISECT_ALLOW_UNVERIFIED"] = "1"
    if check_keyring(keyring):
        os.environ["KBISECT_MAINLINE_KEYRING"] = str(Path(keyring).resolve())
    replay = load_replay(verdicts_file) if verdicts_file else {}
    if repo is not None and not Path(repo).exists():
        raise KbisectError(f"--repo {repo}: no such directory")
    progress = Progress(quiet)
    progress.event(f"bisecting {bug.id}: good {good}, bad {bad}"
                   + (f", distro {distro}" if distro else "") + (" (fresh)" if fresh else ""))
    index = build_index(good, bad, distro, mirror, distro_mirror)
    store = Store()
    prober = ResumingProbe(bug, _real_probe(bug, mirror), store=store, replay=replay, fresh=fresh, canon=canonical)
    diff = Differential(bug.id, index, prober, policy=bug.repeat, verify=verify_runs,
                        on_probe=progress.probe, on_event=progress.event)
    result = diff.run(good, bad, distro)
    data = result.to_json()
    data["counts"] = dict(prober.counts)
    if repo is not None:
        progress.event(f"narrowing with git log over {repo}")
        data["candidates"] = narrow(str(repo), result, bug)
        data["notes"] = result.notes
        if verify_revert:
            data["revert_check"] = _verify_revert(str(repo), result, data["candidates"], bug, prober, progress)
    elif verify_revert:
        raise KbisectError("--verify-revert needs --repo (the candidate to revert comes from git narrowing)")
    run_id = report.new_run_id(bug.id)
    out = report.write(data, run_id, report.probe_consoles(result.probes))
    progress.event(f"report: {out / 'report.html'}")
    store.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _summary(data)
    code = exit_code(data["status"])
    if code:
        sys.exit(code)


def _summary(data: dict[str, Any]) -> None:
    """The text answer: what was found, and when something is open, which kernels and what to do."""
    click.echo(f"{data['bug']}: {data['stopped']}")
    click.echo(f"status: {data['status']}")
    if data.get("origin"):
        click.echo(f"origin: {data['origin']}")
    elif data["status"] == "inconclusive":
        click.echo("origin: undecided")
    undecided = data.get("undecided") or []
    if undecided:
        click.echo(f"undecided kernels ({len(undecided)}):")
        for u in undecided:
            click.echo(f"  {u['kernel']} ({u['why']}{': ' + u['reason'] if u.get('reason') else ''})")
    if data.get("advice"):
        click.echo(f"next: {data['advice']}")
    if data.get("upstream_first_bad"):
        click.echo(f"upstream: {data['upstream_last_good']} good, {data['upstream_first_bad']} bad")
    click.echo(f"confidence: {data['confidence']}{' (LOW)' if data.get('flagged') else ''}")
    for c in data.get("candidates", [])[:5]:
        up = f" (upstream {c['upstream'][:12]})" if c.get("upstream") else ""
        click.echo(f"  {c['score']:6.1f} {c['sha'][:12]} {c['subject']}{up}")
    click.echo(f"report: {data.get('report')}")


def _verify_revert(repo: str, result, candidates: list[dict[str, Any]], bug, prober, progress) -> dict[str, Any]:
    """KernelCI's revert check: the first-bad kernel with the top candidate reverted must be good.

    Only possible when the candidate touches modular code only (the variant machinery rebuilds
    modules, never vmlinuz) and the first-bad kernel's source is reachable (Debian kernels)."""
    import tempfile

    import git

    from orchestrator.core.engine import Candidate, Engine
    from orchestrator.core.verdict import Verdict

    if not candidates or not result.first_bad:
        return {"status": "not-run", "reason": "no candidate or no first bad kernel"}
    top = candidates[0]
    sha = top.get("sha")
    first_bad_spec = next((p.kernel for p in result.probes if p.label == result.first_bad), None)
    if not first_bad_spec:
        return {"status": "not-run", "reason": "first bad kernel spec unknown"}
    files = git.Repo(repo).git.show("--format=", "--name-only", sha).split()
    if not files or not all(f.endswith(".c") and f.startswith(("net/", "drivers/", "fs/")) for f in files):
        return {"status": "not-run", "sha": sha,
                "reason": "top candidate touches headers or built-in code: a module-only variant cannot revert it"}
    patch = Path(tempfile.mkdtemp(prefix="kbisect-revert-")) / f"revert-{sha[:12]}.patch"
    patch.write_text(git.Repo(repo).git.diff(sha, f"{sha}^", "--", *files) + "\n")
    name = f"revert-{sha[:12]}"
    try:
        from orchestrator.adapters.variants import build_variant

        progress.event(f"building {first_bad_spec}+{name}")
        variant = build_variant(first_bad_spec, patch, name)
    except (ImportError, KbisectError) as exc:
        return {"status": "not-run", "sha": sha, "reason": f"variant build failed: {exc}"}
    cand = Candidate(variant.spec, variant.spec.split(":", 1)[-1])
    engine = Engine([cand], prober, policy=bug.repeat, verify=0, on_probe=progress.probe)
    verdicts = [engine.judge(cand, "revert").verdict for _ in range(3)]
    confirmed = all(v is Verdict.GOOD for v in verdicts)
    return {"status": "confirmed" if confirmed else "not-confirmed", "sha": sha, "kernel": variant.spec,
            "verdicts": [v.value for v in verdicts]}
