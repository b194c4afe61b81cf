"""The fix bisection use case: the first kernel where the bug is gone, between an old kernel that
shows it (`--bad`) and a newer one that does not (`--good`).

What a user asks it for is a backport: "which Debian upload do I need", "which stable release
has the fix". So it runs in ONE lineage (the one both kernels belong to), with the same engine
as a cause bisection and its states swapped (core.engine, `fix=True`), the same resuming probe
and store, and the same report. The answer is `last_bad` and `first_good`; `origin` names the
line that carried the fix to the user's kernels (mainline, a stable line, or the distro). A
differential across lineages is not done: where the fix came *from* is in the fix commit's own
history, which `--repo` narrowing ranks for the range found.
"""

from __future__ import annotations

from typing import Any, Callable

from orchestrator.app.bisect import BisectDeps, BisectRequest, boundary_upstream, build_index, config_change, finish
from orchestrator.app.prober import ResumingProbe
from orchestrator.core.bug import Bug
from orchestrator.core.differential import canonical, carrier_of, resolve_kernel
from orchestrator.core.engine import BisectStatus, Engine, Probe
from orchestrator.core.errors import KbisectError


def fix_origin(lineage) -> str:
    """The line that carried the fix: mainline, or the stable or distro line (core.differential's
    carrier of a boundary in that lineage)."""
    return "mainline" if lineage.is_mainline else carrier_of(lineage).value


def run_fix_bisect(bug: Bug, req: BisectRequest, deps: BisectDeps | None = None, *,
                   on_event: Callable[[str], None] = lambda m: None,
                   on_probe: Callable[[Probe], None] | None = None) -> dict[str, Any]:
    """`req.bad` is the old kernel with the bug, `req.good` the newer one without it."""
    deps = deps or BisectDeps()
    upstreams: dict[str, str] = {}
    index = build_index(req.bad, req.good, None, req.mirror, req.distro_mirror, deps.list_kernels, upstreams)
    old, new = resolve_kernel(index, req.bad, "bad"), resolve_kernel(index, req.good, "good")
    if old.lineage != new.lineage:
        raise KbisectError(f"a fix bisection runs within one lineage: --bad {req.bad} is {old.lineage}, "
                           f"--good {req.good} is {new.lineage}")
    if not old.sort_key < new.sort_key:
        raise KbisectError(f"--good {req.good} (the fixed kernel) must be newer than --bad {req.bad}")
    kernels = index.between(old.lineage, old, new)
    store = deps.store()
    run_key = store.open_run(f"bisect-fix {bug.id} bad={req.bad} good={req.good}")
    prober = ResumingProbe(bug, deps.real_probe(bug, req.mirrors), store=store, replay=req.replay, fresh=req.fresh,
                           canon=canonical, kernel_id=deps.kernel_ids(req.mirrors), run_key=run_key)
    on_event(f"[fix] {old.lineage}: {kernels[0].label} .. {kernels[-1].label} ({len(kernels)} kernels)")
    engine = Engine([k.candidate() for k in kernels], prober, policy=bug.repeat, lineage=str(old.lineage),
                    verify=req.verify_runs, on_probe=on_probe, on_event=on_event, fix=True)
    result = engine.run()
    data = result.to_json()
    data.update(mode="fix", bug=bug.id, bad=req.bad, good=req.good, counts=dict(prober.counts),
                origin=fix_origin(old.lineage) if result.status is BisectStatus.FOUND else None)
    data.update(boundary_upstream(data, result.probes, upstreams))
    data["config_diff"] = config_change(bug, data.get("last_bad"), data.get("first_good"), result.probes,
                                        deps.kernel_config)
    if result.status is BisectStatus.FOUND:
        data["notes"].append(f"the fix reached {old.lineage} in {data['first_good']}: kernels from it on are "
                             f"fixed, {data['last_bad']} and older are not")
    return finish(bug, data, result.probes, store, run_key, on_event)
