"""Behaviours no other test covered (issue 11, "Tests that cannot fail"), all without a VM:

- `kbisect bisect`'s exit codes for every status (0 found, 4 inconclusive, 3 the rest) and the
  text summary it prints before exiting;
- the bisect HTML report read as a document (html.parser): the answer in its summary table, each
  probed kernel's verdict in the probes table, the console excerpt beside its probe, links;
- `--verify-revert` when the revert really builds and the reverted kernel is good (and when not);
- `kbisect bugs verify` (without --plan) exiting 1 on a mismatch or an unproven row;
- the download cache's error paths through `kbisect kernels fetch` on a mirror served on
  127.0.0.1: HTTP 5xx, packages that disagree on the kernel release, a damaged zstd package.

Collaborators come in the way the commands take them (orchestrator.app.deps: `provided(...)`
around `main([...])`), never by patching modules.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.app.bisect import BisectDeps
from orchestrator.app.deps import provided
from orchestrator.app.verify import VerifyDeps
from orchestrator.cli import main as cli_main
from orchestrator.core.verdict import ProbeRecord, Verdict
from orchestrator.core.versions import KernelRef
from tests.localhttp import serve_handler
from tests.mainline_mirror import Build, Release, abi, write_release, write_top
from tests.report_html import Document, assert_links_resolve, probe_rows, summary
from tests.test_mirror import build_deb, kernel_payload

REPO = Path(__file__).resolve().parent.parent
BUG = "gretap-ecn"
MAINLINE = ["5.5", "5.6", "5.7", "5.8"]
PANIC = "Kernel panic - not syncing: fake trace for the report test"


def run_cli(args: list[str], capsys, *deps: object) -> tuple[int, str, str]:
    """`kbisect ARGS` through main(), with `deps` provided; (exit code, stdout, stderr)."""
    code = 0
    try:
        with provided(*deps):
            cli_main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


# -- a fake world for `kbisect bisect` ------------------------------------------------------------

@dataclass
class FakeBisect:
    """Mainline 5.5 .. 5.8 listed; each kernel answers from `table` (label -> verdicts, one per
    probe, the last repeated); a variant build is recorded and returns a kernel named after it."""

    table: dict[str, list[str]]
    asked: list[str] = field(default_factory=list)
    builds: list[tuple[str, str, str]] = field(default_factory=list)  # (base spec, patch text, name)
    patch_files: list[Path] = field(default_factory=list)  # where each build's patch was
    tmp: Path = Path("/nonexistent")

    def real_probe(self, bug, _mirror) -> Callable[[str], ProbeRecord]:
        def probe(spec: str) -> ProbeRecord:
            self.asked.append(spec)
            label = spec.split(":", 1)[1]
            answers = self.table[label]
            verdict = Verdict(answers[min(self.asked.count(spec), len(answers)) - 1])
            excerpt = PANIC if verdict is Verdict.BAD and "+" not in label else ""
            return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value} on {label}", {"run": 0.5},
                               console_excerpt=excerpt)
        return probe

    def build_variant(self, base: str, patch: Path, name: str) -> UnpackedKernel:
        self.builds.append((base, Path(patch).read_text(), name))
        self.patch_files.append(Path(patch))
        root = self.tmp / f"variant-{len(self.builds)}"
        root.mkdir(parents=True)
        return UnpackedKernel(KernelRef.of(f"{base}+{name}"), root, "5.7.0-fake")

    def deps(self) -> BisectDeps:
        return BisectDeps(list_kernels=lambda source, *_: MAINLINE if source == "mainline" else [],
                          real_probe=self.real_probe, kernel_ids=lambda _mirror: lambda spec: "id-" + spec,
                          build_variant=self.build_variant)


def table(**verdicts: str | list[str]) -> dict[str, list[str]]:
    """`table(k5_5="good", ...)`: labels with dots written as underscores."""
    return {k[1:].replace("_", "."): ([v] if isinstance(v, str) else v) for k, v in verdicts.items()}


FOUND = table(k5_5="good", k5_6="good", k5_7="bad", k5_8="bad")
FLIPS = table(k5_5="good", k5_6=["good", "bad"], k5_7="bad", k5_8="bad")  # 5.6 bad when re-run
STATUSES = [
    # (name, verdict table, status, exit code, lines the text summary must hold)
    ("found", FOUND, "found", 0, ["origin: mainline", "confidence: 1.0"]),
    ("good end bad", table(k5_5="bad", k5_6="bad", k5_7="bad", k5_8="bad"), "ends-disagree", 3, []),
    ("bad end good", table(k5_5="good", k5_6="good", k5_7="good", k5_8="good"), "no-candidates", 3, []),
    ("boundary flips on re-run", FLIPS, "unstable", 3, ["confidence: 0.5 (LOW)"]),
    ("nothing testable at the good end", table(k5_5="skip", k5_6="skip", k5_7="skip", k5_8="bad"), "no-candidates",
     3, []),
    ("the middle skipped", table(k5_5="good", k5_6="skip", k5_7="bad", k5_8="bad"), "inconclusive", 4, []),
]


@pytest.mark.parametrize("name,verdicts,status,code,holds", STATUSES, ids=[s[0] for s in STATUSES])
def test_bisect_exit_code_and_text_summary_for_every_status(kbisect_home, tmp_path, capsys, monkeypatch, name,
                                                             verdicts, status, code, holds) -> None:
    args = ["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--quiet"]
    got, out, err = run_cli(args + ["--json"], capsys, FakeBisect(verdicts, tmp=tmp_path / "j").deps())
    data = json.loads(out)  # printed before exiting, in every status
    assert (data["status"], got) == (status, code), (name, data["stopped"], err[-2000:])
    assert err == ""  # --quiet: nothing on stderr, not even for a non-zero exit

    # the same bisection again (a fresh home: nothing stored) without --json: the text answer
    monkeypatch.setenv("KBISECT_HOME", str(tmp_path / "text-home"))
    got, out, err = run_cli(args, capsys, FakeBisect(verdicts, tmp=tmp_path / "t").deps())
    assert got == code and err == "", err[-2000:]
    lines = out.splitlines()
    assert lines[:2] == [f"{BUG}: {data['stopped']}", f"status: {status}"], out
    assert all(line in lines for line in holds), (holds, out)
    # the origin line says what the JSON says; "undecided" only for an inconclusive answer
    origin = [line for line in lines if line.startswith("origin: ")]
    want = (f"origin: {data['origin']}" if data["origin"] else "origin: undecided" if status == "inconclusive"
            else None)
    assert origin == ([want] if want else []), out
    undecided = data.get("undecided") or []
    assert (f"undecided kernels ({len(undecided)}):" in lines) == bool(undecided), out
    assert all(any(line.startswith(f"  {u['kernel']} ({u['why']}") for line in lines) for u in undecided), out
    assert ("next: " + data["advice"] in lines) if data.get("advice") else not any(l.startswith("next:") for l in lines)
    assert lines[-1].startswith("report: ") and Path(lines[-1].removeprefix("report: ")).is_file(), out


def test_an_unstable_answer_says_why_it_is_unstable(kbisect_home, tmp_path, capsys) -> None:
    got, out, _ = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--quiet"],
                          capsys, FakeBisect(FLIPS, tmp=tmp_path).deps())
    assert got == 3 and "status: unstable" in out
    assert "5.6 was bad on re-run" in out


# -- the HTML report, read as a document ------------------------------------------------------------

def bisect_report(tmp_path: Path, capsys, verdicts: dict[str, list[str]]) -> tuple[dict, Document, Path]:
    code, out, err = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                              "--quiet"], capsys, FakeBisect(verdicts, tmp=tmp_path).deps())
    data = json.loads(out)
    report = Path(data["report"])
    return data, Document(report.read_text()), report


def test_bisect_report_states_the_answer_and_each_probe(kbisect_home, tmp_path, capsys) -> None:
    data, doc, report = bisect_report(tmp_path, capsys, FOUND)
    assert data["status"] == "found" and report.parent == Path(os.environ["KBISECT_RESULTS"]) / data["run_id"]
    assert doc.title == f"kbisect {BUG}: found"
    facts = summary(doc)
    assert (facts["status"], facts["last good"], facts["first bad"], facts["origin"]) == ("found", "5.6", "5.7", "mainline")
    assert facts["lineage"] == "mainline" and facts["confidence"] == f"{data['confidence']:.3f}"
    # every probe of the result, in order, with its verdict as text and as the row's colour
    assert probe_rows(doc) == [(p["verdict"], p["kernel"], p["phase"], p["verdict"]) for p in data["probes"]]
    assert {(k, v) for _, k, _, v in probe_rows(doc)} == {
        ("mainline:5.5", "good"), ("mainline:5.6", "good"), ("mainline:5.7", "bad"), ("mainline:5.8", "bad")}
    # the console excerpt of each bad boot is shown once per bad probe, and only for those
    bad_probes = [p for p in data["probes"] if p["verdict"] == "bad"]
    assert [b for b in doc.blocks if PANIC in b] == [PANIC] * len(bad_probes)
    # the stages table says the same boundary
    stage = doc.table_with("stage", "lineage", "status")[1]["cells"]
    assert [c[2] for c in stage[:5]] == [data["stages"][0]["name"], "mainline", "found", "5.6", "5.7"]
    assert_links_resolve(doc, report)
    # and result.json beside it is the --json output
    assert json.loads((report.parent / "result.json").read_text()) == data


def test_bisect_report_of_an_inconclusive_answer_names_the_undecided_kernel(kbisect_home, tmp_path, capsys) -> None:
    data, doc, report = bisect_report(tmp_path, capsys, table(k5_5="good", k5_6="skip", k5_7="bad", k5_8="bad"))
    facts = summary(doc)
    assert data["status"] == "inconclusive" and facts["status"] == "inconclusive"
    assert facts["origin"] == (data["origin"] or "undecided")  # as result.json says (see the module's note)
    assert facts["undecided"].startswith("5.6 (skip")
    assert ("skip", "mainline:5.6", "bisect", "skip") in probe_rows(doc)
    assert_links_resolve(doc, report)


# -- --verify-revert ---------------------------------------------------------------------------------

CULPRIT = "ip_tunnel: propagate ECN bits on decapsulation (RFC6040)"


def tiny_linux(root: Path) -> str:
    """v5.6 .. v5.7 with one commit in between, touching only modular .c code (net/ipv4/ip_tunnel.c),
    so a module-only revert variant can undo it; returns its sha."""
    import git

    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    repo = git.Repo.init(root, initial_branch="master")
    actor = git.Actor("Dev", "dev@example.invalid")
    src = root / "net" / "ipv4" / "ip_tunnel.c"
    src.parent.mkdir(parents=True)
    src.write_text("int ip_tunnel_rcv(void)\n{\n\treturn 0;\n}\n")
    repo.index.add([str(src.relative_to(root))])
    repo.index.commit("Initial import", author=actor, committer=actor)
    repo.create_tag("v5.6")
    src.write_text("int ip_tunnel_rcv(void)\n{\n\tpropagate_ect1();\n\treturn 0;\n}\n")
    repo.index.add([str(src.relative_to(root))])
    sha = repo.index.commit(CULPRIT + "\n\nRFC 6040: propagate ECT(1) when decapsulating.\n",
                            author=actor, committer=actor).hexsha
    repo.create_tag("v5.7")
    return sha


@pytest.mark.parametrize("after_revert,status", [("good", "confirmed"), ("bad", "not-confirmed")])
def test_verify_revert_builds_the_revert_and_probes_it(kbisect_home, tmp_path, capsys, after_revert, status) -> None:
    sha = tiny_linux(tmp_path / "linux")
    variant = f"5.7+revert-{sha[:12]}"
    world = FakeBisect({**FOUND, variant: [after_revert]}, tmp=tmp_path)
    code, out, err = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                              "--quiet", "--repo", str(tmp_path / "linux"), "--verify-revert"], capsys, world.deps())
    assert code == 0, err[-2000:]
    data = json.loads(out)
    assert data["candidates"][0]["sha"] == sha and data["candidates"][0]["subject"] == CULPRIT
    check = data["revert_check"]
    assert check == {"status": status, "sha": sha, "kernel": f"mainline:{variant}", "verdicts": [after_revert] * 3}
    # the variant was built once, on the first bad kernel, from the commit's reverse diff
    ((base, patch, name),) = world.builds
    assert (base, name) == ("mainline:5.7", f"revert-{sha[:12]}")
    assert "-\tpropagate_ect1();" in patch and "net/ipv4/ip_tunnel.c" in patch
    # the patch is kept in the home under the commit's name, never in a temporary directory
    assert world.patch_files == [kbisect_home / "builds" / "reverts" / f"revert-{sha[:12]}.patch"]
    assert f"mainline:{variant}" in world.asked
    assert world.asked.count(f"mainline:{variant}") == 3  # three probes of the reverted kernel, none reused
    # the report shows the check as it is in result.json
    doc = Document(Path(data["report"]).read_text())
    heading = next(i for text, i in doc.headings if text == "Revert check")
    assert json.loads(doc.blocks[heading]) == check


def test_verify_revert_of_built_in_code_rebuilds_the_whole_first_bad_kernel(kbisect_home, tmp_path, capsys) -> None:
    """The module route refuses a .c file the kernel links into vmlinux (BuiltInCode): the whole
    first-bad kernel is rebuilt from its own source with the revert instead, probed 3x."""
    from orchestrator.core.errors import BuiltInCode

    sha = tiny_linux(tmp_path / "linux")
    variant = f"5.7+revert-{sha[:12]}"
    world = FakeBisect({**FOUND, variant: ["good"]}, tmp=tmp_path)
    whole: list[tuple[str, str]] = []

    def refuse(base, patch, name):
        raise BuiltInCode("net/ipv4/ip_tunnel.c is built-in code (CONFIG_NET_IP_TUNNEL=y: compiled into vmlinux)")

    def build_whole(base, patch, name):
        whole.append((base, name))
        return FakeBisect.build_variant(world, base, patch, name)

    deps = world.deps()
    deps.build_variant, deps.build_whole = refuse, build_whole
    code, out, err = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--json",
                              "--quiet", "--repo", str(tmp_path / "linux"), "--verify-revert"], capsys, deps)
    assert code == 0, err[-2000:]
    check = json.loads(out)["revert_check"]
    assert whole == [("mainline:5.7", f"revert-{sha[:12]}")]
    assert check["status"] == "confirmed" and check["verdicts"] == ["good"] * 3


# -- bugs verify without --plan ----------------------------------------------------------------------

def verify_rows(capsys, answer: Callable[[dict], str], *extra: str) -> tuple[int, list[dict], str]:
    """`bugs verify gretap-ecn --kernel <6.1> --json`, each row's probe answering `answer(row)`."""
    plan_code, out, _ = run_cli(["bugs", "verify", BUG, "--kernel", "debian:6.1.0-54-cloud-amd64", "--plan",
                                 "--json"], capsys, VerifyDeps(probe=lambda spec, bug: pytest.fail("--plan booted")))
    planned = {r["kernel"]: r for r in json.loads(out)}
    assert plan_code == 0 and len(planned) >= 2

    def probe(spec: str, bug) -> ProbeRecord:
        verdict = Verdict(answer(planned[spec]))
        return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})

    code, out, err = run_cli(["bugs", "verify", BUG, "--kernel", "debian:6.1.0-54-cloud-amd64", "--json", *extra],
                             capsys, VerifyDeps(debian_entries=lambda: pytest.fail("listed with --kernel"),
                                                probe=probe, store=None))
    return code, json.loads(out), err


