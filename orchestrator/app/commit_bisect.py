"""Commit bisection (`kbisect bisect --repo PATH --good REV --bad REV --build`): every step is a
kernel built from that commit (incrementally: one worktree, one build directory, ccache) and
probed like any other kernel, down to a first bad commit that was itself built and tested.

The search is the core's commit-graph search (core.dag), over the commits of `bad ^good` as git
bisect walks them, merges and side branches included: the ends are confirmed, a commit that does
not build or boot is a skip and the next best commit is tried (as `git bisect skip` does), and the
answer is a commit proven bad whose every parent was built and proven good, then re-run. Each commit's kernel is `local:git-<sha12>`, built on the first question about it (the
stored-verdict lookup asks for its content id first, so a commit built and probed by an earlier
run costs neither a build nor a boot).

Ranking-guided first steps: when the bug's keyword and path ranking (adapters.gitlog) puts one
commit of the range first, that commit and its parents are tried before anything else; good
parents and a bad candidate are the answer in two builds (then verified like any boundary).
The commits touching the bug's paths are searched before the others (`git bisect -- PATHS`),
and one of them found bad has its parents probed next. `fix=True` looks for the
first commit without the bug instead; `verify_revert` rebuilds the culprit with itself reverted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.store import Store
from orchestrator.app.bisect import finish, revert_patch, revert_verdicts
from orchestrator.app.build import BuildRequest, build_kernel
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.prober import ResumingProbe
from orchestrator.app.run import run_probe
from orchestrator.core.bug import Bug
from orchestrator.core.dag import CommitGraph, DagEngine
from orchestrator.core.engine import BisectStatus, Candidate, Probe
from orchestrator.core.errors import KbisectError, ReversedRange
from orchestrator.core.verdict import ProbeRecord


@dataclass
class CommitBisectRequest:
    repo: Path
    good: str
    bad: str
    config: str = "guest"
    verify_runs: int = 3
    fresh: bool = False
    guided: bool = True  # try the top-ranked commit and its parent first
    # whose kconfig requirements the builds meet (besides the bisected bug's own): by default
    # the whole catalog, as `kbisect kernels build`, so both share one build directory
    kconfig_for: list[Bug] = field(default_factory=list)
    fix: bool = False  # bisect for the first commit WITHOUT the bug: `bad` is the older revision
    verify_revert: bool = False  # build the first bad commit with itself reverted, probe it 3x

    @property
    def ends(self) -> tuple[str, str]:
        """(older revision, newer revision): good..bad, or for a fix bisection bad..good."""
        return (self.bad, self.good) if self.fix else (self.good, self.bad)


@dataclass
class Commit:
    sha: str
    subject: str
    parents: tuple[str, ...] = ()
    inside: bool = True  # in the range (`bad ^good`); else the good end or a side branch's fork point

    @property
    def spec(self) -> str:
        return f"local:git-{self.sha[:12]}"

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.spec, label=self.sha[:12])


@dataclass
class CommitRange:
    """The commits a bisection may build: the good end, the range's commits parents first, and
    the fork points of side branches (parents outside the range, which the answer's check may
    need to build)."""

    good: str
    bad: str
    commits: list[Commit]

    def graph(self) -> CommitGraph:
        inside = [c for c in self.commits if c.inside]
        return CommitGraph(good=self.good, bad=self.bad, order=[c.sha for c in inside],
                           parents={c.sha: c.parents for c in inside},
                           candidates={c.sha: c.candidate for c in self.commits})

    def by_spec(self) -> dict[str, Commit]:
        return {c.spec: c for c in self.commits}

    def listed(self) -> list[Commit]:
        """The good end, then the range's commits: what result.json's `commits` lists."""
        return [c for c in self.commits if c.sha == self.good] + [c for c in self.commits if c.inside]


def commit_range(repo: Path, good: str, bad: str) -> CommitRange:
    """The range good..bad of `repo` as git bisect sees it (adapters.gitlog.commit_graph)."""
    from orchestrator.adapters.gitlog import commit_graph  # GitPython: a slow import

    try:
        lo, inside, outside = commit_graph(repo, good, bad)
    except KbisectError as exc:
        raise type(exc)(f"--repo {repo}: {exc}") from None
    commits = [Commit(c.sha, c.subject, c.parents, inside=False) for c in outside]
    commits += [Commit(c.sha, c.subject, c.parents) for c in inside]
    return CommitRange(good=lo, bad=inside[-1].sha if inside else lo, commits=commits)


def commits_between(repo: Path, good: str, bad: str) -> list[Commit]:
    """`good`, then every commit of good..bad parents first (`bad` last)."""
    return commit_range(repo, good, bad).listed()


def top_ranked(repo: Path, good: str, bad: str, bug: Bug) -> str | None:
    """The commit of good..bad the bug's keywords and paths rank first (adapters.gitlog), if any
    scores above nothing."""
    from orchestrator.adapters.gitlog import find_candidates

    ranked = find_candidates(repo, good, bad, bug.keywords, bug.paths, limit=1)
    return ranked[0].sha if ranked and ranked[0].score > 0 else None


def touching_paths(repo: Path, good: str, bad: str, paths: list[str]) -> set[str]:
    from orchestrator.adapters.gitlog import commits_touching  # GitPython: a slow import

    return commits_touching(repo, good, bad, paths)


@dataclass
class CommitBisectDeps:
    build: Callable[[BuildRequest], UnpackedKernel] = build_kernel
    probe: Callable[[str, Bug], ProbeRecord] = lambda spec, bug: run_probe(spec, bug, progress=True)
    kernel_id: Callable[[str], str] = field(default_factory=lambda: KernelProvider().kernel_id)
    store: Callable[[], Store] = Store
    # (repo, good, bad, bug) -> the commit the ranking puts first, or None (None: no guided start)
    top_ranked: Callable[[Path, str, str, Bug], str | None] | None = top_ranked
    # (repo, good, bad, paths) -> shas of good..bad touching the paths (None: no paths-first pass)
    touching: Callable[[Path, str, str, list[str]], set[str]] | None = field(default=touching_paths)


class CommitKernels:
    """Commit spec -> its kernel, built the first time anything asks (counted in `builds`)."""

    def __init__(self, req: CommitBisectRequest, bug: Bug, commits: CommitRange, deps: CommitBisectDeps,
                 on_event: Callable[[str], None]) -> None:
        self.req, self.bug, self.deps, self.on_event = req, bug, deps, on_event
        self.by_spec = commits.by_spec()
        self.built: set[str] = set()
        self.builds = 0

    def ensure(self, spec: str) -> None:
        commit = self.by_spec.get(spec)
        if commit is None or spec in self.built:
            return
        self.on_event(f"building {commit.sha[:12]} {commit.subject}")
        t0 = time.monotonic()
        self.built.add(spec)  # a failed build is not retried within the run: it is a skip
        self.builds += 1
        kernel = self.deps.build(BuildRequest(repo=self.req.repo, rev=commit.sha, config=self.req.config,
                                              bugs=self.bugs(), name=spec.split(":", 1)[1]))
        self.on_event(f"built {kernel.spec} in {time.monotonic() - t0:.0f} s")

    def bugs(self) -> list[Bug]:
        """Whose kconfig requirements every build meets: the same set each time, one build directory."""
        return [self.bug] + [b for b in self.req.kconfig_for if b.id != self.bug.id]

    def kernel_id(self, spec: str) -> str:
        self.ensure(spec)
        return self.deps.kernel_id(spec)

    def probe(self, spec: str) -> ProbeRecord:
        self.ensure(spec)
        return self.deps.probe(spec, self.bug)


# What to swap when the ends come reversed (ReversedRange), by req.fix.
ORDER_HINT = {
    False: "--good is the older end (where the bug is absent), --bad the newer; swap them",
    True: "with --fix, --bad is the older end (the bug still shows) and --good the newer (it is gone); swap them",
}


def run_commit_bisect(bug: Bug, req: CommitBisectRequest, deps: CommitBisectDeps | None = None, *,
                      on_event: Callable[[str], None] = lambda m: None,
                      on_probe: Callable[[Probe], None] | None = None) -> dict[str, Any]:
    """The bisection over commits: result.json's content, with the report written."""
    deps = deps or CommitBisectDeps()
    old_rev, new_rev = req.ends
    try:
        commits = commit_range(req.repo, old_rev, new_rev)
    except ReversedRange as exc:  # which option is the older end differs between the two modes
        raise ReversedRange(f"{exc}: {ORDER_HINT[req.fix]}") from None
    kernels = CommitKernels(req, bug, commits, deps, on_event)
    store = deps.store()
    run_key = store.open_run(f"bisect-commits{' --fix' if req.fix else ''} {bug.id} repo={req.repo} "
                             f"good={req.good} bad={req.bad}")
    prober = ResumingProbe(bug, kernels.probe, store=store, fresh=req.fresh, kernel_id=kernels.kernel_id,
                           run_key=run_key)
    guess = deps.top_ranked(req.repo, old_rev, new_rev, bug) if req.guided and deps.top_ranked else None
    touching = deps.touching(req.repo, old_rev, new_rev, bug.paths) if deps.touching and bug.paths else set()
    graph = commits.graph()
    engine = DagEngine(graph, prober, policy=bug.repeat, lineage=f"commits of {req.repo}",
                       verify=req.verify_runs, guesses=[c.sha for c in commits.commits if guess and c.inside
                                                        and c.sha.startswith(guess)],
                       priority=touching, fix=req.fix, on_probe=on_probe, on_event=on_event)
    if touching:
        inside = sum(1 for c in commits.commits if c.inside and c.sha in touching)
        on_event(f"paths first: {inside} of {len(graph.order)} commits of the range touch "
                 f"{', '.join(bug.paths)}")
    result = engine.run()
    data = result.to_json()
    data.update(origin="commit" if result.status is BisectStatus.FOUND else None, kind="commits",
                mode="fix" if req.fix else "cause",
                repo=str(req.repo), builds=kernels.builds, counts=dict(prober.counts),
                commits=[{"sha": c.sha, "subject": c.subject, "spec": c.spec, "parents": list(c.parents)}
                         for c in commits.listed()])
    by_label = {c.sha[:12]: c for c in commits.commits}
    for key in (("first_good", "last_bad") if req.fix else ("first_bad", "last_good")):
        commit = by_label.get(str(data.get(key) or ""))
        if commit is not None:
            data[f"{key}_commit"] = {"sha": commit.sha, "subject": commit.subject}
    if result.parents:
        data["parent_commits"] = [{"sha": by_label[c.label].sha, "subject": by_label[c.label].subject}
                                  for c in result.parents]
        data["merge"] = len(result.parents) > 1
    if req.verify_revert:
        first = data.get("first_bad_commit")
        if req.fix:
            data["revert_check"] = {"status": "not-run", "reason": "a fix bisection has no culprit to revert"}
        elif not first or result.status is not BisectStatus.FOUND:
            data["revert_check"] = {"status": "not-run", "reason": "no first bad commit was found"}
        else:
            data["revert_check"] = _revert_check(req, bug, first["sha"], kernels, prober, on_event, on_probe,
                                                 result.probes)
        data["probes"] = [p.to_json() for p in result.probes]  # the revert's runs are evidence too
    return finish(bug, data, result.probes, store, run_key, on_event)


