"""From a package bisection to a tested commit: the automatic handover.

A package bisection narrows the regression to two neighbouring prebuilt kernels (mainline 5.7-rc4
good, 5.7-rc5 bad). With a Linux clone and `--build`, kbisect goes on by itself: the commits
between those two kernels' tags are built and bisected (app.commit_bisect) to the first bad
commit, ranking-guided, and (with --verify-revert) its revert is checked.

Which range: where the change entered mainline. A mainline origin's own boundary; for a
backport (stable or distro), the upstream boundary the differential found, because the
culprit is a mainline commit and a clone of mainline has its tags; a distro-only or
stable-only origin, the lineage's own range (its tags: `Ubuntu-5.4.0-31.35`, `v5.4.41`). Debian
kernels carry no tags of their own: each is mapped to the upstream stable release its package
version names (6.1.0-54 is 6.1.170-1: `v6.1.170`), and the stable tags between are built. A
range the clone does not hold is a note naming the tags to fetch, not a failure: the package
answer stands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from orchestrator.adapters.fsutil import atomic_write
from orchestrator.app.bisect import git_rev
from orchestrator.app.commit_bisect import CommitBisectDeps, CommitBisectRequest, run_commit_bisect
from orchestrator.core.bug import Bug
from orchestrator.core.engine import Probe
from orchestrator.core.errors import KbisectError


class NoHandover(Exception):
    """Why a package bisection's boundary gives no commit range to build (said in the result)."""


def handover_range(data: dict[str, Any]) -> tuple[str, str]:
    """(good rev, bad rev) of the commits to build, from a package bisection's result; NoHandover
    with the reason when there is none."""
    # a boundary with its origin still undecided (mainline unreachable, say) is inconclusive as
    # a whole, yet its two kernels are proven: their commits can still be built and bisected
    boundary = data.get("status") == "inconclusive" and data.get("last_good") and data.get("first_bad")
    if data.get("status") != "found" and not boundary:
        raise NoHandover("the package bisection found no boundary to continue from")
    if data.get("origin") == "variant":
        raise NoHandover("the boundary is a patched variant of one kernel: the patch is the whole difference")
    if data.get("origin") == "mainline" or data.get("lineage") == "mainline":
        lo, hi, lineage = data.get("last_good"), data.get("first_bad"), "mainline"
    elif data.get("upstream_last_good") and data.get("upstream_first_bad"):
        lo, hi, lineage = data["upstream_last_good"], data["upstream_first_bad"], "mainline"
    elif str(data.get("lineage") or "").startswith("debian"):
        return _stable_tags(data)
    else:
        lo, hi, lineage = data.get("last_good"), data.get("first_bad"), data.get("lineage")
    if not lo or not hi:
        raise NoHandover("the package bisection found no boundary to continue from")
    return git_rev(str(lo), lineage), git_rev(str(hi), lineage)


def _stable_tags(data: dict[str, Any]) -> tuple[str, str]:
    """A Debian boundary as the upstream stable tags its two packages are built from."""
    up = data.get("boundary_upstream") or {}
    lo, hi = up.get("last_good"), up.get("first_bad")
    if not lo or not hi:
        raise NoHandover(f"the listing did not say which upstream release {data.get('last_good')} and "
                         f"{data.get('first_bad')} are built from")
    if lo == hi:
        raise NoHandover(f"{data.get('last_good')} and {data.get('first_bad')} are both built from upstream {lo}: "
                         "the change is Debian's own (a patch or the config; see config_diff), in no upstream tag")
    return f"v{lo}", f"v{hi}"


def resolves(repo: Path, rev: str) -> bool:
    """Whether `rev` names a commit of the clone."""
    from orchestrator.adapters.gitlog import open_repo, resolve_rev  # GitPython: a slow import

    try:
        resolve_rev(open_repo(repo), rev)
    except KbisectError:
        return False
    return True


def hand_over(bug: Bug, data: dict[str, Any], request: CommitBisectRequest, deps: CommitBisectDeps, *,
              on_event: Callable[[str], None] = lambda m: None,
              on_probe: Callable[[Probe], None] | None = None) -> dict[str, Any]:
    """`data` (a package bisection's result) with `commit_bisection`: the commit bisection's
    summary, or why there was none."""
    try:
        good, bad = handover_range(data)
    except NoHandover as why:
        data["commit_bisection"] = {"status": "not-run", "reason": str(why)}
        return _stored(data)
    missing = [rev for rev in (good, bad) if not resolves(request.repo, rev)]
    if missing:
        fetch = " ".join(f"tag {rev}" for rev in missing)
        hint = f": fetch them into the clone (git fetch <stable remote> {fetch})" if good.startswith("v") else ""
        data["commit_bisection"] = {"status": "not-run", "good": good, "bad": bad,
                                    "reason": f"{', '.join(missing)} not in {request.repo}{hint}"}
        return _stored(data)
    on_event(f"handing over to a commit bisection of {good}..{bad} in {request.repo}")
    request.good, request.bad = good, bad
    result = run_commit_bisect(bug, request, deps, on_event=on_event, on_probe=on_probe)
    data["commit_bisection"] = {key: result.get(key) for key in (
        "status", "stopped", "first_bad_commit", "last_good_commit", "builds", "report", "revert_check", "notes")}
    data["commit_bisection"].update(good=good, bad=bad)
    return _stored(data)


def _stored(data: dict[str, Any]) -> dict[str, Any]:
    """The package run's result.json and report again, now naming the commit bisection."""
    if data.get("run_id") and data.get("report"):
        from orchestrator.app.report import regenerate_run

        atomic_write(Path(data["report"]).parent / "result.json", json.dumps(data, indent=2) + "\n")
        regenerate_run(str(data["run_id"]))
    return data
