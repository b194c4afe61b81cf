"""`kbisect bisect`: the user's command, wired to the bisect use case (orchestrator.app.bisect).

This module parses and checks the options, shows progress on stderr (which stage, which kernel,
what it said and where from) and prints the answer; listing, probing, the differential, git
narrowing and the report are the use case's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.adapters.progress import stderr_console
from orchestrator.adapters.fsutil import run_tool
from orchestrator.cli.base import check_input_file, check_keyring, check_results_dir, cli, mainline_options
from orchestrator.core.errors import KbisectError

MAX_VERDICTS_BYTES = 4 << 20  # a replay file names kernels: thousands fit in well under a MiB


class Progress:
    """Bisection steps on stderr: which stage, which kernel, what it said and where from."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = stderr_console()
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
              "reverted and probe it 3x (bad→good confirms the culprit); with --build, the first bad commit "
              "itself, whole kernel, built-in code included.")
@click.option("--build", "build_commits", is_flag=True, help="Bisect the commits of --repo, each step built "
              "(incrementally, kbisect kernels build) and probed, down to a tested first bad commit; the commit the "
              "bug's ranking puts first is tried with its parent before binary search. --good and --bad are "
              "revisions of --repo, or kernels: then the package bisection runs first and hands its boundary "
              "(v5.7-rc4..v5.7-rc5) over to the commit bisection.")
@click.option("--config", "config_mode", default="guest", show_default=True, metavar="guest|base|FILE",
              help="With --build: the kernel config (see kbisect kernels build).")
@click.option("--kconfig-for", "kconfig_for", multiple=True, metavar="ID",
              help="With --build: the builds meet these reproducers' kconfig requirements too (repeatable; "
                   "default: the whole catalog, as kbisect kernels build, so both share a build directory).")
@click.option("--fix", is_flag=True, help="Find the first kernel where the bug is GONE (what to ask a backport "
              "for): --bad is the older kernel that shows it, --good the newer one that does not. Runs in their "
              "one lineage (with --build: over commits); the answer is last_bad and first_good.")
