"""Commit bisection (`kbisect bisect --repo PATH --good REV --bad REV --build`): every step is a
kernel built from that commit (incrementally: one worktree, one build directory, ccache) and
probed like any other kernel, down to a first bad commit that was itself built and tested.

The search is the core engine's, over the commits of good..bad on the ancestry path, oldest
first: the ends are confirmed, a commit that does not build or boot is a skip and the search moves
to its neighbour (as `git bisect skip` does), and the boundary is verified by re-running both
sides. Each commit's kernel is `local:git-<sha12>`, built on the first question about it (the
stored-verdict lookup asks for its content id first, so a commit built and probed by an earlier
run costs neither a build nor a boot).

Ranking-guided first steps: when the bug's keyword and path ranking (adapters.gitlog) puts one
commit of the range first, that commit and its parent are tried before binary search; a good
parent and a bad candidate are the answer in two builds (then verified like any boundary).
Otherwise the commits touching the bug's paths go first (`Search`). `fix=True` looks for the
first commit without the bug instead; `verify_revert` rebuilds the culprit with itself reverted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.adapters import config
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.store import Store
from orchestrator.app.bisect import finish, revert_verdicts
from orchestrator.app.build import BuildRequest, build_kernel
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.prober import ResumingProbe
from orchestrator.app.run import run_probe
from orchestrator.core.bug import Bug
from orchestrator.core.engine import BisectResult, BisectStatus, Candidate, Engine, Probe, judge, search_states
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import ProbeRecord, Verdict


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

    @property
    def spec(self) -> str:
        return f"local:git-{self.sha[:12]}"


def commits_between(repo: Path, good: str, bad: str) -> list[Commit]:
    """`good`, then every commit of good..bad on the ancestry path, oldest first (`bad` last)."""
    from orchestrator.adapters.gitlog import commits_between as listed  # GitPython: a slow import

    try:
        return [Commit(sha, subject) for sha, subject in listed(repo, good, bad)]
    except KbisectError as exc:
        raise KbisectError(f"--repo {repo}: {exc}") from None


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

    def __init__(self, req: CommitBisectRequest, bug: Bug, commits: list[Commit], deps: CommitBisectDeps,
                 on_event: Callable[[str], None]) -> None:
        self.req, self.bug, self.deps, self.on_event = req, bug, deps, on_event
        self.by_spec = {c.spec: c for c in commits}
        self.built: set[str] = set()
        self.builds = 0

    def ensure(self, spec: str) -> None:
        commit = self.by_spec.get(spec)
        if commit is None or spec in self.built:
            return
        self.on_event(f"building {commit.sha[:12]} {commit.subject}")
        t0 = time.monotonic()
        kernel = self.deps.build(BuildRequest(repo=self.req.repo, rev=commit.sha, config=self.req.config,
                                              bugs=self.bugs(), name=spec.split(":", 1)[1]))
        self.built.add(spec)
        self.builds += 1
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


def run_commit_bisect(bug: Bug, req: CommitBisectRequest, deps: CommitBisectDeps | None = None, *,
                      on_event: Callable[[str], None] = lambda m: None,
                      on_probe: Callable[[Probe], None] | None = None) -> dict[str, Any]:
    """The bisection over commits: result.json's content, with the report written."""
    deps = deps or CommitBisectDeps()
    old_rev, new_rev = req.ends
    commits = commits_between(req.repo, old_rev, new_rev)
    kernels = CommitKernels(req, bug, commits, deps, on_event)
    store = deps.store()
    run_key = store.open_run(f"bisect-commits{' --fix' if req.fix else ''} {bug.id} repo={req.repo} "
                             f"good={req.good} bad={req.bad}")
    prober = ResumingProbe(bug, kernels.probe, store=store, fresh=req.fresh, kernel_id=kernels.kernel_id,
                           run_key=run_key)
    search = Search(req, bug, commits, prober, on_event, on_probe)
    known = _guided(req, bug, commits, deps, prober, on_event, on_probe, search.probes) if req.guided else {}
    touching = deps.touching(req.repo, old_rev, new_rev, bug.paths) if deps.touching and bug.paths else set()
    result = search.run(known, touching)
    data = result.to_json()
    data.update(origin="commit" if result.status is BisectStatus.FOUND else None, kind="commits",
                mode="fix" if req.fix else "cause",
                repo=str(req.repo), builds=kernels.builds, counts=dict(prober.counts),
                commits=[{"sha": c.sha, "subject": c.subject, "spec": c.spec} for c in commits])
    by_label = {c.sha[:12]: c for c in commits}
    for key in (("first_good", "last_bad") if req.fix else ("first_bad", "last_good")):
        commit = by_label.get(str(data.get(key) or ""))
        if commit is not None:
            data[f"{key}_commit"] = {"sha": commit.sha, "subject": commit.subject}
    if req.verify_revert:
        first = data.get("first_bad_commit")
        data["revert_check"] = (_revert_check(req, bug, first["sha"], kernels, prober, on_event, on_probe, result.probes)
                                if first and result.status is BisectStatus.FOUND and not req.fix else
                                {"status": "not-run", "reason": "no first bad commit was found"
                                 if not req.fix else "a fix bisection has no culprit to revert"})
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

    sha, diff, _files = revert_diff(req.repo, sha)
    patch = config.subdir("builds") / "reverts" / f"revert-{sha[:12]}.patch"
    patch.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(patch, diff)
    name = f"git-{sha[:12]}-revert"
    on_event(f"revert check: building {sha[:12]} with itself reverted")
    try:
        kernel = kernels.deps.build(BuildRequest(repo=req.repo, rev=sha, config=req.config, bugs=kernels.bugs(),
                                                 patches=[patch], name=name))
    except KbisectError as exc:
        return {"status": "not-run", "sha": sha, "reason": f"the reverted build failed: {exc}"}
    check = revert_verdicts(bug, prober, Candidate(f"local:{name}", label=f"{sha[:12]} reverted"),
                            lambda p: (probes.append(p), on_probe and on_probe(p)))
    on_event(f"revert check: {check['status']} ({', '.join(check['verdicts'])})")
    return {"sha": sha, "kernel": kernel.spec, "patch": str(patch), **check}


