"""One skip policy (app.policy): the same error gets the same decision in every use case.

Kernel trouble (the kernel cannot be had, reached, verified, built, booted or probed) skips that
kernel with the error as its reason and the run goes on; anything else (this machine, the user's
keyring, a plain error) stops the run with its one line. Each use case is driven with fakes
passed in (its deps dataclass), never by patching modules.
"""

from __future__ import annotations

import http.server
import json
import time
from pathlib import Path

import pytest

from orchestrator.adapters import cache, catalog
from orchestrator.app import verify
from orchestrator.app.bisect import BisectDeps, BisectRequest, run_bisect
from orchestrator.app.policy import Decision, decide
from orchestrator.app.sweep import SweepDeps, SweepRequest, run_sweep
from orchestrator.cli import main as cli_main
from orchestrator.core.errors import (
    BootFailure,
    ChecksumError,
    GuestInfra,
    InstallationError,
    KbisectError,
    SignatureError,
    SourceUnreachable,
    UnavailableError,
    VariantBuildError,
)
from orchestrator.core.verdict import ProbeRecord, Verdict
from tests.localhttp import serve_handler

BUG = "gretap-ecn"
KERNEL = "debian:6.1.0-54-cloud-amd64"  # the kernel the sweep and verify fakes cannot probe
MESSAGE = "the probe failed here"

ERRORS = [
    (UnavailableError, Decision.SKIP),
    (SourceUnreachable, Decision.SKIP),
    (ChecksumError, Decision.SKIP),
    (VariantBuildError, Decision.SKIP),
    (BootFailure, Decision.SKIP),
    (GuestInfra, Decision.SKIP),
    (InstallationError, Decision.ABORT),
    (SignatureError, Decision.ABORT),
    (KbisectError, Decision.ABORT),
]


def failing_on(bad_spec, error: KbisectError, good: set[str] = frozenset()):
    """A fake real probe: raises `error` on the specs `bad_spec(spec)` says, good on `good`, bad
    elsewhere; and the specs it was asked."""
    asked: list[str] = []

    def real_probe(bug, *_mirror):
        def probe(spec: str) -> ProbeRecord:
            asked.append(spec)
            if bad_spec(spec):
                raise error
            verdict = Verdict.GOOD if spec in good else Verdict.BAD
            return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})
        return probe

    return real_probe, asked


def same_bytes(spec: str) -> str:
    return "id-" + spec


# -- the three use cases, each on a fake probe ---------------------------------------------------

def bisect_on(error: KbisectError) -> list[str]:
    """Mainline 5.5 (good) .. 5.8 (bad), where 5.6 cannot be probed: the reasons of its probes."""
    real_probe, asked = failing_on(lambda spec: spec == "mainline:5.6", error, good={"mainline:5.5"})
    deps = BisectDeps(list_kernels=lambda source, *_: ["5.5", "5.6", "5.7", "5.8"] if source == "mainline" else [],
                      real_probe=real_probe, kernel_ids=lambda mirror: same_bytes)
    data = run_bisect(catalog.resolve(BUG), BisectRequest("5.5", "5.8", verify_runs=0), deps)
    assert "mainline:5.6" in asked
    skipped = [p for p in data["probes"] if p["kernel"] == "mainline:5.6"]
    assert skipped and all(p["verdict"] == "skip" and p["origins"] == ["error"] for p in skipped)
    assert data["status"] == "inconclusive" and data["counts"]["probe"] >= 2  # the ends were probed
    return [p["reason"] for p in skipped]


def sweep_on(error: KbisectError) -> list[str]:
    """One reproducer on one pinned kernel the probe cannot do: the reason of its cell."""
    real_probe, asked = failing_on(lambda spec: spec == KERNEL, error)
    deps = SweepDeps(real_probe=real_probe, clock=time.time, debian_entries=lambda: [], kernel_id=same_bytes)
    outcome = run_sweep(SweepRequest(bug_ids=(BUG,), kernels=(KERNEL,)), deps)
    (cell,) = outcome.cells
    assert asked and (cell.kernel, cell.verdict, cell.source) == (KERNEL, "skip", "error")
    assert outcome.nothing_decided
    return [cell.reason]