@click.option("--fresh", is_flag=True, help="Ignore stored verdicts (new ones replace them).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@mainline_options
def bisect_cmd(bug_id: str, good: str, bad: str, mirror: str | None, distro: str | None,
               distro_mirror: str | None, verdicts_file: Path | None, repo: Path | None, verify_runs: int, verify_revert: bool,
               build_commits: bool, config_mode: str, kconfig_for: tuple[str, ...], fix: bool, fresh: bool,
               as_json: bool, quiet: bool, allow_unverified: bool, keyring: str | None) -> None:
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
    # imported when the command runs: the use case pulls in the guest runtime and the variant
    # builder (~0.4 s), which every other kbisect command would pay for at startup
    from orchestrator.adapters import catalog
    from orchestrator.app.bisect import BisectDeps, BisectRequest, run_bisect
    from orchestrator.app.deps import current
    from orchestrator.app.prober import load_replay
    from orchestrator.core.differential import distro_lineage

    handover = False
    if fix and verify_revert:
        raise KbisectError("--fix --verify-revert: the revert check undoes a culprit to see the bug go; a fix "
                           "bisection finds where the bug went away and has no culprit to revert")
    if build_commits:
        if repo is None:
            raise KbisectError("--build needs --repo (the clone whose commits are built)")
        _check_repo(repo)
        if config_mode not in ("guest", "base"):  # before the package bisection a handover would run first
            check_input_file("--config", Path(config_mode), max_bytes=4 << 20)
        if _ends_are_revisions(repo, good, bad, fix):
            _bisect_commits(bug_id, good, bad, repo, config_mode, kconfig_for, verify_runs, fresh, as_json, quiet,
                            fix, verify_revert)
            return
        handover = True  # kernel specs: a package bisection first, then its commits
    if fix and (distro or repo is not None or verify_revert):
        raise KbisectError("--fix bisects the one lineage of --bad and --good: --distro, --repo and --verify-revert "
                           "do not apply (with --build, --repo names the clone whose commits are bisected)")
    # every input is checked before anything is listed, fetched or booted
    for option, spec in (("--good", good), ("--bad", bad)):
        _check_spec(option, spec)
    bug = catalog.resolve(bug_id)
    if distro:
        distro_lineage(distro)
    # the listing and every probe's fetch build their mainline source from the environment
    if allow_unverified:
        os.environ["KBISECT_ALLOW_UNVERIFIED"] = "1"
    if check_keyring(keyring):
        os.environ["KBISECT_MAINLINE_KEYRING"] = str(Path(keyring).resolve())
    replay = _replay(verdicts_file, load_replay) if verdicts_file else {}
    if repo is not None:
        _check_repo(repo)
    if verify_revert and repo is None:
        raise KbisectError("--verify-revert needs --repo (the candidate to revert comes from git narrowing)")
    check_results_dir()  # the report is written after the last boot
    progress = Progress(quiet)
    progress.event(f"bisecting {'the fix of ' if fix else ''}{bug.id}: good {good}, bad {bad}"
                   + (f", distro {distro}" if distro else "") + (" (fresh)" if fresh else ""))
    # with a handover, the revert check is the commit bisection's (a whole-kernel build of the culprit)
    request = BisectRequest(good, bad, distro, mirror, distro_mirror, replay, fresh, verify_runs, repo,
                            verify_revert and not handover)
    if fix:
        from orchestrator.app.fix_bisect import run_fix_bisect

        data = run_fix_bisect(bug, request, current(BisectDeps), on_event=progress.event, on_probe=progress.probe)
    else:
        data = run_bisect(bug, request, current(BisectDeps), on_event=progress.event, on_probe=progress.probe)
    if handover:
        data = _hand_over(bug, data, repo, config_mode, kconfig_for, verify_runs, fresh, verify_revert, progress)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _summary(data)
    commits = data.get("commit_bisection") or {}
    code = exit_code(commits["status"] if commits.get("status") not in (None, "not-run") else data["status"])
    if code:
        sys.exit(code)


def _hand_over(bug, data: dict[str, Any], repo: Path, config_mode: str, kconfig_for: tuple[str, ...],
               verify_runs: int, fresh: bool, verify_revert: bool, progress: Progress) -> dict[str, Any]:
    """The package bisection's boundary handed to a commit bisection (app.handover)."""
    from orchestrator.app.commit_bisect import CommitBisectDeps, CommitBisectRequest
    from orchestrator.app.deps import current
    from orchestrator.app.handover import hand_over

    request = CommitBisectRequest(repo.resolve(), "", "", config_mode, verify_runs, fresh,
                                  kconfig_for=_kconfig_bugs(kconfig_for), verify_revert=verify_revert)
    return hand_over(bug, data, request, current(CommitBisectDeps), on_event=progress.event,
                     on_probe=progress.probe)


def _kconfig_bugs(kconfig_for: tuple[str, ...]) -> list:
    """The reproducers whose kconfig the builds meet: `--kconfig-for`, else the whole catalog."""
    from orchestrator.adapters import catalog

    return [catalog.resolve(b) for b in kconfig_for] if kconfig_for else catalog.all_bugs()


def _bisect_commits(bug_id: str, good: str, bad: str, repo: Path, config_mode: str,
                    kconfig_for: tuple[str, ...], verify_runs: int, fresh: bool, as_json: bool, quiet: bool,
                    fix: bool = False, verify_revert: bool = False) -> None:
    """`--build`: the commit bisection (app.commit_bisect), same output and exit codes."""
    from orchestrator.adapters import catalog
    from orchestrator.app.commit_bisect import CommitBisectDeps, CommitBisectRequest, run_commit_bisect
    from orchestrator.app.deps import current

    bug = catalog.resolve(bug_id)
    also = _kconfig_bugs(kconfig_for)
    check_results_dir()
    progress = Progress(quiet)
    progress.event(f"bisecting commits of {repo} for {bug.id}: good {good}, bad {bad}")
    request = CommitBisectRequest(repo.resolve(), good, bad, config_mode, verify_runs, fresh, kconfig_for=also, fix=fix,
                                  verify_revert=verify_revert)
    data = run_commit_bisect(bug, request, current(CommitBisectDeps), on_event=progress.event,
                             on_probe=progress.probe)
    data.setdefault("bug", bug.id)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        key = "first_good_commit" if fix else "first_bad_commit"
        first = data.get(key)
        click.echo(f"{bug.id}: {data.get('stopped')}")
        if first:
            click.echo(f"{key.replace('_', ' ')} {first['sha']} {first['subject']}")
        for parent in data.get("parent_commits") or []:
            click.echo(f"  its {'parent' if not data.get('merge') else 'merge parent'} {parent['sha']} "
                       f"{parent['subject']}: {'bad' if fix else 'good'}, built and probed")
        if data.get("revert_check"):
            click.echo(revert_line(data["revert_check"]))
        elif verify_revert:
            click.echo("revert check: not run (--verify-revert was asked; no check was made)")
        click.echo(f"report: {data.get('report')}")
    code = exit_code(data["status"])
    if code:
        sys.exit(code)


def _ends_are_revisions(repo: Path, good: str, bad: str, fix: bool) -> bool:
    """With --build: True when both ends are revisions of --repo, False when both are kernels (a
    handover); a one-line error naming the end at fault otherwise: one revision and one name that
    is nothing in the clone (a typo: not "not a mainline kernel version" about the other end),
    or a name that is neither a revision nor a kernel."""
    from orchestrator.app.handover import resolves
    from orchestrator.core.versions import parse_spec

    found = {option: resolves(repo, rev) for option, rev in (("--good", good), ("--bad", bad))}
    if all(found.values()):
        return True
    given = {"--good": good, "--bad": bad}
    if any(found.values()):
        option = next(o for o, ok in found.items() if not ok)
        raise KbisectError(f"{option} {given[option]}: no such revision in --repo {repo} (no branch, tag or commit "
                           "of that name; with --build, --good and --bad are both revisions, or both kernels)")
    if fix:
        raise KbisectError(f"--fix --build bisects commits: --good {good} and --bad {bad} are no revisions of "
                           f"--repo {repo}")
    for option, spec in given.items():
        try:
            parse_spec(spec)
        except KbisectError as exc:
            raise KbisectError(f"{option} {spec}: neither a revision of --repo {repo} nor a kernel ({exc})") from None
    return False


def _check_spec(option: str, spec: str) -> None:
    from orchestrator.core.versions import parse_spec

    try:
        parse_spec(spec)
    except KbisectError as exc:
        raise KbisectError(f"{option}: {exc}") from None


def _replay(path: Path, load) -> dict:
    """The --verdicts file through the prober's reader, after checking it is a small text file
    (a binary or endless file is one line here, not a decoding traceback)."""
    check_input_file("--verdicts", path, max_bytes=MAX_VERDICTS_BYTES)
    try:
        return load(path)
    except (OSError, UnicodeDecodeError) as exc:  # changed since the check
        raise KbisectError(f"--verdicts {path}: cannot read: {exc}") from None


def _check_repo(repo: Path) -> None:
    """--repo is used after the last boot (git narrowing): a wrong one must fail now."""
    if not repo.is_dir():
        raise KbisectError(f"--repo {repo}: no such directory")
    try:
        run_tool(["git", "-C", str(repo), "rev-parse", "--git-dir"], f"--repo {repo}: git rev-parse")
    except KbisectError:
        raise KbisectError(f"--repo {repo}: not a git repository") from None


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
    commits = data.get("commit_bisection")
    if commits:
        first = commits.get("first_bad_commit")
        click.echo(f"commits {commits.get('good', '?')}..{commits.get('bad', '?')}: {commits['status']}"
                   + (f", first bad commit {first['sha']} {first['subject']}" if first else "")
                   + (f" ({commits['reason']})" if commits.get("reason") else ""))
        if commits.get("revert_check"):
            click.echo(revert_line(commits["revert_check"]))
    if data.get("mode") == "fix" and data.get("first_good"):
        click.echo(f"fixed in: {data['first_good']} (last bad {data['last_bad']})")
    if data.get("upstream_first_bad"):
        click.echo(f"upstream: {data['upstream_last_good']} good, {data['upstream_first_bad']} bad")
    click.echo(f"confidence: {data['confidence']}{' (LOW)' if data.get('flagged') else ''}")
    for c in data.get("candidates", [])[:5]:
        up = f" (upstream {c['upstream'][:12]})" if c.get("upstream") else ""
        click.echo(f"  {c['score']:6.1f} {c['sha'][:12]} {c['subject']}{up}")
    for note in data.get("notes") or []:  # said in result.json; the text must not hide them
        if note.startswith("git narrowing"):
            click.echo(f"note: {note}")
    if data.get("revert_check"):
        click.echo(revert_line(data["revert_check"]))
    click.echo(f"report: {data.get('report')}")


def revert_line(check: dict[str, Any]) -> str:
    """One line for a revert check, the same in every summary; one that did not run says so and why."""
    status = "not run (--verify-revert was asked)" if check.get("status") == "not-run" else check.get("status")
    verdicts = f" ({', '.join(check['verdicts'])})" if check.get("verdicts") else ""
    return f"revert check: {status}{verdicts}" + (f": {check['reason']}" if check.get("reason") else "")