class Search:
    """The engine over a commit range, in the cheapest order the evidence allows.

    1. The ranking's guess proven (its parent in the old state, it in the new): that pair alone,
       verified. 2. Paths first (ktest's BISECT_FILES, `git bisect -- PATHS`): when some commits
       of the range touch the bug's paths, bisect those first; the boundary found there is then
       closed over the full history (the commits between the last old-state path commit and the
       first new-state one, usually none) so the answer is still a tested pair of neighbours.
       3. Otherwise, or when the paths held no boundary, the whole range. Verdicts already had
       are passed on as known each time, so nothing is built or probed twice."""

    def __init__(self, req: CommitBisectRequest, bug: Bug, commits: list[Commit], prober: ResumingProbe,
                 on_event: Callable[[str], None], on_probe: Callable[[Probe], None] | None) -> None:
        self.req, self.bug, self.prober, self.on_event, self.on_probe = req, bug, prober, on_event, on_probe
        self.candidates = [Candidate(c.spec, label=c.sha[:12]) for c in commits]
        self.shas = [c.sha for c in commits]
        self.old, self.new = search_states(req.fix)
        self.probes: list[Probe] = []  # every probe outside the final engine run (guesses, paths pass)
        self.notes: list[str] = []

    def engine(self, candidates: list[Candidate], known: dict[str, Verdict], verify: int | None = None) -> Engine:
        return Engine(candidates, self.prober, policy=self.bug.repeat, lineage=f"commits of {self.req.repo}",
                      verify=self.req.verify_runs if verify is None else verify, on_probe=self.on_probe,
                      on_event=self.on_event, known=known, fix=self.req.fix)

    def run(self, known: dict[str, Verdict], touching: set[str]) -> BisectResult:
        pair = _proven_pair(self.candidates, known, self.old, self.new)
        if pair:
            self.on_event(f"ranking-guided: {pair[0].label} {self.old.value}, {pair[1].label} {self.new.value}; "
                          "verifying")
            self.notes.append(f"ranking-guided: the top-ranked commit {pair[1].label} and its parent were probed "
                              "first and showed the boundary; the range's own ends were not built")
            return self._final(self.engine(pair, known).run())
        inner = [i for i in range(1, len(self.candidates) - 1) if self.shas[i] in touching]
        if not inner or len(inner) == len(self.candidates) - 2:
            return self._final(self.engine(self.candidates, known).run())
        return self._paths_first([0, *inner, len(self.candidates) - 1], known)

    def _paths_first(self, picked: list[int], known: dict[str, Verdict]) -> BisectResult:
        self.on_event(f"paths first: {len(picked) - 2} of {len(self.candidates) - 2} commits inside the range "
                      f"touch {', '.join(self.bug.paths)}")
        first = self.engine([self.candidates[i] for i in picked], known, verify=0)
        r = first.run()
        known.update(first.verdicts)
        self.probes.extend(r.probes)
        if r.status is not BisectStatus.FOUND or r.last_good is None or r.first_bad is None:
            self.notes.append(f"paths first found no boundary ({r.stopped}); the whole range was bisected")
            return self._final(self.engine(self.candidates, known).run())
        lo = self.candidates.index(r.last_good)
        hi = self.candidates.index(r.first_bad)
        note = (f"paths first: among the commits touching the bug's paths the boundary is "
                f"{r.last_good.label}..{r.first_bad.label}")
        if hi - lo > 1:
            # `git bisect -- PATHS` would stop here; kbisect tests the commit's own parent: in the
            # old state, the pair is neighbours; in the new, the culprit is an earlier commit that
            # does not touch the paths, and the rest of the range is bisected
            parent = self.candidates[hi - 1]
            probe = judge(self.bug.repeat, self.prober, parent, "bisect", on_probe=self.on_probe)
            self.probes.append(probe)
            known[parent.spec] = probe.verdict
            if probe.verdict is self.old:
                lo = hi - 1
                note += f"; its parent {parent.label} is {self.old.value}: they are neighbours"
            else:
                note += (f"; its parent {parent.label} is {probe.verdict.value}: the commits between were "
                         "bisected too")
        self.notes.append(note)
        return self._final(self.engine(self.candidates[lo:hi + 1], known).run())

    def _final(self, result: BisectResult) -> BisectResult:
        result.probes[:0] = self.probes  # the guesses and the paths pass are part of the evidence
        result.notes.extend(self.notes)
        return result