def verify_on(error: KbisectError) -> list[str]:
    """The proof rows on one pinned kernel the probe cannot do (the control is built on it)."""
    real_probe, asked = failing_on(lambda spec: spec.startswith(KERNEL), error)
    bug = catalog.resolve(BUG)
    rows = verify.plan([bug], (KERNEL,))
    verify.run_rows(rows, {bug.id: bug}, lambda spec, b: real_probe(b)(spec))
    probed = [r for r in rows if r.kernel.startswith(KERNEL)]
    assert len(probed) == 2 and len(asked) == 2  # the positive control and the fixed kernel
    assert all(r.verdict == "skip" and r.outcome == "unproven" for r in probed)
    return [r.reason for r in probed]


USE_CASES = {"bisect": bisect_on, "sweep": sweep_on, "verify": verify_on}


@pytest.fixture()
def world(kbisect_home, tmp_path, monkeypatch) -> Path:
    """A private home and results directory (reports and matrices are written for real)."""
    monkeypatch.setenv("KBISECT_RESULTS", str(tmp_path / "results"))
    return kbisect_home


@pytest.mark.parametrize("use_case", sorted(USE_CASES))
@pytest.mark.parametrize("kind,expected", ERRORS, ids=[k.__name__ for k, _ in ERRORS])
def test_the_skip_policy_gives_the_same_decision_in_bisect_sweep_and_verify(world, use_case, kind, expected) -> None:
    error = kind(MESSAGE)
    assert decide(error) is expected
    if expected is Decision.SKIP:
        reasons = USE_CASES[use_case](error)
        assert reasons and all(r == f"error: {MESSAGE}" for r in reasons)  # one wording everywhere
    else:
        with pytest.raises(kind, match=MESSAGE):
            USE_CASES[use_case](error)


def test_anything_but_a_kbisect_error_is_no_decision_to_skip() -> None:
    """A bug (or an interrupt) is never turned into a skip: it keeps its traceback."""
    assert decide(RuntimeError("bug")) is Decision.ABORT and decide(KeyboardInterrupt()) is Decision.ABORT
    with pytest.raises(RuntimeError):
        verify.run_rows([verify.Row(BUG, "fixed line 6.1", KERNEL, "good")], {BUG: catalog.resolve(BUG)},
                        lambda spec, bug: (_ for _ in ()).throw(RuntimeError("bug")))


# -- kbisect run: kernel trouble is git bisect's skip, the rest stops it ------------------------

def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        cli_main(["run", *args])
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_kbisect_run_skips_a_kernel_that_cannot_be_had_and_stops_on_bad_input(kbisect_home, tmp_path, capsys) -> None:
    repro = tmp_path / "repro"
    repro.mkdir()
    (repro / "run.sh").write_text("exit 0\n")
    empty = tmp_path / "builds"
    empty.mkdir()
    code, out, err = _run(["--bug", str(repro), "--kernel", "local:gone", "--mirror", str(empty), "--json"], capsys)
    assert code == 125, err  # git bisect run: skip this commit, go on
    assert err.strip().count("\n") == 0 and err.startswith("kbisect: skip: local:gone: no directory")
    record = json.loads(out)
    assert (record["verdict"], record["kernel"]) == ("skip", "local:gone") and "no directory" in record["reason"]
    code, _, err = _run(["--bug", str(repro), "--kernel", "not-a-spec"], capsys)
    assert code == 128 and "SOURCE:VERSION" in err  # bad input stops git bisect run


# -- downloads: why a package could not be had decides nothing by itself, its type does ---------

class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(int(self.path.strip("/").split("/")[0]))
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status,kind", [(404, UnavailableError), (410, UnavailableError),
                                         (500, SourceUnreachable), (403, SourceUnreachable)])
def test_a_package_that_cannot_be_downloaded_is_kernel_trouble(kbisect_home, tmp_path, status, kind) -> None:
    with serve_handler(_Status) as base:
        with pytest.raises(kind, match=f"HTTP {status}"):
            cache.download(f"{base}{status}/linux-image.deb", tmp_path / "linux-image.deb", "0" * 64)
    assert not (tmp_path / "linux-image.deb").exists()


def test_a_mirror_that_does_not_answer_is_source_unreachable(kbisect_home, tmp_path) -> None:
    with pytest.raises(SourceUnreachable, match="cannot download http://127.0.0.1:9/"):
        cache.download("http://127.0.0.1:9/linux-image.deb", tmp_path / "linux-image.deb", "0" * 64)
    assert decide(SourceUnreachable("x")) is Decision.SKIP