def test_bugs_verify_takes_stored_verdicts_of_the_same_bytes_and_fresh_boots_again(kbisect_home, capsys) -> None:
    booted: list[str] = []

    def probe(spec: str, bug) -> ProbeRecord:
        booted.append(spec)
        verdict = Verdict.BAD if "+revert" in spec else Verdict.GOOD
        return ProbeRecord(spec, bug.id, verdict, f"fake {verdict.value}", {"run": 1.0})

    def verify(*extra: str) -> list[dict]:
        code, out, err = run_cli(["bugs", "verify", BUG, "--kernel", "debian:6.1.0-54-cloud-amd64", "--json", *extra],
                                 capsys, VerifyDeps(debian_entries=lambda: pytest.fail("listed"), probe=probe,
                                                    kernel_id=lambda spec: "bytes-of-" + spec))
        assert code == 0, err[-2000:]
        return json.loads(out)

    first = verify()
    booted_first = len(booted)
    assert booted_first >= 2 and all(r["outcome"] == "ok" for r in first if r["expect"])
    again = verify()  # the same bytes and reproducer: answered from the store, no boot
    assert len(booted) == booted_first
    assert [r["verdict"] for r in again] == [r["verdict"] for r in first]
    assert all("(stored)" in r["reason"] for r in again if r["verdict"] in ("good", "bad"))
    verify("--fresh")
    assert len(booted) == 2 * booted_first