def _revert_check(req: CommitBisectRequest, bug: Bug, sha: str, kernels: "CommitKernels", prober: ResumingProbe,
                  on_event: Callable[[str], None], on_probe: Callable[[Probe], None] | None,
                  probes: list[Probe]) -> dict[str, Any]:
    """KernelCI's revert check on the first bad commit, built-in code included: that commit built
    (incrementally, in the bisection's own build directory) with its own diff reverted, probed
    three times; bad→good confirms. A revert that does not apply, or a build that fails, is said
    plainly as not run: the bisection's answer stands without it."""
    from orchestrator.adapters.gitlog import revert_diff  # GitPython: a slow import

    try:
        revert = revert_diff(req.repo, sha)
    except KbisectError as exc:  # the answer stands without its check
        return {"status": "not-run", "sha": sha, "reason": str(exc)}
    patch = revert_patch(revert)
    name = f"git-{sha[:12]}-revert"
    on_event(f"revert check: building {sha[:12]} with itself reverted"
             + (" (a merge: against its first parent)" if revert.merge else ""))
    try:
        kernel = kernels.deps.build(BuildRequest(repo=req.repo, rev=sha, config=req.config, bugs=kernels.bugs(),
                                                 patches=[patch], name=name))
    except KbisectError as exc:
        return {"status": "not-run", "sha": sha, "reason": f"the reverted build failed: {exc}"}
    check = revert_verdicts(bug, prober, Candidate(f"local:{name}", label=f"{sha[:12]} reverted"),
                            lambda p: (probes.append(p), on_probe and on_probe(p)))
    on_event(f"revert check: {check['status']} ({', '.join(check['verdicts'])})")
    extra = {"merge": "reverted against its first parent (git revert -m 1): the whole merged branch undone"} \
        if revert.merge else {}
    return {"sha": sha, "kernel": kernel.spec, "patch": str(patch), **extra, **check}
