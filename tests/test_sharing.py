"""core.sharing: one guest per kernel, and the rules that keep sharing from deciding a verdict.

Fakes stand for the guests: a shared guest runs the bugs it is given in order and stops after the
first run the test marks as tainting; an alone guest answers from a table. Each test counts boots
and checks which record became the answer, and when `on_final` heard of it."""

from __future__ import annotations

import pytest

from orchestrator.core.bug import Bug
from orchestrator.core.classify import Judgement, Observation
from orchestrator.core.sharing import ALONE, ISOLATED, RECHECKED, SHARED, SharedRun, probe_batch, taint
from orchestrator.core.verdict import ProbeRecord, Verdict

G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP


def bug(name: str, isolate: bool = False) -> Bug:
    return Bug(id=name, dir=".", isolate=isolate)


class Guests:
    """`shared_says[bug]` = (verdict, taint) in a shared guest; `alone_says[bug]` = verdict alone."""

    def __init__(self, shared_says: dict[str, tuple[Verdict, str]] | None = None,
                 alone_says: dict[str, Verdict] | None = None, boot_fails: bool = False) -> None:
        self.shared_says = shared_says or {}
        self.alone_says = alone_says or {}
        self.boot_fails = boot_fails
        self.shared_groups: list[list[str]] = []
        self.alone_runs: list[str] = []

    def shared(self, group):
        self.shared_groups.append([b.id for b in group])
        if self.boot_fails:
            return [SharedRun(ProbeRecord("k", b.id, S, "boot failure: no console output")) for b in group]
        out = []
        for b in group:
            verdict, why = self.shared_says.get(b.id, (G, ""))
            out.append(SharedRun(ProbeRecord("k", b.id, verdict, f"shared {verdict.value}"), why))
            if why:
                break
        return out

    def alone(self, b):
        self.alone_runs.append(b.id)
        verdict = self.alone_says.get(b.id, G)
        return ProbeRecord("k", b.id, verdict, f"alone {verdict.value}")


def run(bugs, guests: Guests, **kw):
    heard: list[tuple[str, str, str]] = []
    batch = probe_batch(bugs, guests.shared, guests.alone,
                        on_final=lambda r: heard.append((r.bug, r.verdict.value, r.vm)), **kw)
    return batch, heard


CATALOG = [bug("a"), bug("b"), bug("iso", isolate=True), bug("c")]


def test_all_good_is_one_shared_boot_plus_the_isolated_one() -> None:
    guests = Guests()
    batch, heard = run(CATALOG, guests)
    assert guests.shared_groups == [["a", "b", "c"]] and guests.alone_runs == ["iso"]
    assert batch.boots == {SHARED: 1, ISOLATED: 1, ALONE: 0, RECHECKED: 0} and batch.total_boots == 2
    assert {k: (r.verdict, r.vm) for k, r in batch.records.items()} == {
        "a": (G, SHARED), "b": (G, SHARED), "c": (G, SHARED), "iso": (G, ISOLATED)}
    assert heard == [("a", "good", SHARED), ("b", "good", SHARED), ("c", "good", SHARED), ("iso", "good", ISOLATED)]


def test_a_shared_bad_is_rechecked_alone_and_the_alone_run_is_the_answer() -> None:
    """Cross-talk must never make a regression: bad in the shared guest, good alone -> good."""
    guests = Guests(shared_says={"b": (B, "")}, alone_says={"b": G})
    batch, heard = run(CATALOG, guests)
    assert guests.shared_groups == [["a", "b", "c"]]  # a plain bad exit does not spend the guest
    assert guests.alone_runs == ["iso", "b"]
    rec = batch.records["b"]
    assert (rec.verdict, rec.vm) == (G, RECHECKED) and rec.reason == "alone good"
    assert rec.note == "re-checked alone; in the shared VM: bad (shared bad)"
    assert ("b", "bad", SHARED) not in heard and heard[-1] == ("b", "good", RECHECKED)
    assert batch.boots[RECHECKED] == 1 and batch.total_boots == 3