def _proven_pair(candidates: list[Candidate], known: dict[str, Verdict], old: Verdict = Verdict.GOOD,
                 new: Verdict = Verdict.BAD) -> list[Candidate] | None:
    """[parent, commit] when the guided probes found the parent in the old state (good; bad for
    a fix) and the commit in the new one."""
    for parent, child in zip(candidates, candidates[1:]):
        if known.get(parent.spec) is old and known.get(child.spec) is new:
            return [parent, child]
    return None


def _guided(req: CommitBisectRequest, bug: Bug, commits: list[Commit], deps: CommitBisectDeps,
            prober: ResumingProbe, on_event: Callable[[str], None],
            on_probe: Callable[[Probe], None] | None, guesses: list[Probe]) -> dict[str, Verdict]:
    """The top-ranked commit and its parent, probed before binary search; their verdicts are
    handed to the engine as known, so a good parent and a bad candidate end the search at once
    (the engine still confirms the ends and verifies that boundary)."""
    if deps.top_ranked is None:
        return {}
    top = deps.top_ranked(req.repo, *req.ends, bug)
    index = next((i for i, c in enumerate(commits) if top and c.sha.startswith(top)), None)
    if index is None or index == 0:
        return {}
    on_event(f"ranking first: {commits[index].sha[:12]} {commits[index].subject}, and its parent")
    known = {}
    for commit in (commits[index], commits[index - 1]):
        probe = judge(bug.repeat, prober, Candidate(commit.spec, label=commit.sha[:12]), "bisect", on_probe=on_probe)
        guesses.append(probe)
        if probe.verdict in (Verdict.GOOD, Verdict.BAD):
            known[commit.spec] = probe.verdict
    return known
