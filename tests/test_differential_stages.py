"""The differential's stage functions, each returning its outcome (no shared result), the
assembler that builds the answer from outcomes, and the typed kernel/lineage/origin values."""

from __future__ import annotations

import copy
import json

from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.diffresult import (
    Boundary,
    Carrier,
    Missing,
    Next,
    Origin,
    StageOutcome,
    Stop,
    Undecided,
    assemble,
)
from orchestrator.core.differential import (
    Differential,
    KernelIndex,
    Lineage,
    base_check,
    given_range,
    lineage_of_bad,
    make_kernel,
    run_stages,
    stable_behind_distro,
)
from orchestrator.core.engine import BisectResult, BisectStatus, Candidate, End
from orchestrator.core.probing import Probing
from orchestrator.core.upstream import mainline_walk, upstream_rcs
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import DebianKernel, KernelVersion, UbuntuVersion, parse_version
from tests.gretap_history import K, UNAVAILABLE, mainline_versions, verdict

V54 = parse_version("5.4")


def index() -> KernelIndex:
    return KernelIndex(make_kernel("mainline", v, v not in UNAVAILABLE, "failed build" if v in UNAVAILABLE else "")
                       for v in mainline_versions())


def ctx(table=verdict, idx: KernelIndex | None = None) -> Probing:
    return Probing(idx or index(), lambda cand: Verdict(table(cand.label)), RepeatPolicy(), verify=0)


def k(c: Probing, spec: str):
    return c.index.get(spec)


def names(out: StageOutcome) -> list[str]:
    return [s.name for s in out.stages]


def stable_only(label: str) -> str:
    return "bad" if label.startswith("5.4.") and int(label.split(".")[2]) >= 30 else "good"


def test_given_range_on_mainline_returns_a_mainline_origin() -> None:
    c = ctx()
    out = given_range(c, k(c, "5.5"), k(c, "5.8"), None)
    assert out.boundary == Boundary("mainline", f"5.7-rc{K - 1}", f"5.7-rc{K}")
    assert (out.origin, out.next, out.stop) == (Origin.MAINLINE, Next.DONE, None)
    assert names(out) == ["given range"] and [r.status for r in out.results] == [BisectStatus.FOUND]
    assert c.probes and all(p.kernel.startswith("mainline:") for p in c.probes)  # the context keeps the log


def test_given_range_with_a_good_mainline_bad_end_asks_for_the_lineage() -> None:
    c = ctx()
    out = given_range(c, k(c, "4.15"), k(c, "5.4"), None)
    assert out.next is Next.LINEAGE and out.boundary is None and out.origin is None
    assert [r.status for r in out.results] == [BisectStatus.ENDS_DISAGREE]
    assert out.notes[0].startswith("mainline 5.4 is good, so the bad 5.4 the user ran was not mainline 5.4")


def test_given_range_stops_when_the_good_end_is_bad() -> None:
    c = ctx()
    out = given_range(c, k(c, "5.8"), k(c, "5.10"), None)
    assert out.next is Next.DONE and out.stop is not None and "good end 5.8 is already bad" in out.stop.why


def test_base_check_judges_the_base_of_a_stable_bad_end() -> None:
    c = ctx()
    out = base_check(c, k(c, "4.15"), k(c, "5.4.60"))
    assert out.next is Next.LINEAGE and names(out) == ["base check"]
    assert out.stages[0].walk == [("5.4", "good")] and out.stages[0].walk[0].verdict is Verdict.GOOD
    assert "mainline 5.4 (the base of 5.4.60) is good" in out.notes[0]


def test_lineage_of_bad_returns_its_boundary_and_hands_over_to_upstream() -> None:
    c = ctx()
    out = lineage_of_bad(c, V54, None, None)
    assert out.boundary == Boundary("stable-5.4", "5.4.40", "5.4.41")
    assert (out.next, out.via) == (Next.UPSTREAM, Carrier.STABLE)
    assert names(out) == ["bad-end search", "lineage of the bad kernel"]
    assert isinstance(out.boundary.lineage, Lineage) and out.boundary.lineage.is_stable