def test_a_confirmed_bad_stays_bad() -> None:
    guests = Guests(shared_says={"a": (B, "")}, alone_says={"a": B})
    batch, _ = run(CATALOG, guests)
    assert (batch.records["a"].verdict, batch.records["a"].vm) == (B, RECHECKED)


def test_a_trace_spends_the_guest_the_rest_get_a_fresh_one_and_the_traced_run_is_rechecked() -> None:
    guests = Guests(shared_says={"a": (S, "kernel trace: WARNING: at foo")}, alone_says={"a": G})
    batch, _ = run(CATALOG, guests)
    assert guests.shared_groups == [["a", "b", "c"], ["b", "c"]]
    assert guests.alone_runs == ["iso", "a"]
    assert batch.records["a"].vm == RECHECKED and "guest not reused: kernel trace: WARNING: at foo" in batch.records["a"].note
    assert batch.boots == {SHARED: 2, ISOLATED: 1, ALONE: 0, RECHECKED: 1}


def test_a_boot_failure_is_one_boot_and_every_bug_skips() -> None:
    guests = Guests(boot_fails=True)
    batch, _ = run([bug("a"), bug("b")], guests)
    assert guests.shared_groups == [["a", "b"]] and guests.alone_runs == []
    assert all(r.verdict == S and r.reason.startswith("boot failure") for r in batch.records.values())
    assert batch.total_boots == 1


def test_a_guest_that_cannot_be_had_sends_the_rest_alone() -> None:
    guests = Guests()
    batch = probe_batch([bug("a"), bug("b")], lambda group: [], guests.alone)
    assert guests.alone_runs == ["a", "b"] and batch.boots[ALONE] == 2 and batch.boots[SHARED] == 1


def test_vm_per_cell_boots_every_bug_alone() -> None:
    guests = Guests()
    batch, _ = run(CATALOG, guests, share=False)
    assert guests.shared_groups == [] and guests.alone_runs == ["a", "b", "iso", "c"]
    assert batch.boots[ALONE] == 4 and all(r.vm == ALONE for r in batch.records.values())


def test_a_stopped_batch_starts_no_vm() -> None:
    guests = Guests()
    with pytest.raises(KeyboardInterrupt):
        run(CATALOG, guests, stopped=lambda: True)
    assert guests.shared_groups == [] and guests.alone_runs == []


def _obs(**kw) -> Observation:
    return Observation(**{"booted": True, "exit_code": 0, **kw})


J = Judgement(G, "ok", "")


@pytest.mark.parametrize("obs, want", [
    (_obs(), ""),
    (_obs(exit_code=1), ""),  # a bad exit is the reproducer's word, not trouble in the guest
    (_obs(exit_code=125), ""),
    (_obs(booted=False, exit_code=None), ""),  # a boot failure: the same answer for every bug
    (_obs(crashed=True), "the guest crashed"),
    (_obs(console_run="x\nKernel panic - not syncing: Fatal exception\n"), "the guest crashed"),
    (_obs(console_run="WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 foo\n"), "kernel trace: WARNING: CPU: 0 PID: 1"),
    (_obs(dmesg="kbisect: reproducer starts\nBUG: KASAN: use-after-free in bar\n"), "kernel trace: BUG: KASAN"),
    (_obs(console_lost="the console file shrank"), "console lost: the console file shrank"),
    (_obs(lost="upload failed: EOF", exit_code=None), "session lost: upload failed: EOF"),
    (_obs(timed_out=True, exit_code=None), "the reproducer timed out (its cleanup may not have run)"),
    (_obs(exit_code=124), "the reproducer timed out (its cleanup may not have run)"),
    (_obs(exit_code=None), "no exit status"),
])
def test_what_spends_a_shared_guest(obs, want) -> None:
    got = taint(obs, J)
    assert got.startswith(want) if want else got == ""


@pytest.mark.parametrize("cpus, mem, want", [(2, 24, 2), (1, 24, 1), (8, 4, 2), (2, 1, 1), (0, 0, 1)])
def test_default_jobs_one_per_core_as_memory_allows(cpus, mem, want) -> None:
    from orchestrator.app.batch import default_jobs

    assert default_jobs(cpus, mem) == want
