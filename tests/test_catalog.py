"""The reproducer catalog: every shipped entry validates, bad files fail with one line naming the
file and the field, ids and paths resolve, and the `kbisect bugs` commands work without a VM.

A bisection trusts bug.yaml (repeat policy, history anchors, controls), so a silently half-loaded
file would mislead it; these tests pin the refusal behaviour as much as the happy path.
"""

from __future__ import annotations

import dataclasses

import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.adapters import catalog, config
from orchestrator.core.bug import DEFAULT_LINES, RepeatPolicy
from orchestrator.app.deps import provided
from orchestrator.app.verify import VerifyDeps, run_rows
from orchestrator.cli import main as cli_main
from orchestrator.core.errors import KbisectError, SourceUnreachable
from orchestrator.core.lines import pick_line_kernels
from orchestrator.core.verify import Row, markdown_table, plan_rows
from orchestrator.core.verdict import ProbeRecord, Verdict

SEED_IDS = ["gretap-ecn", "gro-inner-th", "ipvs-gue-mtu", "rp-filter-lo", "veth-csum"]
REPRO = config.REPO_ROOT / "reproducers"

MINIMAL = {
    "id": "demo-bug",
    "title": "a demo",
    "summary": "a demo bug",
    "keywords": ["demo"],
    "paths": ["net/core/dev.c"],
    "timeout": 30,
    "repeat": {"runs": 1},
    "history": {"fixed": [{"sha": "0123456789ab", "subject": "fix it", "version": "v6.0"}]},
    "verify": {"no_control": "demo: built-in code"},
}