def test_bugs_verify_exits_1_on_a_mismatch_and_0_when_every_row_holds(kbisect_home, tmp_path, capsys) -> None:
    code, rows, _ = verify_rows(capsys, lambda row: row["expect"])
    assert code == 0 and all(r["outcome"] == "ok" for r in rows if r["expect"])
    # the positive control says good: the reproducer cannot see its bug
    md = tmp_path / "proof.md"
    flip = {"good": "bad", "bad": "good"}
    code, rows, _ = verify_rows(capsys, lambda row: flip[row["expect"]] if row["role"] == "positive control"
                                else row["expect"], "--markdown", str(md))
    assert code == 1
    control = [r for r in rows if r["role"] == "positive control"]
    assert control and all(r["outcome"] == "MISMATCH" and r["verdict"] == "good" for r in control)
    assert "MISMATCH" in md.read_text()
    # a row that could not be decided proves nothing either
    code, rows, _ = verify_rows(capsys, lambda row: "skip" if row["role"] != "positive control" else row["expect"])
    assert code == 1 and any(r["outcome"] == "unproven" for r in rows)


# -- the download cache's error paths, through `kbisect kernels fetch` -------------------------------

V = "5.7.1"
KABI = abi(5, 7, 1, None)  # 5.7.1-050701
KVER = f"{KABI}-generic"
STAMP = "202006101433"


