"""Errors name what is wrong, and the text summary says what only the JSON said (issue 20).

- Range errors on real git repositories (adapters.gitlog.commit_graph): a reversed range says
  which end is older (with --fix: --bad), unrelated histories say they share no ancestry, a side
  branch says the ends diverge and where; neither of those two says "must come first", since
  swapping will not fix them.
- `bisect --build`: a mistyped revision is named as the end at fault (`--bad nosuchrev` used to
  blame `--good` with "not a mainline kernel version"), with --repo as the user gave it;
  `--fix --verify-revert --build` is refused up front.
- `kernels list --from 6.1 --to 5.4` is refused (it listed nothing, exit 0).
- The text summary of a package bisection says when git narrowing was skipped and when a
  requested --verify-revert did not run (before: only result.json said it).

The CLI cases run the real CLI in a subprocess (tests/test_hostile_cli.py's runner: one
`kbisect: error:` line, the exit code, nothing left behind); the summaries run through main()
with fake collaborators (tests/test_uncovered.py's FakeBisect).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import git
import pytest

from orchestrator.adapters.gitlog import commit_graph
from orchestrator.core.errors import KbisectError, ReversedRange
from tests.localhttp import serve_handler
from tests.test_hostile_cli import Case, Ctx, _garbage_handler, check, make_inputs, run_case
from tests.test_uncovered import BUG, FOUND, FakeBisect, run_cli, tiny_linux

ACTOR = git.Actor("Dev", "dev@example.invalid")


def _commit(repo: git.Repo, root: Path, name: str, text: str, message: str) -> str:
    (root / name).write_text(text)
    repo.index.add([name])
    return repo.index.commit(message, author=ACTOR, committer=ACTOR).hexsha


def histories(root: Path) -> Path:
    """A repository with v5.6 < v5.7 on master, a side branch `side` forked at v5.6 (tag
    v5.7-side), and an orphan branch `other` with no common ancestor (tag unrelated)."""
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    repo = git.Repo.init(root, initial_branch="master")
    _commit(repo, root, "a.c", "a\n", "base")
    repo.create_tag("v5.6")
    _commit(repo, root, "a.c", "a2\n", "master work")
    repo.create_tag("v5.7")
    repo.git.checkout("-q", "-b", "side", "v5.6")
    _commit(repo, root, "b.c", "b\n", "side work")
    repo.create_tag("v5.7-side")
    repo.git.checkout("-q", "--orphan", "other")
    repo.git.rm("-rfq", ".")
    _commit(repo, root, "c.c", "c\n", "another history")
    repo.create_tag("unrelated")
    repo.git.checkout("-q", "master")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return histories(tmp_path_factory.mktemp("histories") / "linux")


# ------------------------------------------------------------------------------ commit_graph


def test_reversed_range_says_the_older_must_come_first(repo):
    with pytest.raises(ReversedRange, match="v5.7 is newer than v5.6 .*the older revision of the range must come first"):
        commit_graph(repo, "v5.7", "v5.6")


def test_unrelated_histories_say_they_share_no_ancestry(repo):
    with pytest.raises(KbisectError) as caught:
        commit_graph(repo, "unrelated", "v5.7")
    assert not isinstance(caught.value, ReversedRange)
    assert "share no ancestry (unrelated histories)" in str(caught.value)
    assert "must come first" not in str(caught.value)  # swapping would not help


def test_a_side_branch_says_where_the_ends_diverge(repo):
    fork = git.Repo(repo).commit("v5.6").hexsha[:12]
    with pytest.raises(KbisectError) as caught:
        commit_graph(repo, "v5.7-side", "v5.7")
    assert not isinstance(caught.value, ReversedRange)
    text = str(caught.value)
    assert f"diverging branches that fork at {fork}" in text and "swapping them will not help" in text
    assert "must come first" not in text


# ------------------------------------------------------------------------------ through the CLI


def _setup_repo(ctx: Ctx) -> None:
    histories(ctx.out / "linux")


BB = ("bisect", "--bug", "gretap-ecn", "--build", "--repo", "{out}/linux")

CASES = [
    Case("build-bad-mistyped", BB + ("--good", "v5.6", "--bad", "nosuchrev"),
         "--bad nosuchrev: no such revision in --repo", setup=_setup_repo),
    Case("build-good-mistyped", BB + ("--good", "v5.6x", "--bad", "v5.7"),
         "--good v5.6x: no such revision in --repo", setup=_setup_repo),
    Case("build-both-mistyped", BB + ("--good", "v5.6x", "--bad", "v5.7x"),
         "--good v5.6x: neither a revision of --repo", setup=_setup_repo),
    Case("build-fix-verify-revert", BB + ("--fix", "--verify-revert", "--good", "v5.7", "--bad", "v5.6"),
         "--fix --verify-revert: ", setup=_setup_repo),
    Case("build-fix-swapped", BB + ("--fix", "--good", "v5.6", "--bad", "v5.7"),
         "with --fix, --bad is the older end", setup=_setup_repo),
    Case("build-swapped", BB + ("--good", "v5.7", "--bad", "v5.6"),
         "--good is the older end", setup=_setup_repo),
    Case("build-side-branch", BB + ("--good", "v5.7-side", "--bad", "v5.7"),
         "diverging branches", setup=_setup_repo),
    Case("build-unrelated", BB + ("--good", "unrelated", "--bad", "v5.7"),
         "share no ancestry", setup=_setup_repo),
    # before: an empty table and exit 0
    Case("list-range-backwards", ("kernels", "list", "--from", "6.1", "--to", "5.4"),
         "--from 6.1 is newer than --to 5.4"),
    Case("list-debian-range-backwards", ("kernels", "list", "--source", "debian", "--from", "6.1.0-54",
                                         "--to", "5.10.0-30"), "--from 6.1.0-54 is newer than --to 5.10.0-30"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    with serve_handler(_garbage_handler()) as url:
        yield make_inputs(tmp_path_factory.mktemp("blame-inputs"), url)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_error_names_what_is_wrong(case: Case, inputs, tmp_path) -> None:
    got = run_case(case, inputs, tmp_path)
    problems = check(case, got)
    assert not problems, f"{case.id}: {'; '.join(problems)}\nstderr:\n{got.stderr[-3000:]}"
    line = got.errors[0]
    assert "/worktrees/" not in line  # the clone as the user named it, never kbisect's worktree of it
    if "--repo" in line:
        assert f"--repo {tmp_path / 'out' / 'linux'}" in line
    if case.id in ("build-side-branch", "build-unrelated"):
        assert "must come first" not in line


# ------------------------------------------------------------------------------ the text summary


def _text(args: list[str], capsys, world: FakeBisect) -> str:
    code, out, err = run_cli(args, capsys, world.deps())
    assert code == 0, err[-2000:]
    return out


def test_summary_says_the_git_narrowing_was_skipped(kbisect_home, tmp_path, capsys) -> None:
    """A clone without the boundary's tags: result.json's notes said "skipped", the text nothing."""
    root = tmp_path / "untagged"
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    _commit(git.Repo.init(root, initial_branch="master"), root, "a.c", "a\n", "no tags here")
    out = _text(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--quiet",
                 "--repo", str(root)], capsys, FakeBisect(FOUND, tmp=tmp_path))
    notes = [line for line in out.splitlines() if line.startswith("note: git narrowing of v5.6..v5.7 skipped")]
    assert len(notes) == 1 and "unknown revision 'v5.6'" in notes[0], out


def test_summary_says_a_requested_revert_check_did_not_run(kbisect_home, tmp_path, capsys) -> None:
    from orchestrator.core.errors import VariantBuildError

    tiny_linux(tmp_path / "linux")
    world = FakeBisect(FOUND, tmp=tmp_path)
    deps = world.deps()

    def fails(base, patch, name):
        raise VariantBuildError("the patch does not apply to 5.7's modules")

    deps.build_variant = fails
    code, out, err = run_cli(["bisect", "--bug", BUG, "--good", "5.5", "--bad", "5.8", "--verify", "1", "--quiet",
                              "--repo", str(tmp_path / "linux"), "--verify-revert"], capsys, deps)
    assert code == 0, err[-2000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("revert check:")]
    assert line.startswith("revert check: not run (--verify-revert was asked): variant build failed: "
                           "the patch does not apply"), out