def make_bug(root: Path, data: dict | str | None = None, name: str = "demo-bug", files: dict | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.sh").write_text("#!/bin/bash\necho ok\n")
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    if data is not None:
        (d / "bug.yaml").write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return d


def with_(**changes) -> dict:
    data = json.loads(json.dumps(MINIMAL))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


# ---------------------------------------------------------------- the shipped catalog


def test_every_seed_id_resolves_and_validates():
    ids = catalog.ids()
    for bug_id in SEED_IDS:
        if bug_id == "gro-inner-th" and bug_id not in ids:
            pytest.fail("gro-inner-th is missing from the catalog")
        bug = catalog.resolve(bug_id)
        assert bug.id == bug_id
        assert (bug.dir / bug.entry).is_file()
        assert bug.keywords and bug.paths and bug.history.fixed
    extras = set(ids) - set(SEED_IDS)
    assert extras & {"vxlan-zero-mac", "bind-v4mapped-wildcard", "ipv4-bcast-gateway"}, ids


def test_all_bugs_loads_everything_shipped():
    loaded = {b.id for b in catalog.all_bugs()}
    on_disk = {p.name for p in REPRO.iterdir() if (p / "bug.yaml").is_file()}
    assert loaded == on_disk


def test_gretap_history_carries_the_known_anchors():
    bug = catalog.resolve("gretap-ecn")
    known = {k.kernel: k.verdict for k in bug.history.known}
    assert known == {
        "mainline:5.6": "good", "mainline:5.7": "bad", "mainline:5.14-rc4": "good",
        "mainline:5.4.40": "good", "mainline:5.4.41": "bad", "mainline:5.4.138": "good",
    }
    assert [c.sha for c in bug.history.introduced] == ["b723748750ec"]
    assert [c.sha for c in bug.history.fixed] == ["227adfb2b1df"]
    assert bug.history.stable_backports["fixed"] == {"5.4": "5.4.138", "5.10": "5.10.56", "5.13": "5.13.8"}
    assert "net/ipv4/ip_tunnel.c" in bug.paths and "include/net/inet_ecn.h" in bug.paths
    assert {"ECT", "ECN", "RFC 6040"} <= set(bug.keywords)
    assert bug.writeup_path is not None and bug.writeup_path.name.startswith("gretap-ecn")


def test_gretap_control_is_the_named_revert():
    bug = catalog.resolve("gretap-ecn")
    ctl = bug.control("revert-227adfb2b1df")
    assert ctl is not None and ctl.expect == "bad"
    text = (bug.dir / ctl.patch).read_text()
    assert "--- a/net/ipv4/ip_tunnel.c\n+++ b/net/ipv4/ip_tunnel.c\n" in text
    assert "-\tskb_set_network_header(skb, (tunnel->dev->type == ARPHRD_ETHER) ? ETH_HLEN : 0);\n" in text
    assert "+\tskb_reset_network_header(skb);\n" in text


@pytest.mark.parametrize("bug_id", [p.name for p in sorted(REPRO.iterdir()) if (p / "bug.yaml").is_file()])
def test_control_patches_are_well_formed_unified_diffs(bug_id):
    bug = catalog.resolve(bug_id)
    for ctl in bug.controls:
        text = (bug.dir / ctl.patch).read_text()
        files = re.findall(r"^--- a/(\S+)\n\+\+\+ b/(\S+)$", text, re.M)
        assert files and all(a == b for a, b in files), f"{ctl.patch}: needs a/ b/ file headers"
        # Every hunk's line counts must match its body, or `patch -p1` rejects it.
        for m in re.finditer(r"^@@ -\d+,(\d+) \+\d+,(\d+) @@.*\n((?:[ +\-].*\n)+)", text, re.M):
            old, new, body = int(m[1]), int(m[2]), m[3].splitlines()
            assert old == sum(1 for line in body if line[:1] in " -"), f"{ctl.patch}: hunk old count"
            assert new == sum(1 for line in body if line[:1] in " +"), f"{ctl.patch}: hunk new count"
    if not bug.controls:
        assert bug.verify.no_control.strip(), f"{bug_id}: no control and no reason why"


def test_flaky_and_isolate_policies_are_explicit():
    for bug in catalog.all_bugs():
        if bug.repeat.runs > 1:
            assert bug.repeat.flaky and 1 <= bug.repeat.bad_needed <= bug.repeat.runs


# ---------------------------------------------------------------- schema: bad files


@pytest.mark.parametrize("data, field, words", [
    (with_(title=None), "title", "required"),
    (with_(colour="red"), "colour", "unknown field"),
    (with_(repeat={"runs": 0}), "repeat.runs", "out of range"),
    (with_(repeat={"runs": 2, "bad_needed": 3, "flaky": True}), "repeat.bad_needed", "out of range"),
    (with_(repeat={"runs": 3, "flaky": False}), "repeat.flaky", "flaky"),
    (with_(repeat={"runs": "1"}), "repeat.runs", "integer"),
    (with_(timeout=True), "timeout", "integer"),
    (with_(history={"fixed": [{"sha": "0123456", "version": 5.10}]}), "history.fixed[0].version", "quote it"),
    (with_(history={"fixed": [{"sha": "0123456"}], "stable_backports": {"fixed": {5.10: "5.10.56"}}}),
     "history.stable_backports.fixed.5.1", "quote it"),
    (with_(keywords="ECN"), "keywords", "list"),
    (with_(keywords=[]), "keywords", "empty"),
    (with_(isolate="yes"), "isolate", "true or false"),
    (with_(id="Demo_Bug"), "id", "does not match"),
    (with_(id="other-bug"), "id", "directory name"),
    (with_(history={"fixed": [{"sha": "not-a-sha"}]}), "history.fixed[0].sha", "does not match"),
    (with_(history={"introduced": []}), "history.fixed", "required"),
    (with_(history={"fixed": [{"sha": "0123456"}], "known": [{"kernel": "mainline:5.7", "verdict": "broken"}]}),
     "history.known[0].verdict", "not one of"),
    (with_(controls=[{"patch": "controls/x.patch", "base": "debian:6.1"}]), "controls[0].patch", "does not exist"),
    (with_(controls=[{"patch": "../x.patch", "base": "debian:6.1"}]), "controls[0].patch", "inside the reproducer"),
    (with_(controls=[{"patch": "controls/x.diff", "base": "debian:6.1"}]), "controls[0].patch", ".patch"),
    (with_(entry="missing.sh"), "entry", "does not exist"),
    (with_(verify=None), "verify.no_control", "say why"),
    (with_(verify={"lines": ["6.1"], "expect": {"5.10": "good"}, "no_control": "x"}), "verify.expect.5.10", "not in verify.lines"),
])
def test_bad_files_fail_with_one_line_naming_file_and_field(tmp_path, data, field, words):
    d = make_bug(tmp_path, data)
    with pytest.raises(KbisectError) as info:
        catalog.load(d)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(d / "bug.yaml") in msg
    assert repr(field) in msg, msg
    assert words in msg, msg


@pytest.mark.parametrize("text, words", [
    ("id: [unclosed\n", "not valid YAML"),
    ("", "empty file"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_unparseable_files_fail_with_one_line(tmp_path, text, words):
    d = make_bug(tmp_path, text)
    with pytest.raises(KbisectError) as info:
        catalog.load(d)
    assert "\n" not in str(info.value) and words in str(info.value) and "bug.yaml" in str(info.value)


def test_valid_minimal_file_gets_defaults(tmp_path):
    bug = catalog.load(make_bug(tmp_path, MINIMAL))
    assert bug.entry == "run.sh" and bug.isolate is False
    assert bug.repeat == RepeatPolicy(runs=1, bad_needed=1, flaky=False)
    assert bug.history.fixed[0].version == "v6.0"
    assert bug.controls == [] and bug.verify.lines == list(DEFAULT_LINES)


def test_flaky_policy_and_controls_load(tmp_path):
    data = with_(repeat={"runs": 5, "bad_needed": 2, "flaky": True}, isolate=True,
                 controls=[{"patch": "controls/revert-abc1234.patch", "base": "debian:6.1", "note": "n"}])
    bug = catalog.load(make_bug(tmp_path, data, files={"controls/revert-abc1234.patch": "--- a/x\n+++ b/x\n"}))
    assert bug.repeat == RepeatPolicy(runs=5, bad_needed=2, flaky=True)
    assert bug.isolate is True
    assert bug.control("revert-abc1234").base == "debian:6.1"
    assert bug.control("nope") is None


def test_all_bugs_stops_at_the_first_bad_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KBISECT_REPRODUCERS", str(tmp_path))
    make_bug(tmp_path, MINIMAL)
    make_bug(tmp_path, with_(id="zz-broken", title=None), name="zz-broken")
    with pytest.raises(KbisectError, match=r"zz-broken/bug.yaml: field 'title'"):
        catalog.all_bugs()


# ---------------------------------------------------------------- resolution


def test_resolve_by_id_path_and_adhoc_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KBISECT_REPRODUCERS", str(tmp_path / "cat"))
    make_bug(tmp_path / "cat", MINIMAL)
    assert catalog.resolve("demo-bug").dir == (tmp_path / "cat" / "demo-bug").resolve()
    assert catalog.resolve(str(tmp_path / "cat" / "demo-bug")).id == "demo-bug"
    adhoc = make_bug(tmp_path, None, name="my-script")
    bug = catalog.resolve(str(adhoc))
    assert (bug.id, bug.entry, bug.repeat.runs) == ("my-script", "run.sh", 1)
    assert catalog.ids() == ["demo-bug"]


def test_unknown_bug_names_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("KBISECT_REPRODUCERS", str(tmp_path))
    make_bug(tmp_path, MINIMAL)
    with pytest.raises(KbisectError, match=r"unknown bug 'nope'.*known: demo-bug"):
        catalog.resolve("nope")


def test_resolve_refuses_a_directory_without_run_sh(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KbisectError, match="neither bug.yaml nor run.sh"):
        catalog.resolve(str(tmp_path / "empty"))


# ---------------------------------------------------------------- CLI


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        cli_main(args)
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_bugs_list_and_show(capsys):
    code, out, _ = run_cli(["bugs", "list", "--json"], capsys)
    assert code == 0
    assert {"gretap-ecn", "veth-csum"} <= {b["id"] for b in json.loads(out)}
    code, out, _ = run_cli(["bugs", "show", "gretap-ecn"], capsys)
    assert code == 0 and "227adfb2b1df" in out and "revert-227adfb2b1df" in out and "5.4.41" in out
    code, out, _ = run_cli(["bugs", "show", "gretap-ecn", "--json"], capsys)
    assert json.loads(out)["controls"][0]["name"] == "revert-227adfb2b1df"


def test_bugs_show_unknown_is_one_line(capsys):
    code, out, err = run_cli(["bugs", "show", "no-such-bug"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown bug 'no-such-bug'" in err


DEBIAN = [
    {"version": v, "spec": f"debian:{v}", "available": True, "upstream": up, "flavour": fl, "package_version": pv}
    for v, up, fl, pv in [
        ("5.10.0-30-cloud-amd64", "5.10.218", "cloud-amd64", "5.10.218-1"),
        ("5.10.0-46-cloud-amd64", "5.10.262", "cloud-amd64", "5.10.262-1"),
        ("5.10.0-46-amd64", "5.10.262", "amd64", "5.10.262-1"),
        ("6.1.0-0.deb11.52-cloud-amd64", "6.1.170", "cloud-amd64", "6.1.170-1~deb11u1"),
        ("6.1.0-54-cloud-amd64", "6.1.160", "cloud-amd64", "6.1.160-1"),
        ("6.12.117+deb12-cloud-amd64", "6.12.117", "cloud-amd64", "6.12.117-1~deb12u1"),
        ("6.12.117+deb13-cloud-amd64", "6.12.117", "cloud-amd64", "6.12.117-1"),
        ("6.12.9+deb13-cloud-amd64", "6.12.9", "cloud-amd64", "6.12.9-1"),
        ("7.2.13+deb14-cloud-amd64", "7.2.13", "cloud-amd64", "7.2.13-1"),
    ]
]


def test_pick_line_kernels_prefers_newest_native_cloud():
    picked = pick_line_kernels(DEBIAN, ["5.10", "6.1", "6.12", "newest", "4.19"])
    assert picked == {
        "5.10": "debian:5.10.0-46-cloud-amd64",
        "6.1": "debian:6.1.0-0.deb11.52-cloud-amd64",  # newer upstream wins over being native
        "6.12": "debian:6.12.117+deb13-cloud-amd64",  # same upstream: the native build
        "newest": "debian:7.2.13+deb14-cloud-amd64",
        "4.19": None,
    }


def test_plan_rows_controls_lines_and_no_control():
    lines = pick_line_kernels(DEBIAN, ["5.10", "6.1", "6.12", "newest"])
    gre = plan_rows(catalog.resolve("gretap-ecn"), lines)
    assert gre[0].role == "positive control" and gre[0].expect == "bad"
    assert gre[0].kernel.endswith("+revert-227adfb2b1df")
    assert [r.expect for r in gre[1:]] == ["good"] * 4
    rpf = plan_rows(catalog.resolve("rp-filter-lo"), lines, available={e["spec"] for e in DEBIAN})
    # a built-in fix: the whole-kernel control, and the same build without its patch, expected good
    assert [(r.role, r.kernel, r.expect) for r in rpf[:2]] == [
        ("positive control", f"{lines['6.1']}+revert-66f8209547cc", "bad"),
        ("control's build without its patch", f"{lines['6.1']}+guest-build", "good")]
    assert not [r for r in rpf if r.role == "no control"]
    bare = dataclasses.replace(catalog.resolve("rp-filter-lo"), controls=[])
    bare.verify.no_control = "fib_frontend.c is built in"
    no_ctl = [r for r in plan_rows(bare, lines) if r.role == "no control"]
    assert len(no_ctl) == 1 and "built in" in no_ctl[0].reason and no_ctl[0].outcome == "n/a"


def test_run_rows_never_relabels_and_turns_errors_into_skips():
    bug = catalog.resolve("gretap-ecn")
    rows = [Row(bug.id, "positive control", "debian:x+revert-227adfb2b1df", "bad"),
            Row(bug.id, "fixed line 6.1", "debian:x", "good"),
            Row(bug.id, "fixed line 6.12", "debian:y", "good")]

    def probe(spec, b):
        if spec == "debian:y":
            raise SourceUnreachable("cannot fetch debian:y")
        return ProbeRecord(kernel=spec, bug=b.id, verdict=Verdict.GOOD, reason="inner dst 18:be:92:a0:ee:26 (good)")

    run_rows(rows, {bug.id: bug}, probe)
    assert [r.outcome for r in rows] == ["MISMATCH", "ok", "unproven"]
    assert rows[2].verdict == "skip" and "cannot fetch" in rows[2].reason
    table = markdown_table(rows)
    assert table.count("\n") == 4 and "MISMATCH" in table


def test_verify_plan_cli_boots_nothing(capsys):
    def no_boot(spec, bug):
        raise AssertionError(f"--plan booted {spec}")

    with provided(VerifyDeps(debian_entries=lambda: DEBIAN, probe=no_boot)):
        code, out, _ = run_cli(["bugs", "verify", "gretap-ecn", "--plan", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 5 and all(r["verdict"] == "" and r["reason"] == "" for r in rows)
    # gretap's control names a full kernel, not a line: it is probed as written.
    assert rows[0]["kernel"] == "debian:6.1.0-54-cloud-amd64+revert-227adfb2b1df"
    with provided(VerifyDeps(debian_entries=lambda: DEBIAN, probe=no_boot)):
        code, out, _ = run_cli(["bugs", "verify", "veth-csum", "--plan", "--json"], capsys)
    assert json.loads(out)[0]["kernel"] == "debian:6.1.0-0.deb11.52-cloud-amd64+revert-ce8c839b74e3"


def test_a_pinned_debian_kernel_is_the_base_of_its_lines_controls():
    from orchestrator.core.verify import pinned_lines

    bug = catalog.resolve("rp-filter-lo")
    lines = pinned_lines([bug], ("debian:6.1.0-57-cloud-amd64",))
    rows = plan_rows(bug, lines.line_kernels)
    assert [(r.role, r.kernel, r.expect) for r in rows] == [
        ("positive control", "debian:6.1.0-57-cloud-amd64+revert-66f8209547cc", "bad"),
        ("control's build without its patch", "debian:6.1.0-57-cloud-amd64+guest-build", "good"),
        ("fixed line k0", "debian:6.1.0-57-cloud-amd64", "good")]
