"""A "billion laughs" YAML document (issue 19 item 8): a few KB of nested aliases as a reproducer's
bug.yaml or as a --verdicts file is refused with one `kbisect: error:` line, fast and small.

Before the bounded loader, `yaml.safe_load` composed these into a small graph that the schema's
error message (`isolate`) or the verdict flattening (`--verdicts`) expanded into 9^9 items: the
process grew to gigabytes and died with a MemoryError traceback after a minute. The CLI cases run
as a subprocess under an address-space limit of 1 GiB and a timeout, so the old behaviour fails
the test (a MemoryError traceback, or the timeout) instead of swapping the CI host.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.adapters import yamlfile
from orchestrator.app.prober import load_replay
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import Verdict

REPO = Path(__file__).resolve().parent.parent
ADDRESS_SPACE = 1 << 30  # 1 GiB: the interpreter and kbisect's imports need ~200 MB of it
TIMEOUT = 30  # seconds; the bounded loader answers in well under one


def billion_laughs(leaf: str, levels: int = 9, width: int = 9) -> tuple[str, str]:
    """Anchors x0..x{levels-1}, each a list of `width` aliases of the one before: (the document's
    lines, the name of the last anchor), which stands for width**levels leaves."""
    lines = [f"x0: &a0 [{', '.join([leaf] * width)}]"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n", f"a{levels - 1}"


def nested_bomb(leaf: str, levels: int = 9, width: int = 9) -> str:
    """The same bomb as one flow value (for a field of a mapping whose other keys are checked):
    `&a8 [&a7 [... &a0 [leaf x9] ..., *a0 x8], ..., *a7 x8]`."""
    value = f"&a0 [{', '.join([leaf] * width)}]"
    for i in range(1, levels):
        value = f"&a{i} [{value}, {', '.join([f'*a{i - 1}'] * (width - 1))}]"
    return value


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def kbisect(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """The real CLI under the memory limit, with its own home and results, every mirror closed."""
    full_env = {**os.environ, "KBISECT_HOME": str(tmp_path / "home"), "KBISECT_RESULTS": str(tmp_path / "results"),
                **env}
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=full_env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kbisect {' '.join(args)} still running after {TIMEOUT} s (alias expansion unbounded)")
    return proc, time.monotonic() - started


def assert_one_error_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kbisect: error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    for word in words:
        assert word in lines[0]
    assert len(lines[0]) < 400  # the expanded value is never printed


def test_bug_yaml_bomb_is_one_line_through_bugs_list(tmp_path) -> None:
    from tests.test_catalog import MINIMAL

    entry = tmp_path / "cat" / "demo-bug"
    entry.mkdir(parents=True)
    (entry / "run.sh").write_text("#!/bin/sh\nexit 0\n")
    # isolate must be a boolean: the old schema check quoted the whole expanded list in its error
    (entry / "bug.yaml").write_text(yaml.safe_dump(MINIMAL) + f"isolate: {nested_bomb('lol')}\n")
    assert (entry / "bug.yaml").stat().st_size < 4096
    proc, took = kbisect(tmp_path, "bugs", "list", KBISECT_REPRODUCERS=str(tmp_path / "cat"))
    assert_one_error_line(proc, "bug.yaml", "aliases expand to more than")
    assert took < TIMEOUT


def test_verdicts_bomb_is_one_line_through_bisect(tmp_path) -> None:
    text, _ = billion_laughs("bad")  # every leaf a valid verdict: the old code flattened 9^9 of them
    verdicts = tmp_path / "verdicts.yaml"
    verdicts.write_text(text)
    assert verdicts.stat().st_size < 4096
    proc, took = kbisect(tmp_path, "bisect", "--bug", "gretap-ecn", "--good", "mainline:5.6", "--bad", "mainline:5.7",
                         "--mirror", "http://127.0.0.1:9/", "--distro-mirror", "http://127.0.0.1:9/",
                         "--verdicts", str(verdicts))
    assert_one_error_line(proc, "--verdicts", "aliases expand to more than")
    assert took < TIMEOUT


def test_anchors_within_the_budget_still_load(tmp_path) -> None:
    """A real file's few anchors (a shared list) load as before, with aliases and merge keys."""
    text = ("base: &runs [bad, bad, good]\nmainline:5.7: *runs\nmainline:5.8: *runs\n"
            "policy: &p {runs: 3}\nother: {<<: *p, flaky: true}\n")
    data = yamlfile.parse(text, "t")
    assert data["mainline:5.8"] == ["bad", "bad", "good"] and data["other"] == {"runs": 3, "flaky": True}
    small, last = billion_laughs("bad", levels=3)  # 9^3 = 729 leaves: far under the budget
    replay = tmp_path / "v.yaml"
    replay.write_text(small + f"mainline:5.7: *{last}\n")
    assert load_replay(replay)["mainline:5.7"] == [Verdict.BAD] * 729


def test_the_budget_counts_expanded_nodes_not_text() -> None:
    """The limit is on what aliases stand for: 6 levels of 9 (~600,000 nodes) is over it, though
    the text is 300 bytes; the error names the line of the alias that crossed it."""
    text, _ = billion_laughs("bad", levels=6)
    with pytest.raises(KbisectError, match=r"^t: line 6 not valid YAML: aliases expand to more than 100000"):
        yamlfile.parse(text, "t")

    class Roomy(yamlfile.BoundedLoader):
        max_alias_nodes = 10**7

    assert len(yaml.load(text, Loader=Roomy)["x5"]) == 9  # the same text, under a larger budget


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {k: *a}\n", "a: &a [1, [2, *a]]\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text) -> None:
    """A cycle: any walker of the loaded value (a repr, a flattening) would recurse without end."""
    with pytest.raises(KbisectError, match="refers to a node that contains it"):
        yamlfile.parse(text, "t")


def test_oversized_file_is_refused_before_it_is_parsed(tmp_path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(json.dumps({f"mainline:5.{i}": "bad" for i in range(200)}))
    with pytest.raises(KbisectError, match=r"^w: larger than 1000 bytes$"):
        yamlfile.load(big, "w", 1000)
    assert len(yamlfile.load(big, "w", 1 << 20)) == 200