def test_stable_behind_distro_says_which_line_carried_it() -> None:
    shows = stable_behind_distro(ctx(), V54)
    assert shows.via is Carrier.STABLE and (shows.stable.last_good, shows.stable.first_bad) == ("5.4.40", "5.4.41") and shows.next is Next.UPSTREAM
    clean = stable_behind_distro(ctx(lambda label: "good" if label.startswith("5.4.") else verdict(label)), V54)
    assert clean.via is Carrier.DISTRO and clean.stable is None
    assert any("the distro took the change itself" in n for n in clean.notes)
    unheard = lambda label: ("skip" if label.startswith("5.4.") and 41 <= int(label.split(".")[2]) < 138
                             else "good" if label.startswith("5.4.") else verdict(label))
    open_ = stable_behind_distro(ctx(unheard), V54)
    assert open_.via is None and open_.undecided and {u.why for u in open_.undecided} == {Missing.SKIP}


def test_mainline_walk_finds_the_first_bad_release_window() -> None:
    c = ctx()
    out = mainline_walk(c, V54, Carrier.STABLE)
    assert out.next is Next.RCS and out.via is Carrier.STABLE
    assert [x.label for x in out.window] == ["5.6", "5.7"]
    assert out.stages[0].walk == [("5.4", "good"), ("5.5", "good"), ("5.6", "good"), ("5.7", "bad")]
    assert out.origin is None and out.status is None


def test_mainline_walk_names_stable_only_only_when_every_release_was_probed_good() -> None:
    done = mainline_walk(ctx(stable_only), V54, Carrier.STABLE)
    assert (done.origin, done.next, done.undecided) == (Origin.STABLE_ONLY, Next.DONE, [])
    gap = mainline_walk(ctx(lambda label: "skip" if label == "5.9" else stable_only(label)), V54, Carrier.STABLE)
    assert (gap.origin, gap.status) == (None, BisectStatus.INCONCLUSIVE)
    assert [(u.kernel, u.why) for u in gap.undecided] == [("5.9", Missing.SKIP)]
    assert "5.9" in gap.origin_open and gap.notes[-1].startswith("origin undecided: ")
    undecided_carrier = mainline_walk(ctx(stable_only), V54, None)
    assert undecided_carrier.origin is None and "distro or stable-only" in undecided_carrier.origin_open


def test_upstream_rcs_bisects_the_window_and_names_a_backport() -> None:
    c = ctx()
    boundary = Boundary(Lineage("stable-5.4"), "5.4.40", "5.4.41")
    out = upstream_rcs(c, k(c, "5.6"), k(c, "5.7"), boundary, Carrier.STABLE)
    assert (out.origin, out.carrier) == (Origin.STABLE_BACKPORT, Carrier.STABLE)
    assert (out.upstream.last_good, out.upstream.first_bad) == (f"5.7-rc{K - 1}", f"5.7-rc{K}")
    assert out.notes[-1].endswith("stable-5.4 got it at 5.4.41: origin stable-backport via the stable line")


def test_stages_share_only_the_probing_context() -> None:
    # a later stage leaves an earlier stage's outcome as it was returned: no result is shared
    c = ctx()
    first = lineage_of_bad(c, V54, None, None)
    before = copy.deepcopy(first)
    mainline_walk(c, V54, Carrier.STABLE)
    stable_behind_distro(c, V54)
    assert first == before
    assert not {"res", "result", "status", "origin"} & set(vars(c))
    # the context does share verdicts: nothing is probed twice outside verification
    calls: list[str] = []
    shared = Probing(index(), lambda cand: calls.append(cand.label) or Verdict(verdict(cand.label)), verify=0)
    mainline_walk(shared, V54, Carrier.STABLE)
    mainline_walk(shared, V54, Carrier.STABLE)
    assert calls == ["5.4", "5.5", "5.6", "5.7"]


