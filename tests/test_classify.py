"""Bug signatures, unrelated traces, the dmesg scan and a console that cannot silently lose text
(issue 11, items 4 and 5): every rule of core.classify, the repeat rule, the record's JSON, the
rotating console reader against files laid out as virtlogd rolls them over, and the probe
session wired to both. Quick tier: no VM.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.adapters import report
from orchestrator.adapters.guest import session, ssh
from orchestrator.adapters.guest.console import RotatingConsole, VMConsole
from orchestrator.adapters.guest.probe import _record, aggregate
from orchestrator.core.bug import Bug, TracePolicy
from orchestrator.core.classify import (RUN_MARKER, Observation, classify, dmesg_run_part, find_traces,
                                        run_traces)
from orchestrator.core.verdict import ProbeRecord, Verdict

# Shaped like real 6.1 reports (lib/bug.c __warn, arch/x86 die, kernel/panic.c).
WARN_RUN = """\
[   41.100000] ------------[ cut here ]------------
[   41.100001] WARNING: CPU: 0 PID: 312 at net/core/dev.c:3210 skb_warn_bad_offload+0x70/0xe0
[   41.100002] Modules linked in: veth ip_gre
[   41.100003] RIP: 0010:skb_warn_bad_offload+0x70/0xe0
[   41.100004] Call Trace:
[   41.100005]  <TASK>
[   41.100006]  __skb_gso_segment+0x11c/0x160
[   41.100007]  validate_xmit_skb+0x15a/0x2f0
[   41.100008]  </TASK>
[   41.100009] ---[ end trace 0000000000000000 ]---
"""
OOPS_RUN = """\
[   52.000000] BUG: unable to handle page fault for address: ffff9c7e3fff1002
[   52.000001] #PF: supervisor read access in kernel mode
[   52.000002] Oops: 0000 [#1] SMP PTI
[   52.000003] RIP: 0010:skb_gso_transport_seglen+0x44/0xa0
[   52.000004] Call Trace:
[   52.000005]  skb_gso_validate_network_len+0x12/0x60
[   52.000006]  ip_finish_output_gso+0x5b/0x180
[   52.000007]  veth_poll+0x1c9/0x2b0
[   52.000008] ---[ end trace 0000000000000001 ]---
[   52.000009] Kernel panic - not syncing: Fatal exception in interrupt
"""
GRO = r"\bskb_gso_transport_seglen\b"  # gro-inner-th's signature


def _bug(signatures=(), unrelated=TracePolicy.SKIP, bad_needed=1, runs=1) -> Bug:
    from orchestrator.core.bug import RepeatPolicy

    return Bug(id="b", dir=Path("/nonexistent"), timeout=60, signatures=list(signatures), unrelated_traces=unrelated,
               repeat=RepeatPolicy(runs=runs, bad_needed=bad_needed, flaky=runs > 1))


def _ran(**over) -> Observation:
    return Observation(**{"booted": True, "exit_code": 0, "stdout": "all good\n", **over})


# -- rule 2: the bug's own signature --------------------------------------------------------------

def test_trace_matching_a_signature_is_bad_and_names_it():
    j = classify(_ran(console_run="noise\n" + OOPS_RUN), _bug([r"veth_xmit", GRO]))
    assert j.verdict is Verdict.BAD and j.signature == GRO
    assert j.reason == "kernel panic: Kernel panic - not syncing: Fatal exception in interrupt"
    assert "RIP: 0010:skb_gso_transport_seglen" in j.excerpt
    assert j.unrelated_trace == ""  # the only trace was the bug's


def test_warning_matching_a_signature_is_bad_over_exit_0():
    j = classify(_ran(console_run=WARN_RUN), _bug([r"skb_warn_bad_offload"]))
    assert (j.verdict, j.signature) == (Verdict.BAD, "skb_warn_bad_offload")
    assert j.reason == "kernel trace: WARNING: CPU: 0 PID: 312 at net/core/dev.c:3210 skb_warn_bad_offload+0x70/0xe0"


def test_signature_is_searched_per_line_with_anchors():
    """`^` and `$` anchor on each line of the trace (re.MULTILINE), as a signature author expects."""
    assert classify(_ran(console_run=OOPS_RUN), _bug([r"^\S+ +\S+ RIP: 0010:skb_gso_transport_seglen"])).signature
    assert classify(_ran(console_run=OOPS_RUN), _bug([r"^RIP"])).verdict is Verdict.SKIP


# -- rule 5: unrelated traces --------------------------------------------------------------------

@pytest.mark.parametrize("code", [0, 1])
def test_unrelated_trace_is_skip_with_the_excerpt_kept(code):
    """Neither the exit code nor "any trace" decides: the kernel was unwell for another reason."""
    j = classify(_ran(exit_code=code, console_run=WARN_RUN), _bug([GRO]))
    assert j.verdict is Verdict.SKIP
    assert j.reason == ("unrelated kernel trace: WARNING: CPU: 0 PID: 312 at net/core/dev.c:3210 "
                        "skb_warn_bad_offload+0x70/0xe0")
    assert "validate_xmit_skb" in j.unrelated_trace and "cut here" in j.unrelated_trace
    assert j.signature == ""


def test_bug_without_signatures_counts_no_trace_as_its_own():
    j = classify(_ran(exit_code=0, console_run=OOPS_RUN), _bug())
    assert j.verdict is Verdict.SKIP and j.reason.startswith("unrelated kernel trace: BUG: unable to handle page fault")
    assert "Oops: 0000" in j.unrelated_trace


def test_crash_without_any_text_is_an_unrelated_panic():
    j = classify(_ran(exit_code=None, crashed=True, console_run="last words\n"), _bug([GRO]))
    assert j.verdict is Verdict.SKIP and j.reason == "unrelated kernel trace: guest crashed"
    assert "last words" in j.unrelated_trace


def test_unrelated_trace_is_kept_beside_a_matching_one():
    j = classify(_ran(console_run=WARN_RUN + OOPS_RUN), _bug([GRO]))
    assert j.verdict is Verdict.BAD and j.signature == GRO
    assert "skb_warn_bad_offload" in j.unrelated_trace and "skb_gso_transport_seglen" not in j.unrelated_trace


# -- rule 3: unrelated_traces: bad ------------------------------------------------------------------

def test_unrelated_traces_bad_counts_any_trace_without_a_signature():
    j = classify(_ran(console_run=WARN_RUN), _bug([GRO], unrelated=TracePolicy.BAD))
    assert j.verdict is Verdict.BAD and j.reason.startswith("kernel trace: WARNING: CPU: 0 PID: 312")
    assert j.signature == "" and "skb_warn_bad_offload" in j.unrelated_trace
    j = classify(_ran(exit_code=None, crashed=True), _bug(unrelated="bad"))  # a plain string works too
    assert j.verdict is Verdict.BAD and j.reason == "kernel panic: guest crashed"


def test_boot_noise_is_never_the_runs():
    assert classify(_ran(console_boot=WARN_RUN + OOPS_RUN), _bug(unrelated=TracePolicy.BAD)).verdict is Verdict.GOOD


# -- rule 4: console lost ---------------------------------------------------------------------------

def test_console_lost_is_skip_even_with_exit_0():
    j = classify(_ran(console_lost="console.log shrank from 900 to 10 bytes"), _bug([GRO]))
    assert (j.verdict, j.reason) == (Verdict.SKIP, "console lost: console.log shrank from 900 to 10 bytes")
    # Positive evidence that survived still counts: a matching trace is bad, lost text or not.
    j = classify(_ran(console_lost="x", console_run=OOPS_RUN), _bug([GRO]))
    assert j.verdict is Verdict.BAD and j.signature == GRO


# -- the dmesg saved after the run ---------------------------------------------------------------

def _dmesg(before: str, after: str) -> str:
    return before + f"[   40.000000] {RUN_MARKER}\n" + after


def test_trace_only_in_dmesg_counts():
    """The console missed it (a low console log level, a lost part): dmesg has it."""
    obs = _ran(console_run="", dmesg=_dmesg("[ 1.0] boot\n", WARN_RUN))
    assert classify(obs, _bug(["skb_warn_bad_offload"])).verdict is Verdict.BAD
    j = classify(obs, _bug([GRO]))
    assert j.verdict is Verdict.SKIP and j.reason.startswith("unrelated kernel trace: WARNING: CPU: 0 PID: 312")
    assert "validate_xmit_skb" in j.unrelated_trace


def test_dmesg_before_the_marker_is_boot_noise():
    obs = _ran(dmesg=_dmesg(WARN_RUN, "[ 41.0] reproducer noise\n"))
    assert classify(obs, _bug(unrelated=TracePolicy.BAD)).verdict is Verdict.GOOD
    assert dmesg_run_part(_dmesg("a\n", "b\nc\n")) == "b\nc\n"
    # no marker: the ring buffer rolled over past it, so what is left came after it
    assert dmesg_run_part(WARN_RUN) == WARN_RUN


def test_a_trace_on_console_and_in_dmesg_is_one_trace():
    obs = _ran(console_run=WARN_RUN, dmesg=_dmesg("", WARN_RUN + OOPS_RUN.replace("Kernel panic", "no panic")))
    traces = run_traces(obs)
    assert [(t.source, t.headline[:12]) for t in traces] == [("console", "WARNING: CPU"), ("dmesg", "BUG: unable ")]


def test_find_traces_keeps_one_report_together():
    """The Oops line inside a BUG report and the panic that ends it are one trace, not three."""
    traces = find_traces(OOPS_RUN)
    assert [t.headline for t in traces] == ["BUG: unable to handle page fault for address: ffff9c7e3fff1002"]
    assert "veth_poll" in traces[0].excerpt and traces[0].excerpt.endswith("Fatal exception in interrupt")
    # a panic that follows no trace (sysrq-c) is a trace of its own, and so is a later, separate one
    sysrq = "[ 9.0] sysrq: Trigger a crash\n[ 9.1] Kernel panic - not syncing: sysrq triggered crash\n"
    assert [t.headline for t in find_traces(sysrq)] == ["Kernel panic - not syncing: sysrq triggered crash"]
    later = WARN_RUN + "".join(f"[ 50.{i}] other line\n" for i in range(10)) + OOPS_RUN
    assert len(find_traces(later)) == 2


# -- repeats: a run with the bug's signature decides alone ------------------------------------------

def _rec(verdict: Verdict, signature: str = "") -> ProbeRecord:
    return ProbeRecord(kernel="k", bug="b", verdict=verdict, reason="r", signature=signature)


def test_panic_matching_the_signature_is_bad_even_with_bad_needed_3():
    bug = _bug([GRO], bad_needed=3, runs=3)
    obs = _ran(exit_code=None, crashed=True, lost="guest crashed", console_run=OOPS_RUN)
    j = classify(obs, bug)
    rec = _record(_FakeKernel(), bug, 0.0, obs, j)
    assert rec.decisive and rec.signature == GRO and rec.reason.startswith("kernel panic:")
    assert aggregate([rec, _rec(Verdict.GOOD), _rec(Verdict.GOOD)], bug.repeat.bad_needed) is Verdict.BAD
    # ordinary bad exits still need bad_needed of them
    assert aggregate([_rec(Verdict.BAD), _rec(Verdict.GOOD), _rec(Verdict.BAD)], 3) is Verdict.GOOD
    assert aggregate([_rec(Verdict.BAD)] * 3, 3) is Verdict.BAD


class _FakeKernel:
    spec = "debian:6.1.0-54-cloud-amd64"


# -- the record ---------------------------------------------------------------------------------------

def test_record_json_round_trips_the_new_fields_and_old_records_load():
    rec = ProbeRecord(kernel="k", bug="b", verdict=Verdict.BAD, reason="kernel trace: X", phases={"run": 1.0},
                      console_excerpt="c", signature=GRO, unrelated_trace="WARNING: CPU: 0 y")
    data = json.loads(json.dumps(rec.to_json()))
    assert data["signature"] == GRO and data["unrelated_trace"] == "WARNING: CPU: 0 y"
    back = ProbeRecord.from_json(data)
    assert back == rec and back.decisive
    old = {k: v for k, v in data.items() if k not in ("signature", "unrelated_trace")}
    loaded = ProbeRecord.from_json(old)
    assert loaded.signature == "" and loaded.unrelated_trace == "" and not loaded.decisive


# -- the rotating console ------------------------------------------------------------------------------

def _rollover(log: Path, backups: int = 3) -> None:
    """What virtlogd does at max_size (virRotatingFileWriterRollover): .1 -> .2, .0 -> .1,
    console.log -> console.log.0 (the oldest beyond `backups` is overwritten), a new console.log."""
    for i in range(backups - 1, 0, -1):
        older = log.with_name(f"{log.name}.{i - 1}")
        if older.exists():
            os.replace(older, log.with_name(f"{log.name}.{i}"))
    os.replace(log, log.with_name(f"{log.name}.0"))
    log.write_bytes(b"")


def _append(log: Path, text: str) -> None:
    with open(log, "ab") as fh:
        fh.write(text.encode())


def test_rotated_console_is_read_whole_in_order(tmp_path):
    log = tmp_path / "console.log"
    con = RotatingConsole(log)
    assert con.size() == 0 and con.text() == ""  # no file yet (the domain has not started)
    _append(log, "boot 1\n")
    assert con.size() == 7
    run_at = con.size()
    _append(log, "run A\n")
    _rollover(log)
    _append(log, "run B\n" + WARN_RUN)
    assert con.text(run_at) == "run A\nrun B\n" + WARN_RUN
    _rollover(log)
    _rollover(log)  # two rollovers between reads: both parts are still among the backups
    _append(log, "run C\n")
    assert con.text() == "boot 1\nrun A\nrun B\n" + WARN_RUN + "run C\n"
    assert con.lost_after(run_at) == ""


def test_rotated_before_the_first_read_is_read_from_the_oldest_part(tmp_path):
    log = tmp_path / "console.log"
    _append(log, "one\n")
    _rollover(log)
    _append(log, "two\n")
    _rollover(log)
    _append(log, "three\n")
    assert RotatingConsole(log).text() == "one\ntwo\nthree\n"


def test_shrunk_console_is_lost(tmp_path):
    log = tmp_path / "console.log"
    con = RotatingConsole(log)
    _append(log, "boot\n")
    run_at = con.size()
    _append(log, "run start\n" + WARN_RUN)
    con.size()
    log.write_bytes(b"new\n")  # truncated in place: same inode, smaller
    assert con.lost_after(run_at).startswith("console.log shrank from ")
    assert con.text().endswith("new\n")  # read on from the truncated file's start


def test_rolled_past_the_backups_is_lost(tmp_path):
    log = tmp_path / "console.log"
    con = RotatingConsole(log)
    _append(log, "boot\n")
    run_at = con.size()
    for n in range(4):  # four rollovers with 3 backups: the part read last is gone
        _append(log, f"part {n}\n")
        _rollover(log)
    _append(log, "last\n")
    # (how the loss is worded depends on whether the filesystem reused the lost part's inode)
    assert con.lost_after(run_at).startswith("console.log ")
    assert con.lost_after(run_at + 10_000) == ""  # the gap is where it is, not after later text
    assert con.text() == "boot\npart 1\npart 2\npart 3\nlast\n"  # part 0 went with the oldest backup


def test_loss_during_boot_does_not_touch_the_run(tmp_path):
    log = tmp_path / "console.log"
    con = RotatingConsole(log)
    _append(log, "boot\n")
    con.size()
    log.write_bytes(b"again\n")  # rewritten in place, and longer than before: still noticed
    run_at = con.size()  # the loss was noticed before the run began
    _append(log, "run\n")
    assert con.lost_after(run_at) == ""
    assert con.lost_after(0) == "console.log was rewritten (it no longer holds the 5 bytes read)"
    assert con.text() == "boot\nagain\nrun\n"


def test_vm_console_notices_a_shrink():
    class Dom:
        text = "boot\nrun\n"

        def console(self, offset=0):
            return self.text[offset:]

        def console_size(self):
            return len(self.text)

    dom = Dom()
    con = VMConsole(dom)
    run_at = con.size()
    dom.text = "x"
    assert con.lost_after(run_at).startswith("the console shrank")


# -- the session: console file, dmesg, silent-console margin ----------------------------------------

class FileVM:
    """A domain whose console is a real file at `console_log`, as vm.VM's is."""

    def __init__(self, directory: Path) -> None:
        self.name, self.port = "kbisect-fake-1", 40022
        self.console_log = directory / "console.log"
        self.st = "running"
        self.destroyed: list[bool] = []

    def start(self) -> None:
        _append(self.console_log, "[    0.000000] Linux version 6.1.0\n")

    def state(self) -> str:
        return self.st

    def destroy(self, background: bool = False) -> None:
        self.destroyed.append(background)


class Guest:
    """An SSH session whose run writes to the console file (as the kernel would) and whose
    collect returns the given dmesg."""

    def __init__(self, vm: FileVM, during_run, dmesg: str = "") -> None:
        self.vm, self.during_run, self.dmesg = vm, during_run, dmesg

    def upload_dir(self, local: Path, remote: str) -> int:
        return 1

    def mkdirs(self, path: str) -> None:
        pass

    def run(self, command, timeout, on_output=None, should_abort=None) -> ssh.RunResult:
        self.command = command
        self.during_run(self.vm.console_log)
        return ssh.RunResult(exit_code=0, stdout="all good\n", stderr="", timed_out=False, aborted=None, seconds=0.1)

    def fetch_dir(self, remote: str, local: Path) -> list[Path]:
        return []

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(self.dmesg)

    def close(self) -> None:
        pass


def _session_obs(tmp_path: Path, during_run, dmesg: str = "") -> Observation:
    vm = FileVM(tmp_path)
    machine = session.Machine(vm=vm, accel="tcg", connect=lambda port, deadline, blocker: guest)  # type: ignore[arg-type]
    guest = Guest(vm, during_run, dmesg)
    s = session.ProbeSession(_bug(), lambda: machine, tmp_path / "probe", upload_dirs=[tmp_path])
    try:
        s.prepare()
        if s.boot() and s.upload():
            s.run()
            s.collect()
    finally:
        s.teardown(background=False)
    assert RUN_MARKER in guest.command  # the run marks where its part of dmesg begins
    return s.observation


def test_session_reads_a_console_rotated_during_the_run(tmp_path):
    def run(log: Path) -> None:
        _append(log, "run part one\n")
        _rollover(log)
        _append(log, OOPS_RUN.replace("Kernel panic", "no panic"))

    obs = _session_obs(tmp_path, run)
    assert obs.console_run == "run part one\n" + OOPS_RUN.replace("Kernel panic", "no panic")
    assert obs.console_lost == ""
    saved = (tmp_path / "probe" / "console.log").read_text()
    assert saved.startswith("[    0.000000] Linux version") and saved.endswith(obs.console_run)
    j = classify(obs, _bug([GRO]))
    assert j.verdict is Verdict.BAD and j.signature == GRO


def test_session_shrunk_console_is_console_lost(tmp_path):
    def run(log: Path) -> None:
        log.write_bytes(b"")  # what a console that lost the oops looks like: less than before

    j = classify(_session_obs(tmp_path, run), _bug([GRO]))
    assert j.verdict is Verdict.SKIP and j.reason.startswith("console lost: console.log shrank from ")


def test_session_scans_the_saved_dmesg(tmp_path):
    obs = _session_obs(tmp_path, lambda log: None, dmesg=_dmesg("[ 1.0] boot\n", WARN_RUN))
    assert RUN_MARKER in obs.dmesg
    j = classify(obs, _bug([GRO]))
    assert j.verdict is Verdict.SKIP and "skb_warn_bad_offload" in j.unrelated_trace


def test_silent_console_rule_scales_with_the_boot_timeout():
    assert session.silent_limit("tcg", 180.0) == 90.0  # the default TCG boot timeout: 90 s of silence
    assert session.silent_limit("kvm", 90.0) == 45.0
    assert session.silent_limit("tcg", 40.0) == 30.0  # never below the floor...
    assert session.silent_limit("tcg", 20.0) == 20.0  # ...nor beyond the boot timeout itself


# -- reports --------------------------------------------------------------------------------------------

def test_report_lists_unrelated_traces_per_kernel(tmp_path):
    class P:
        def __init__(self, kernel, records):
            self.kernel, self.records = kernel, records

    warn = find_traces(WARN_RUN)[0].excerpt
    probes = [P("debian:6.1.0-54-cloud-amd64", [ProbeRecord(kernel="x", bug="b", verdict=Verdict.SKIP, reason="r",
                                                             unrelated_trace=warn)] * 2),
              P("debian:6.1.0-53-cloud-amd64", [_rec(Verdict.GOOD)])]
    found = report.unrelated_traces(probes)
    assert list(found) == ["debian:6.1.0-54-cloud-amd64"]  # the same trace twice is listed once
    assert [t["headline"] for t in found["debian:6.1.0-54-cloud-amd64"]] == [
        "WARNING: CPU: 0 PID: 312 at net/core/dev.c:3210 skb_warn_bad_offload+0x70/0xe0"]
    result = {"bug": "b", "status": "found", "confidence": 1.0, "probes": []}
    out = report.write(dict(result), "run-1", out_dir=tmp_path, unrelated=found)
    html = (out / "report.html").read_text()
    assert "Unrelated kernel traces" in html and "skb_warn_bad_offload+0x70/0xe0" in html
    assert json.loads((out / "result.json").read_text())["unrelated_traces"] == found
    html_none = (report.write(dict(result), "run-2", out_dir=tmp_path / "2")
                 / "report.html").read_text()
    assert "Unrelated kernel traces" not in html_none