def _image_and_modules(work: Path, modules_kver: str = KVER, compression: str = "gzip") -> dict[str, bytes]:
    """A mainline build's two generic packages (image, modules), as real .debs."""
    image, modules, links = kernel_payload(KVER, "cache error paths")
    links = {k: v for k, v in links.items() if k.endswith("veth-link.ko")}  # a harmless link only
    if modules_kver != KVER:
        modules = {k.replace(KVER, modules_kver): v for k, v in modules.items()}
        links = {k.replace(KVER, modules_kver): v for k, v in links.items()}
    pkgver = f"{KABI}.{STAMP}"
    out = {}
    for package, files, symlinks in ((f"linux-image-unsigned-{KVER}", image, {}),
                                     (f"linux-modules-{KVER}", modules, links)):
        deb = build_deb(work, package, pkgver, files, symlinks, compression=compression)
        out[deb.name] = deb.read_bytes()
    return out


def _damaged_zstd(deb: bytes) -> bytes:
    """The same .deb with its data.tar.zst member cut in half (the ar headers stay consistent)."""
    members, pos = [], 8
    assert deb[:8] == b"!<arch>\n"
    while pos < len(deb):
        header = deb[pos:pos + 60]
        name, size = header[:16].decode().strip(), int(header[48:58].decode().strip())
        data = deb[pos + 60:pos + 60 + size]
        members.append((name, data[: len(data) // 2] if name.startswith("data.tar.zst") else data))
        pos += 60 + size + (size % 2)
    assert any(n.startswith("data.tar.zst") for n, _ in members), [n for n, _ in members]
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


class Mirror(http.server.SimpleHTTPRequestHandler):
    """The mirror tree, except that every .deb answers `self.server.deb_status` when set."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status = getattr(self.server, "deb_status", None)
        if status and self.path.endswith(".deb"):
            self.send_error(status)
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def fetch_from(tmp_path: Path, home: Path, debs: dict[str, bytes], deb_status: int | None = None
               ) -> subprocess.CompletedProcess:
    """`kbisect kernels fetch mainline:5.7.1` from a one-release mirror holding `debs` (their
    CHECKSUMS published, so every download verifies), every .deb answering `deb_status` if set."""
    root = tmp_path / "www" / "mainline"
    release = Release(f"v{V}", [Build(STAMP, debs)])
    write_release(root, release)
    write_top(root, [release])
    env = {**os.environ, "KBISECT_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}
    with serve_handler(partial(Mirror, directory=str(tmp_path / "www")), "mainline/",
                       deb_status=deb_status) as url:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "fetch", f"mainline:{V}",
                               "--mirror", url], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return proc


def assert_nothing_half_made(home: Path) -> None:
    """No unpacked kernel, staging tree, partial download or unpack scratch file in the cache."""
    kernels = [p for p in (home / "kernels").rglob("*") if p.is_file() and not p.name.endswith(".lock")] \
        if (home / "kernels").exists() else []
    assert kernels == [], kernels
    assert not list(home.rglob("*.partial")) and not list(home.rglob("*.part"))
    assert not list(home.rglob("*.data.tar")), list(home.rglob("*.data.tar"))


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("kbisect: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.mark.parametrize("status", [500, 503])
def test_http_5xx_on_a_package_is_one_line_and_caches_nothing(kbisect_home, tmp_path, status) -> None:
    debs = _image_and_modules(tmp_path / "debs")
    proc = fetch_from(tmp_path, kbisect_home, debs, deb_status=status)
    assert_one_line_error(proc, f"HTTP {status}", f"linux-image-unsigned-{KVER}")
    assert_nothing_half_made(kbisect_home)
    assert not list((kbisect_home / "downloads").rglob("*.deb"))
    # the same mirror serving the packages: the same command succeeds (the 5xx was the only fault)
    ok = fetch_from(tmp_path, kbisect_home, debs)
    assert ok.returncode == 0, ok.stderr


def test_packages_disagreeing_on_the_release_are_refused(kbisect_home, tmp_path) -> None:
    other = f"{KABI}-lowlatency"
    proc = fetch_from(tmp_path, kbisect_home, _image_and_modules(tmp_path / "debs", modules_kver=other))
    assert_one_line_error(proc, "packages disagree on the kernel release", KVER, other)
    assert_nothing_half_made(kbisect_home)


def test_a_damaged_zstd_package_is_refused(kbisect_home, tmp_path) -> None:
    debs = _image_and_modules(tmp_path / "debs", compression="zstd")
    modules = next(n for n in debs if n.startswith("linux-modules-"))
    debs[modules] = _damaged_zstd(debs[modules])
    proc = fetch_from(tmp_path, kbisect_home, debs)  # CHECKSUMS cover the damaged bytes: it downloads
    assert_one_line_error(proc, modules, "data.tar.zst")
    assert_nothing_half_made(kbisect_home)
    # what was downloaded is the published (damaged) file, verified; the kernel was never made
    kept = kbisect_home / "downloads" / "mainline" / modules
    assert kept.is_file() and kept.read_bytes() == debs[modules]


# -- the VM tier's skip rule (conftest.vm_host) --------------------------------------------------------

def test_a_machine_without_vms_skips_outside_ci_and_fails_in_ci() -> None:
    from tests.conftest import in_ci, vm_host_missing, vm_host_outcome

    assert vm_host_missing(euid=1000) == "not root (euid 1000): libvirt's qemu:///system needs root"
    no_virsh = vm_host_missing(euid=0, which=lambda tool: None if tool == "virsh" else f"/usr/bin/{tool}")
    assert no_virsh is not None and no_virsh.startswith("virsh not on PATH")
    assert vm_host_missing(euid=0, which=lambda tool: f"/usr/bin/{tool}") is None
    assert vm_host_outcome("not root (euid 1000): x", ci=False) == ("skip", "not root (euid 1000): x")
    assert vm_host_outcome("not root (euid 1000): x", ci=True) == ("fail", "CI must run the VM tests, but not root (euid 1000): x")
    assert vm_host_outcome(None, ci=True) is None
    assert in_ci({"CI": "true"}) and in_ci({"CI": "1"}) and not in_ci({}) and not in_ci({"CI": "false"})
