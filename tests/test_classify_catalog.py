"""The bug.yaml side of classification (issue 11): `signatures:` and `unrelated_traces:` are
validated like every other field, each seed bug carries the signatures its write-up gives, and a
damaged bug.yaml (binary, undecodable, empty, truncated, huge, odd YAML) is one KbisectError naming
the file, never a UnicodeDecodeError or a YAML traceback. Quick tier.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.adapters import catalog, config
from orchestrator.core.bug import TracePolicy
from orchestrator.core.classify import Observation, classify
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import Verdict

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


def _dir(root: Path, text: str | bytes | None = None, **fields) -> Path:
    d = root / "demo-bug"
    d.mkdir(parents=True, exist_ok=True)
    (d / "run.sh").write_text("exit 0\n")
    if text is None:
        text = yaml.safe_dump({**MINIMAL, **fields})
    (d / "bug.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    return d


def _one_line_error(d: Path) -> str:
    with pytest.raises(KbisectError) as err:
        catalog.load(d)
    msg = str(err.value)
    assert "\n" not in msg and str(d / "bug.yaml") in msg, msg
    return msg


# -- the schema -----------------------------------------------------------------------------------

def test_signatures_default_to_none_and_unrelated_traces_to_skip(tmp_path):
    bug = catalog.load(_dir(tmp_path))
    assert bug.signatures == [] and bug.unrelated_traces is TracePolicy.SKIP


def test_signatures_and_policy_load(tmp_path):
    bug = catalog.load(_dir(tmp_path, signatures=[r"\bveth_xmit\b", "kernel BUG at net/core/skbuff.c"],
                            unrelated_traces="bad"))
    assert bug.signatures == [r"\bveth_xmit\b", "kernel BUG at net/core/skbuff.c"]
    assert bug.unrelated_traces is TracePolicy.BAD


@pytest.mark.parametrize("fields, words", [
    ({"signatures": ["skb_(gso"]}, ["signatures[0]", "not a valid regular expression"]),
    ({"signatures": ["ok", "[z-a]"]}, ["signatures[1]", "not a valid regular expression"]),
    ({"signatures": [".*"]}, ["signatures[0]", "matches an empty string", "unrelated_traces: bad"]),
    ({"signatures": "skb_gso_transport_seglen"}, ["signatures", "expected a list"]),
    ({"signatures": [""]}, ["signatures[0]", "must not be empty"]),
    ({"signatures": [3]}, ["signatures[0]", "is a number"]),
    ({"unrelated_traces": "ignore"}, ["unrelated_traces", "not one of skip, bad"]),
    ({"unrelated_traces": True}, ["unrelated_traces", "expected a string"]),
])
def test_bad_signature_fields_are_one_line_naming_the_field(tmp_path, fields, words):
    msg = _one_line_error(_dir(tmp_path, **fields))
    for w in words:
        assert w in msg, msg


# -- the seeds -------------------------------------------------------------------------------------

# The oops from the gro-inner-th write-up's call path (skb_gso_transport_seglen reached from the
# forwarding path of a GRO packet received by veth_poll), as a 5.x kernel prints it.
GRO_OOPS = """\
[  123.4] BUG: unable to handle page fault for address: ffff9c7e3fff1002
[  123.4] Oops: 0000 [#1] SMP PTI
[  123.4] RIP: 0010:skb_gso_transport_seglen+0x44/0xa0
[  123.4] Call Trace:
[  123.4]  skb_gso_validate_network_len+0x12/0x60
[  123.4]  __ip_finish_output+0x100/0x200
[  123.4]  veth_poll+0x1c9/0x2b0
[  123.4] ---[ end trace 1 ]---
"""
UNRELATED = "[  123.4] WARNING: CPU: 0 PID: 1 at mm/page_alloc.c:5500 __alloc_pages+0x2ae/0x330\n"


def test_every_seed_declares_signatures_and_gro_matches_its_oops():
    bugs = {b.id: b for b in catalog.all_bugs()}
    for bug in bugs.values():
        raw = (config.REPO_ROOT / "reproducers" / bug.id / "bug.yaml").read_text()
        assert re.search(r"(?m)^signatures:", raw), f"{bug.id} must say its signatures (an empty list is a choice)"
        assert re.search(r"(?m)^# .*\n(# .*\n)*signatures:", raw), f"{bug.id}: name the source in a comment"
    gro = bugs["gro-inner-th"]
    assert gro.signatures == [r"\bskb_gso_transport_seglen\b"]
    obs = Observation(booted=True, exit_code=0, console_run=GRO_OOPS)
    j = classify(obs, gro)
    assert j.verdict is Verdict.BAD and j.signature == gro.signatures[0]
    j = classify(Observation(booted=True, exit_code=0, console_run=UNRELATED), gro)
    assert j.verdict is Verdict.SKIP and j.reason.startswith("unrelated kernel trace: WARNING: CPU: 0 PID: 1")
    for quiet in ("gretap-ecn", "ipvs-gue-mtu", "rp-filter-lo", "veth-csum"):
        assert bugs[quiet].signatures == [], quiet  # their failure is not a trace: the exit code decides
        assert classify(obs, bugs[quiet]).verdict is Verdict.SKIP  # and an oops is not theirs


# -- a damaged bug.yaml: one line -------------------------------------------------------------------

HOSTILE = {
    "binary": os.urandom(64) + b"\0" + os.urandom(64),
    "elf header": b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
    "latin-1": "title: caf\xe9\n".encode("latin-1"),
    "utf-16": "id: demo-bug\n".encode("utf-16"),
    "empty": b"",
    "blank": b"\n\n   \n",
    "comments only": b"# nothing here\n",
    "nul escape": b'id: demo-bug\nentry: "run\\0.sh"\n',
    "deep nesting": b"a: " + b"[" * 50000,
    "bad date": b"id: demo-bug\nwhen: 2020-13-45\n",
    "bad int tag": b"timeout: !!int x\n",
    "bad timestamp tag": b"timeout: !!timestamp x\n",
    "python tag": b"id: !!python/object/apply:os.system [true]\n",
    "undefined alias": b"id: *nothing\n",
    "huge": b"# " + b"x" * (catalog.MAX_BUG_YAML_BYTES + 10) + b"\n",
    "top-level list": b"- id\n- title\n",
    "unhashable key": b"? [a, b]\n: c\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_damaged_bug_yaml_is_one_line(tmp_path, name):
    msg = _one_line_error(_dir(tmp_path, HOSTILE[name]))
    assert "Traceback" not in msg


FULL = """\
# a complete entry, flow and block styles mixed as the shipped ones are
id: demo-bug
title: "a demo, quoted"
summary: >
  a demo bug
timeout: 30
repeat: {runs: 3, bad_needed: 2, flaky: true}
signatures: ['\\bveth_xmit\\b', "kernel BUG at net/core/skbuff.c"]
unrelated_traces: skip
keywords: [demo, "two words"]
paths:
  - net/core/dev.c
history:
  fixed:
    - {sha: 0123456789ab, subject: "fix it", version: v6.0}
verify: {no_control: "demo: built-in code"}
"""


def test_truncated_bug_yaml_is_one_line_or_loads(tmp_path):
    """A file cut at any byte (an interrupted copy, a full disk) is refused with one line naming
    it, never a traceback. A cut that happens to leave valid YAML for a complete schema (only inside
    the last value) cannot be told from a shorter file and loads; every other cut is refused."""
    d = _dir(tmp_path, FULL)
    assert catalog.load(d).repeat.bad_needed == 2  # the whole file is valid
    refused = loaded = 0
    for n in range(len(FULL.encode())):
        (d / "bug.yaml").write_bytes(FULL.encode()[:n])
        try:
            bug = catalog.load(d)
        except KbisectError as exc:
            assert "\n" not in str(exc) and str(d / "bug.yaml") in str(exc), (n, str(exc))
            refused += 1
        else:
            assert n > FULL.index("verify:"), (n, "a cut before the last field loaded")
            assert bug.verify.no_control  # what loaded is the whole schema
            loaded += 1
    assert refused > 0.9 * len(FULL) and refused + loaded == len(FULL.encode())
    # the classic cuts: inside a quoted string, inside a flow mapping
    for marker in ('"a demo, qu', "{runs: 3, bad_"):
        (d / "bug.yaml").write_text(FULL[: FULL.index(marker) + len(marker)])
        assert "not valid YAML" in _one_line_error(d) or "field" in _one_line_error(d)


def test_bug_yaml_that_is_a_directory_or_unreadable_is_one_line(tmp_path):
    d = tmp_path / "demo-bug"
    d.mkdir()
    (d / "run.sh").write_text("exit 0\n")
    (d / "bug.yaml").mkdir()
    assert "not a regular file" in _one_line_error(d)


def test_bug_yaml_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    """Reading a fifo blocks until a writer comes: the catalog must refuse it, not hang."""
    import os

    d = tmp_path / "demo-bug"
    d.mkdir()
    (d / "run.sh").write_text("exit 0\n")
    os.mkfifo(d / "bug.yaml")
    assert "not a regular file" in _one_line_error(d)
