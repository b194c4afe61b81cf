"""The bisect use case: list the kernels, probe them through the resuming probe, run the pure
differential, and (with a Linux clone) narrow the boundary to commits and check the culprit.

The world comes in through `BisectDeps` (the listing, the real probe, the store, the variant
builder), so tests run whole bisections on fakes. Whether a failed probe skips its kernel or
stops the bisection is app.policy's (applied in app.prober), as in a sweep or a proof run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.adapters import config, report
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources import Mirrors
from orchestrator.adapters.store import Store
from orchestrator.adapters.variants import build_variant
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.prober import ResumingProbe
from orchestrator.app.run import run_probe
from orchestrator.core.bug import Bug
from orchestrator.core.differential import Differential, KernelIndex, canonical, kernel_of, make_kernel
from orchestrator.core.engine import Candidate, Probe, ProbeFn, judge
from orchestrator.core.errors import BuiltInCode, KbisectError
from orchestrator.core.kconfig import bug_config_diff, kconfig_defines, parse_kconfig
from orchestrator.core.verdict import ProbeRecord, Verdict
from orchestrator.core.versions import KernelRef, parse_spec, series_of_base

# (source, mirror, lo, hi, ubuntu series) -> listed entries (KernelEntry, or anything with a
# `version` and optionally `available` / `reason`; a bare version string will do)
Lister = Callable[[str, str | None, str | None, str | None, str | None], list[Any]]
RealProbe = Callable[[Bug, Mirrors], Callable[[str], ProbeRecord]]  # each source's mirror


def list_kernels(source: str, mirror: str | None, lo: str | None = None, hi: str | None = None,
                 series: str | None = None) -> list[Any]:
    """Ask the sources layer for a listing; one clear line when it cannot be had."""
    try:
        # imported here: a build may ship without a source's module (the ImportError below)
        from orchestrator.adapters.sources import get_source

        if source == "ubuntu" and series:
            from orchestrator.adapters.sources.ubuntu import UbuntuSource

            src = UbuntuSource(mirror, series=series)
        else:
            src = get_source(source, mirror=mirror)
    except ImportError:
        raise KbisectError(f"the {source} kernel source is not available in this build") from None
    return list(src.list(lo, hi))


def real_probe(bug: Bug, mirrors: Mirrors) -> Callable[[str], ProbeRecord]:
    """One real boot per call: fetch the kernel (any source, from that source's own mirror) and
    run the reproducer in a VM."""
    def probe(spec: str) -> ProbeRecord:
        return run_probe(spec, bug, mirror=mirrors)

    return probe


def kernel_config(spec: str) -> str | None:
    """The .config a probed kernel shipped (None: its package had none). Read from the cache only:
    a probed kernel is there, and comparing configs never downloads anything."""
    from orchestrator.adapters.sources import cached

    ref = parse_spec(spec)
    kernel = KernelProvider().get(spec) if ref.source == "local" else cached(ref)
    if kernel is None:
        raise KbisectError(f"{spec} is not in the kernel cache")
    path = kernel.config
    return path.read_text(errors="replace") if path is not None else None


def kernel_ids(mirrors: Mirrors) -> Callable[[str], str]:
    """The content id of a kernel spec, what stored verdicts follow (the kernel provider's)."""
    return KernelProvider(mirrors).kernel_id


def build_whole_variant(spec: str, patch: Path, name: str) -> UnpackedKernel:
    """`spec` rebuilt whole from its own Debian source with `patch` (app.controls): what reverts
    built-in code in a prebuilt Debian kernel."""
    from orchestrator.adapters import catalog
    from orchestrator.app.controls import ControlBuilder

    return ControlBuilder().whole_kernel(parse_spec(f"{spec}+{name}"), patch, catalog.all_bugs())


@dataclass
class BisectDeps:
    """What a bisection touches; the defaults are the real world, tests pass fakes."""

    list_kernels: Lister = field(default=list_kernels)
    real_probe: RealProbe = field(default=real_probe)
    kernel_ids: Callable[[Mirrors], Callable[[str], str]] = field(default=kernel_ids)  # mirrors -> (spec -> id)
    store: Callable[[], Store] = field(default=Store)
    build_variant: Callable[[str, Path, str], UnpackedKernel] = field(default=build_variant)
    kernel_config: Callable[[str], str | None] = field(default=kernel_config)
    build_whole: Callable[[str, Path, str], UnpackedKernel] = field(default=build_whole_variant)


@dataclass
class BisectRequest:
    """One `kbisect bisect` invocation, its input already checked."""

    good: str
    bad: str
    distro: str | None = None  # ubuntu:focal, debian:bookworm: the lineage to compare with mainline
    mirror: str | None = None  # mainline mirror
    distro_mirror: str | None = None  # the distro source's hosts
    replay: dict[str, list[Verdict]] = field(default_factory=dict)  # --verdicts: the user's word
    fresh: bool = False  # ignore stored verdicts
    verify_runs: int = 3  # re-runs of the boundary
    repo: Path | None = None  # a Linux clone for git narrowing
    verify_revert: bool = False  # build the first bad kernel with the top candidate reverted

    @property
    def mirrors(self) -> Mirrors:
        """Where each probed kernel is fetched from: mainline kernels from `mirror`, distro ones
        from `distro_mirror`, as the listings are read (one mirror for every spec once sent
        ubuntu: kernels to the mainline mirror)."""
        return Mirrors.of_options(self.mirror, self.distro_mirror)


# -- listings ---------------------------------------------------------------------------------

def ubuntu_series(distro: str | None, specs: list[KernelRef]) -> str | None:
    """The Ubuntu series to list: named by --distro (ubuntu:focal), or the one whose kernels
    carry the base of an ubuntu spec (5.4 -> focal)."""
    if distro and distro.split(":", 1)[0].strip().lower() == "ubuntu":
        series = distro.split(":", 1)[1].strip().lower()
        return series_of_base("ubuntu", series) or series  # "ubuntu:5.4" names focal by its base
    for spec in specs:
        if spec.source == "ubuntu":
            major, minor = spec.version.split(".")[:2]
            return series_of_base("ubuntu", f"{major}.{minor}")
    return None


def build_index(good: str, bad: str, distro: str | None, mirror: str | None,
                distro_mirror: str | None = None, lister: Lister = list_kernels,
                upstreams: dict[str, str] | None = None) -> KernelIndex:
    """All kernels the differential may need, listed lazily per source: the mainline listing
    (releases, rc's and the stable lines, all from the mainline mirror) from the oldest base
    named on, and the distro sources; a source is only asked when a lineage of it is needed.
    `upstreams`, when given, is filled with the upstream version each listed distro kernel is
    built from (spec -> "6.1.170", from its package version), for the handover to stable tags.
    Patched variants (`debian:6.1.0-54-cloud-amd64+revert-x`) are in no listing: they join the
    lineage of the kernel they were built from, right after it."""
    g, b = parse_spec(good), parse_spec(bad)
    bases = [k.base for k in (make_kernel(s.source, s.version) for s in (g, b)) if k.base is not None]
    lo = str(min(bases)) if bases else None
    series = ubuntu_series(distro, [g, b])

    def loader(source: str) -> Callable[[], list]:
        def load() -> list:
            entries = lister(source, mirror if source == "mainline" else distro_mirror,
                             lo if source == "mainline" else None, None, series if source == "ubuntu" else None)
            if upstreams is not None:
                upstreams.update({f"{source}:{e.version}": e.upstream for e in entries
                                  if getattr(e, "upstream", None)})
            return _kernels(source, entries)
        return load

    index = KernelIndex(loaders={s: loader(s) for s in ("mainline", "ubuntu", "debian", "local")})
    for spec in (g, b):
        if spec.variant:
            index.add([kernel_of(spec)])
    return index


def _kernels(source: str, entries: list[Any]) -> list:
    kernels = []
    for entry in entries:
        version = getattr(entry, "version", entry)
        try:
            kernels.append(make_kernel(source, str(version), bool(getattr(entry, "available", True)),
                                       str(getattr(entry, "reason", "") or "")))
        except KbisectError:
            continue  # odd names the listing kept (legacy side builds) are not candidates
    return kernels


# -- the bisection ----------------------------------------------------------------------------

def run_bisect(bug: Bug, req: BisectRequest, deps: BisectDeps | None = None, *,
               on_event: Callable[[str], None] = lambda m: None,
               on_probe: Callable[[Probe], None] | None = None) -> dict[str, Any]:
    """The whole bisection: result.json's content, with the report written (its path in
    `report`). `on_event` and `on_probe` see the progress. A failure app.policy calls an abort
    raises; the probes stored before it make a re-run resume."""
    deps = deps or BisectDeps()
    upstreams: dict[str, str] = {}
    index = build_index(req.good, req.bad, req.distro, req.mirror, req.distro_mirror, deps.list_kernels, upstreams)
    store = deps.store()
    # the run scope of stored skips: this command, resumed until a run of it finishes
    run_key = store.open_run(f"bisect {bug.id} good={req.good} bad={req.bad} distro={req.distro or '-'}")
    prober = ResumingProbe(bug, deps.real_probe(bug, req.mirrors), store=store, replay=req.replay, fresh=req.fresh,
                           canon=canonical, kernel_id=deps.kernel_ids(req.mirrors), run_key=run_key)
    diff = Differential(bug.id, index, prober, policy=bug.repeat, verify=req.verify_runs,
                        on_probe=on_probe, on_event=on_event)
    result = diff.run(req.good, req.bad, req.distro)
    data = result.to_json()
    data["counts"] = dict(prober.counts)
    data.update(boundary_upstream(data, result.probes, upstreams))
    data["config_diff"] = config_change(bug, data.get("last_good"), data.get("first_bad"), result.probes,
                                        deps.kernel_config, req.repo)
    if req.repo is not None:
        on_event(f"narrowing with git log over {req.repo}")
        data["candidates"] = narrow(str(req.repo), result, bug)
        data["notes"] = result.notes
        if req.verify_revert:
            check = RevertCheck(bug, prober, deps.build_variant, on_event, on_probe, deps.build_whole)
            data["revert_check"] = check.run(str(req.repo), result, data["candidates"])
    return finish(bug, data, result.probes, store, run_key, on_event)


def boundary_upstream(data: dict[str, Any], probes: list, upstreams: dict[str, str]) -> dict[str, Any]:
    """{"boundary_upstream": {"last_good": "6.1.170", "first_bad": "6.1.171"}} when both kernels of
    the boundary are distro builds whose listing named the upstream stable version they are
    built from (Debian's package version 6.1.170-1 is upstream 6.1.170); else nothing."""
    labels = {p.label: p.kernel for p in probes}
    keys = ("last_bad", "first_good") if data.get("mode") == "fix" else ("last_good", "first_bad")
    found = {key: upstreams.get(labels.get(str(data.get(key)), "")) for key in keys}
    if not all(found.values()):
        return {}
    return {"boundary_upstream": found}


def config_change(bug: Bug, old_label: str | None, new_label: str | None, probes: list,
                  read_config: Callable[[str], str | None], repo: Path | None = None) -> dict[str, Any] | None:
    """The .config difference across a boundary (last good to first bad; last bad to first good
    for a fix), the bug's options first (core.kconfig.bug_config_diff); None without a boundary.
    A kernel whose config cannot be read is said, never treated as "no difference"."""
    labels = {p.label: p.kernel for p in probes}
    good, bad = labels.get(str(old_label)), labels.get(str(new_label))
    if not good or not bad:
        return None
    texts = {}
    for spec in (good, bad):
        try:
            texts[spec] = read_config(spec)
        except KbisectError as exc:
            return {"from": good, "to": bad, "missing": f"{spec}: {exc}"}
        if texts[spec] is None:
            return {"from": good, "to": bad, "missing": f"{spec} ships no .config"}
    changes = bug_config_diff(parse_kconfig(texts[good]), parse_kconfig(texts[bad]),
                              [r.name for r in bug.kconfig], kconfig_under_paths(repo, bug.paths) if repo else {})
    return {"from": good, "to": bad, "total": len(changes),
            "bugs": sum(1 for c in changes if c.why), "changes": [c.to_json() for c in changes]}


def kconfig_under_paths(repo: Path, paths: list[str]) -> dict[str, str]:
    """option -> directory, for the options the Kconfig files beside the bug's paths define
    (in the clone's checkout: the same option names across the versions of a range)."""
    found: dict[str, str] = {}
    for directory in sorted({str(Path(p).parent) for p in paths}):
        kconfig = Path(repo) / directory / "Kconfig"
        try:
            text = kconfig.read_text(errors="replace")
        except OSError:
            continue
        for name in kconfig_defines(text):
            found.setdefault(name, directory + "/")
    return found


def finish(bug: Bug, data: dict[str, Any], probes: list, store: Store, run_key: str,
           on_event: Callable[[str], None]) -> dict[str, Any]:
    """Write a bisection's report (package or commit level), close its run in the store (its
    skips are not reused by the next run), and return result.json's content."""
    run_id = report.new_run_id(bug.id)
    out = report.write(data, run_id, report.probe_consoles(probes), unrelated=report.unrelated_traces(probes))
    on_event(f"report: {out / 'report.html'}")
    store.finish_run(run_key)
    store.close()
    return data


# -- git narrowing ----------------------------------------------------------------------------

def git_rev(label: str, lineage: str | None) -> str:
    """Tag names of a Linux clone: v5.7-rc4, v5.4.41; Ubuntu's Ubuntu-5.4.0-31.35."""
    if lineage and lineage.startswith("ubuntu:"):
        return f"Ubuntu-{label}"
    return f"v{label}"


def narrow(repo: str, result, bug: Bug) -> list[dict[str, Any]]:
    """Candidates for the result's ranges; the intersection first in a differential. A range the
    clone cannot resolve (no Ubuntu tags in a mainline clone, say) becomes a note, never a
    failure: the bisection's answer stands without it."""
    # imported here: GitPython is a slow import, needed only with --repo
    from orchestrator.adapters.gitlog import find_candidates, merge_differential

    ranges = result.git_ranges()
    lineage = result.lineage

    def search(key: str, rev_lineage: str | None) -> list:
        if key not in ranges:
            return []
        lo, hi = ranges[key]
        good, bad = git_rev(lo, rev_lineage), git_rev(hi, rev_lineage)
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


@dataclass
class RevertCheck:
    """KernelCI's revert check: the first-bad kernel with the top candidate reverted must be good.

    A candidate in modular code: the first-bad kernel with those modules rebuilt. Anything else
    (built-in code, headers): the whole first-bad kernel rebuilt from its own Debian source
    (app.controls), when that exact source can be had. Either needs a Debian first-bad kernel."""

    bug: Bug
    prober: ResumingProbe
    build_variant: Callable[[str, Path, str], UnpackedKernel]
    on_event: Callable[[str], None]
    on_probe: Callable[[Probe], None] | None = None
    build_whole: Callable[[str, Path, str], UnpackedKernel] | None = None

    def run(self, repo: str, result, candidates: list[dict[str, Any]]) -> dict[str, Any]:
        # imported here: GitPython is a slow import, needed only with --verify-revert
        from orchestrator.adapters.gitlog import revert_diff

        if not candidates or not result.first_bad:
            return {"status": "not-run", "reason": "no candidate or no first bad kernel"}
        sha = candidates[0].get("sha")
        first_bad_spec = next((p.kernel for p in result.probes if p.label == result.first_bad), None)
        if not first_bad_spec:
            return {"status": "not-run", "reason": "first bad kernel spec unknown"}
        try:
            revert = revert_diff(repo, sha)
        except KbisectError as exc:
            return {"status": "not-run", "sha": sha, "reason": str(exc)}
        sha, files = revert.sha, revert.files
        modular = bool(files) and all(f.endswith(".c") and f.startswith(("net/", "drivers/", "fs/")) for f in files)
        build = self.build_variant if modular else self.build_whole
        if build is None:
            return {"status": "not-run", "sha": sha,
                    "reason": "top candidate touches headers or built-in code, and no whole-kernel build is "
                              "available here"}
        patch = revert_patch(revert)
        name = f"revert-{sha[:12]}"
        try:
            try:
                self.on_event(f"building {first_bad_spec}+{name}" + ("" if modular else " (whole kernel: built-in code)"))
                variant = build(first_bad_spec, patch, name)
            except BuiltInCode as exc:  # a .c file the kernel links into vmlinux: the whole kernel then
                if self.build_whole is None or build is self.build_whole:
                    raise
                self.on_event(f"{exc}: building the whole kernel instead")
                variant = self.build_whole(first_bad_spec, patch, name)
        except KbisectError as exc:
            # an extra check after the answer: whatever stops the build (even trouble that would
            # abort a bisection) is reported as not run, never allowed to lose the answer itself
            return {"status": "not-run", "sha": sha, "reason": f"variant build failed: {exc}"}
        return {"sha": sha, "kernel": variant.spec,
                **revert_verdicts(self.bug, self.prober, Candidate(variant.ref), self.on_probe)}


def revert_patch(revert) -> Path:
    """The revert's patch, kept in the home under the commit's name (builds/reverts/): a build
    record names it, the next check of the same commit rewrites it, and nothing is left in /tmp."""
    patch = config.subdir("builds") / "reverts" / f"revert-{revert.sha[:12]}.patch"
    patch.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(patch, revert.diff)
    return patch


REVERT_RUNS = 3  # KernelCI's check: the culprit reverted, probed three times


def revert_verdicts(bug: Bug, prober: ProbeFn, cand: Candidate,
                    on_probe: Callable[[Probe], None] | None) -> dict[str, Any]:
    """The reverted kernel probed until REVERT_RUNS runs gave evidence: `confirmed` only when each
    of them is good. A skip (a boot that timed out on a loaded host, say) is no evidence either
    way, so it is run again, at most REVERT_RUNS more times; it never counts as good, and skips
    that use up those tries leave the culprit unconfirmed."""
    verdicts: list[Verdict] = []
    while sum(v is not Verdict.SKIP for v in verdicts) < REVERT_RUNS and len(verdicts) < 2 * REVERT_RUNS:
        verdicts.append(judge(bug.repeat, prober, cand, "revert", on_probe=on_probe).verdict)
    evidence = [v for v in verdicts if v is not Verdict.SKIP]
    confirmed = len(evidence) == REVERT_RUNS and all(v is Verdict.GOOD for v in evidence)
    return {"status": "confirmed" if confirmed else "not-confirmed", "verdicts": [v.value for v in verdicts]}
