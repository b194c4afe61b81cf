"""`kbisect candidates`: rank the commits of a narrowed range.

With `--repo`, `git log --grep` over a Linux clone (stable/distro backports mapped upstream);
mainline versions given with `--mirror` are resolved to the exact commits their builds were made
from (the builds' `COMMIT` files) instead of guessed tags. Without `--repo`, the mainline builds'
`CHANGES` shortlogs are ranked by the same keyword and path rules: subjects only, and said so,
because most users of prebuilt kernels have no clone at hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from orchestrator.cli.base import cli
from orchestrator.core.errors import KbisectError


@cli.command("candidates")
@click.option("--repo", type=click.Path(path_type=Path), default=None,
              help="A Linux git clone (without it: rank the mainline builds' CHANGES subjects).")
@click.option("--good", required=True, help="Last good: a revision (v5.4.40, a sha) or, without --repo or "
              "with --mirror, a mainline version (5.7-rc4).")
@click.option("--bad", required=True, help="First bad revision or mainline version (5.7-rc5).")
@click.option("--bug", "bug_id", required=True, help="Reproducer id or directory (keywords and paths).")
@click.option("--mirror", default=None, help="Mainline mirror whose builds' COMMIT/CHANGES name the range.")
@click.option("--upstream-good", default=None, help="For a stable/distro range: the upstream last good rev.")
@click.option("--upstream-bad", default=None, help="For a stable/distro range: the upstream first bad rev.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print {\"candidates\": [...]} on stdout.")
def candidates_cmd(repo: Path | None, good: str, bad: str, bug_id: str, mirror: str | None,
                   upstream_good: str | None, upstream_bad: str | None, limit: int, as_json: bool) -> None:
    """Rank the commits of GOOD..BAD that most likely caused the bug."""
    from orchestrator.adapters import catalog

    bug = catalog.resolve(bug_id)
    if not bug.keywords and not bug.paths:
        raise KbisectError(f"bug {bug.id} has neither keywords nor paths to search for")
    if bool(upstream_good) != bool(upstream_bad):
        raise KbisectError("--upstream-good and --upstream-bad go together")
    if repo is None:
        if upstream_good:
            raise KbisectError("--upstream-good/--upstream-bad need --repo")
        _from_changes(good, bad, bug, mirror, limit, as_json)
        return
    _from_repo(repo, good, bad, bug, mirror, upstream_good, upstream_bad, limit, as_json)


def _mainline_range(good: str, bad: str, mirror: str | None):
    """The mainline builds after GOOD up to BAD in BAD's lineage (each CHANGES covers the step
    from the previous tag), with the source that lists them."""
    from orchestrator.adapters.sources.mainline import MainlineSource
    from orchestrator.core.versions import parse_version

    lo, hi = parse_version(good), parse_version(bad)
    if not lo < hi:
        raise KbisectError(f"--good {good} is not older than --bad {bad}")
    source = MainlineSource(mirror)
    builds = [e for e in source.list(str(lo), str(hi)) if parse_version(e.version) > lo
              and parse_version(e.version).lineage == hi.lineage]
    return source, builds


def _from_changes(good: str, bad: str, bug, mirror: str | None, limit: int, as_json: bool) -> None:
    from orchestrator.adapters.gitlog import rank_changes
    from orchestrator.core.versions import parse_version

    source, builds = _mainline_range(good, bad, mirror)
    changes, missing = {}, []
    for entry in builds:
        text = source.changes(parse_version(entry.version))
        if text is None:
            missing.append(entry.version)
        else:
            changes[entry.version] = text
    if not changes:
        raise KbisectError(f"no CHANGES published for the mainline builds in {good}..{bad}: give --repo")
    ranked = rank_changes(changes, bug.keywords, bug.paths, limit=limit)
    note = (f"subjects only: ranked from the CHANGES shortlogs of {', '.join(changes)} "
            "(no bodies, files or Fixes: tags; give --repo for the full ranking)")
    if missing:
        note += f"; no CHANGES for {', '.join(missing)}"
    if as_json:
        rows = [{**c.to_json(), "sha": None, "build": e.build, "author": e.author} for c, e in ranked]
        click.echo(json.dumps({"candidates": rows, "basis": "changes-subjects", "notes": [note]}, indent=2))
        return
    click.echo(note, err=True)
    if not ranked:
        click.echo(f"no candidates in {good}..{bad}")
    for c, e in ranked:
        click.echo(f"{c.score:6.1f}  {e.build:<10} {c.subject}  ({e.author})")
        click.echo(f"        {'; '.join(c.reasons)}")


def _revision(text: str, mirror: str | None) -> str:
    """A mainline version given with --mirror becomes the exact commit its build was made from."""
    from orchestrator.adapters.sources.mainline import MainlineSource
    from orchestrator.core.versions import parse_version

    if mirror is None:
        return text
    try:
        version = parse_version(text)
    except KbisectError:
        return text  # a tag or sha: used as given
    commit = MainlineSource(mirror).commit(version).get("commit")
    if not commit:
        raise KbisectError(f"mainline {version}: its build publishes no COMMIT; give a revision instead")
    return commit


def _from_repo(repo: Path, good: str, bad: str, bug, mirror: str | None, upstream_good: str | None,
               upstream_bad: str | None, limit: int, as_json: bool) -> None:
    from orchestrator.adapters.gitlog import find_candidates, merge_differential

    good_rev, bad_rev = _revision(good, mirror), _revision(bad, mirror)
    cands = find_candidates(repo, good_rev, bad_rev, bug.keywords, bug.paths, limit=limit)
    if upstream_good:
        cands = merge_differential(cands, find_candidates(repo, _revision(upstream_good, mirror),
                                                          _revision(upstream_bad, mirror), bug.keywords,
                                                          bug.paths, limit=limit))
    cands = cands[:limit]
    if as_json:
        click.echo(json.dumps({"candidates": [c.to_json() for c in cands]}, indent=2))
        return
    if not cands:
        click.echo(f"no candidates in {good}..{bad}")
    for c in cands:
        up = f"  (upstream {c.upstream[:12]})" if c.upstream else ""
        click.echo(f"{c.score:6.1f}  {c.sha[:12]}  {c.subject}{up}")
        click.echo(f"        {'; '.join(c.reasons)}")