def test_run_stages_lists_the_outcomes_in_order_and_assemble_builds_the_answer() -> None:
    c = ctx()
    outcomes = run_stages(c, "4.15", "5.4")
    assert [o.next for o in outcomes] == [Next.LINEAGE, Next.UPSTREAM, Next.RCS, Next.DONE]
    assert [n for o in outcomes for n in names(o)] == [
        "given range", "bad-end search", "lineage of the bad kernel", "mainline walk", "upstream rc's"]
    res = assemble("gretap-ecn", outcomes, c.probes)
    same = Differential("gretap-ecn", index(), lambda cand: Verdict(verdict(cand.label)), verify=0).run("4.15", "5.4")
    assert res.to_json() == same.to_json()
    assert (res.status, res.origin, res.carrier) == (BisectStatus.FOUND, Origin.STABLE_BACKPORT, Carrier.STABLE)
    data = res.to_json()
    assert (data["status"], data["origin"], data["carrier"], data["lineage"]) == (
        "found", "stable-backport", "stable", "stable-5.4")
    assert all(type(data[f]) is str for f in ("status", "origin", "carrier", "lineage"))
    json.dumps(data)


def _result(status: BisectStatus, confidence: float = 1.0, **kw) -> BisectResult:
    return BisectResult(status, "mainline", None, None, [], confidence, f"engine: {status}", **kw)


def test_assemble_folds_hand_made_outcomes() -> None:
    a = StageOutcome(notes=["a"], results=[_result(BisectStatus.FOUND, 0.5)],
                     boundary=Boundary(Lineage("stable-5.4"), "5.4.40", "5.4.41"),
                     undecided=[Undecided("5.9", "mainline:5.9", Missing.SKIP)])
    b = StageOutcome(notes=["b"], results=[_result(BisectStatus.FOUND, 0.5)], origin=Origin.STABLE_BACKPORT,
                     carrier=Carrier.DISTRO, undecided=[Undecided("5.9", "mainline:5.9", Missing.NOT_WALKED)])
    res = assemble("x", [a, b], [])
    assert (res.status, res.first_bad, res.origin, res.carrier, res.confidence) == (
        BisectStatus.FOUND, "5.4.41", Origin.STABLE_BACKPORT, Carrier.DISTRO, 0.25)
    assert [(u.kernel, u.why) for u in res.undecided] == [("5.9", Missing.SKIP)]  # the first word on it stands
    assert res.notes[:2] == ["a", "b"] and res.notes[-1].startswith("undecided: 5.9 (skip)") and res.advice
    assert res.stopped.startswith("stable-5.4: 5.4.40 good, 5.4.41 bad; origin stable-backport")


def test_assemble_stops_at_a_disagreement_and_opens_it_when_kernels_were_untested() -> None:
    r = _result(BisectStatus.ENDS_DISAGREE, disagreeing_end=End.GOOD)
    settled = assemble("x", [StageOutcome(stop=Stop(r, "good end is bad"))], [])
    assert (settled.status, settled.stopped, settled.advice) == (BisectStatus.ENDS_DISAGREE, "good end is bad", "")
    untested = StageOutcome(stop=Stop(r, "good end is bad"), undecided=[Undecided("4.15", "mainline:4.15",
                                                                                  Missing.UNAVAILABLE)])
    opened = assemble("x", [untested], [])
    assert opened.status is BisectStatus.INCONCLUSIVE and opened.stopped.endswith("; untested: 4.15")
    assert opened.to_json()["status"] == "inconclusive" and opened.advice


def test_kernels_carry_typed_versions_and_lineages() -> None:
    main = make_kernel("mainline", "5.4.41")
    assert isinstance(main.version, KernelVersion) and main.lineage == "stable-5.4"
    assert isinstance(main.lineage, Lineage) and main.lineage.is_stable and main.lineage.source == "mainline"
    ubuntu = make_kernel("ubuntu", "5.4.0-26.30")
    assert isinstance(ubuntu.version, UbuntuVersion) and ubuntu.lineage == Lineage.distro("ubuntu", V54)
    deb = make_kernel("debian", "6.1.0-0.deb11.48-cloud-amd64")
    assert isinstance(deb.version, DebianKernel) and deb.lineage == "debian:6.1~deb11/cloud-amd64"
    assert deb.lineage.source == "debian" and not deb.lineage.is_mainline
    local = make_kernel("local", "my-build")
    assert local.version == "my-build" and local.lineage == "local" and local.lineage.source == "local"
    assert Lineage.mainline().is_mainline and json.dumps({"l": Lineage.stable(V54)}) == '{"l": "stable-5.4"}'
    assert main.candidate() == Candidate("mainline:5.4.41", "5.4.41")
