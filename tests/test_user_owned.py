"""What kbisect never touches of the user's (issue 20), on real git repositories, the real
`patch` tool and the real CLI (`kernels build`, `report`):

- their clone: only kbisect's own worktree, added and removed by its path (no `git worktree
  prune`, which unregistered a worktree of theirs on an unmounted disk), and none left
  registered when `--repo` is no kernel tree;
- their tree: patches applied all or nothing (each checked with a dry run first), no `.rej` or
  `.orig` left, a relative `--patch` read from the caller's directory, an empty one refused;
- a relative KBISECT_HOME resolved before make sees it (make -C TREE O=relative wrote the build
  inside the user's tree);
- errors name what the user gave (`--repo R at REV`, `--tree T`), not kbisect's worktree.

The fake kernel tree's Makefile does what kbuild does with O= (creates it, relative to -C's
directory) and writes a .config without the guest's options, so a build stops at the config
check, after its patches were applied, in well under a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.adapters.builds import trees
from orchestrator.adapters.progress import StepLog
from orchestrator.core.errors import KbisectError

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=master"]

# kbuild's own handling of O= (Makefile: `$(shell mkdir -p $(KBUILD_OUTPUT))` after make -C has
# entered the source tree), then a config without the guest's options
MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 190
EXTRAVERSION =
defconfig:
\tmkdir -p $(O) && touch $(O)/.config && cp net/a.c $(O)/a.c.seen
olddefconfig:
\t: > $(O)/.config
"""


def kernel_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "Makefile").write_text(MAKEFILE)
    (root / "Kconfig").write_text('mainmenu "Linux"\n')
    (root / "net").mkdir()
    (root / "net" / "a.c").write_text("int a(void) { return 1; }\n")
    (root / "net" / "b.c").write_text("int b(void) { return 1; }\n")
    return root


def git_repo(root: Path, kernel: bool = True) -> Path:
    if kernel:
        kernel_tree(root)
    else:
        root.mkdir(parents=True)
        (root / "README").write_text("not a kernel\n")
    subprocess.run(GIT + ["-C", str(root), "init", "-q"], check=True)
    subprocess.run(GIT + ["-C", str(root), "add", "-A"], check=True)
    subprocess.run(GIT + ["-C", str(root), "commit", "-qm", "base"], check=True)
    return root


def worktrees(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"], check=True,
                         capture_output=True, text=True).stdout
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def kbisect(args: list[str], cwd: Path, home: str | Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBISECT_")}
    env.update(KBISECT_HOME=str(home), KBISECT_RESULTS=str(Path(cwd) / "results"), KBISECT_LOCK_TIMEOUT="5",
               PYTHONPATH=str(REPO), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The one `kbisect: error:` line of a failed command (and no traceback)."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kbisect: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and ".git" not in p.relative_to(root).parts}


# ------------------------------------------------------------------------------ the user's clone


def test_a_build_leaves_the_users_own_worktrees_registered(tmp_path, kbisect_home) -> None:
    repo = git_repo(tmp_path / "linux")
    theirs = tmp_path / "usb-disk" / "linux-wip"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(theirs)], check=True)
    (tmp_path / "usb-disk").rename(tmp_path / "unmounted")  # the disk is not mounted today
    built = trees.from_git(repo, "HEAD", StepLog())
    assert str(theirs) in worktrees(repo)  # before: `git worktree prune` unregistered it
    assert str(built.path) in worktrees(repo)
    trees.from_git(repo, "HEAD", StepLog())  # the next step reuses kbisect's own
    assert sorted(worktrees(repo)) == sorted([str(repo), str(theirs), str(built.path)])


def test_kbisects_own_stale_worktree_is_removed_by_its_path(tmp_path, kbisect_home) -> None:
    repo = git_repo(tmp_path / "linux")
    first = trees.from_git(repo, "HEAD", StepLog())
    subprocess.run(["rm", "-rf", str(first.path)], check=True)  # gc, or a user, removed the directory
    again = trees.from_git(repo, "HEAD", StepLog())
    assert again.path == first.path and (again.path / "Makefile").is_file()
    assert worktrees(repo) == [str(repo), str(first.path)]  # one registration, not a second beside a stale one


def test_a_repo_that_is_no_kernel_tree_leaves_no_worktree_registered(tmp_path) -> None:
    repo = git_repo(tmp_path / "notes", kernel=False)
    proc = kbisect(["kernels", "build", "--repo", "notes", "--rev", "HEAD", "--bug", "veth-csum"], tmp_path,
                   tmp_path / "home")
    error = one_error(proc)
    assert "--repo notes at HEAD is not a Linux source tree" in error  # before: kbisect's worktree path
    assert str(tmp_path / "home") not in error
    assert worktrees(repo) == [str(repo)]
    assert not (repo / ".git" / "worktrees").exists() or not any((repo / ".git" / "worktrees").iterdir())


# ------------------------------------------------------------------------------ the user's tree

FITS_B = "--- a/net/b.c\n+++ b/net/b.c\n@@ -1 +1 @@\n-int b(void) { return 1; }\n+int b(void) { return 3; }\n"
FITS_A = "--- a/net/a.c\n+++ b/net/a.c\n@@ -1 +1 @@\n-int a(void) { return 1; }\n+int a(void) { return 2; }\n"
MISFITS_B = "--- a/net/b.c\n+++ b/net/b.c\n@@ -1 +1 @@\n-int b(void) { return 7; }\n+int b(void) { return 8; }\n"


def build_tree(tmp_path: Path, *patches: str, home: str | Path | None = None) -> subprocess.CompletedProcess:
    args = ["kernels", "build", "--tree", "linux", "--bug", "veth-csum", "-j1"]
    for patch in patches:
        args += ["--patch", patch]
    return kbisect(args, tmp_path, home or tmp_path / "home")


def seen_by_make(home: Path) -> list[str]:
    """net/a.c as make saw it (the fake Makefile copies it into the build directory)."""
    return [p.read_text() for p in sorted(home.glob("builds/obj/*/a.c.seen"))]


def test_a_patch_that_fails_part_way_leaves_the_tree_as_it_was(tmp_path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    (tmp_path / "first.patch").write_text(FITS_B)
    (tmp_path / "half.patch").write_text(FITS_A + MISFITS_B)  # a.c fits, b.c does not
    before = tree_files(tree)
    error = one_error(build_tree(tmp_path, str(tmp_path / "first.patch"), str(tmp_path / "half.patch")))
    assert "patch half.patch does not apply" in error
    # before: a.c patched, b.c.rej written, and first.patch left applied for the next build
    assert tree_files(tree) == before
    assert seen_by_make(tmp_path / "home") == []  # nothing was built from a half-patched tree


def test_a_relative_patch_is_read_from_the_callers_directory(tmp_path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    (tmp_path / "fix.patch").write_text(FITS_A)  # the README's form: --patch fix.patch
    before = tree_files(tree)
    error = one_error(build_tree(tmp_path, "fix.patch"))
    assert "does not apply" not in error and "requirement(s) not met" in error  # the fake config, after the patch
    assert seen_by_make(tmp_path / "home") == ["int a(void) { return 2; }\n"]  # make saw it applied
    assert tree_files(tree) == before  # and it was reversed after


def test_an_empty_patch_is_refused(tmp_path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    (tmp_path / "empty.patch").write_text("")
    before = tree_files(tree)
    error = one_error(build_tree(tmp_path, str(tmp_path / "empty.patch")))
    assert f"--patch {tmp_path / 'empty.patch'}: empty" in error  # before: built and recorded as applied
    assert tree_files(tree) == before and not (tmp_path / "home" / "builds" / "obj").exists()


def test_a_relative_home_is_resolved_before_make_sees_it(tmp_path) -> None:
    tree = kernel_tree(tmp_path / "linux")
    before = tree_files(tree)
    one_error(build_tree(tmp_path, home="state"))  # KBISECT_HOME=state, relative to the caller
    # before: make -C linux O=state/builds/obj/... wrote the build directory inside the tree
    assert tree_files(tree) == before and not (tree / "state").exists()
    assert seen_by_make(tmp_path / "state") == ["int a(void) { return 1; }\n"]


# ------------------------------------------------------------------------------ what errors name


def test_tree_on_a_file_says_it_is_a_file(tmp_path) -> None:
    (tmp_path / "linux.tar.xz").write_bytes(b"\xfd7zXZ")
    error = one_error(kbisect(["kernels", "build", "--tree", "linux.tar.xz"], tmp_path, tmp_path / "home"))
    assert "--tree linux.tar.xz: a file, not a directory" in error  # before: "no such directory"


def test_a_repo_builds_config_error_names_the_repo_not_the_worktree(tmp_path) -> None:
    git_repo(tmp_path / "linux")
    error = one_error(kbisect(["kernels", "build", "--repo", "linux", "--rev", "HEAD", "--bug", "veth-csum"],
                              tmp_path, tmp_path / "home"))
    # before: "config of /…/home/builds/worktrees/<key>: …", a path the user never typed
    assert "config of --repo linux at HEAD: " in error and "worktrees" not in error


class _SourcePackage:
    """An archive with linux-source-6.1 at the version asked for (its source already unpacked)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def pick(self, package: str, wanted: str) -> str:
        return "6.1.190-1"

    def download(self, package: str, version: str, progress):
        from orchestrator.adapters.variants.packages import Downloaded

        path = self.root / f"{package}_{version}_all.deb"
        path.write_bytes(b"a .deb")
        return Downloaded(package, version, path, path.stat().st_size)


def test_a_linux_source_builds_config_error_names_the_package(tmp_path, kbisect_home) -> None:
    from orchestrator.adapters import catalog
    from orchestrator.app.build import BuildDeps, BuildRequest, build_kernel

    src = trees.debian_source_dir("linux-source-6.1", "6.1.190-1")
    src.parent.mkdir(parents=True, exist_ok=True)
    git_repo(src)
    subprocess.run(["git", "-C", str(src), "tag", trees.DEBIAN_TAG], check=True)
    deps = BuildDeps(packages=lambda: _SourcePackage(tmp_path), local_root=lambda: tmp_path / "local")
    with pytest.raises(KbisectError) as caught:
        build_kernel(BuildRequest(linux_source="6.1", bugs=[catalog.resolve("veth-csum")], jobs=1), deps, StepLog())
    assert str(caught.value).startswith("config of --linux-source 6.1 (linux-source-6.1 6.1.190-1): ")


# ------------------------------------------------------------------------------ other runs' reports


def _run(run_id: str, first_bad: str) -> Path:
    from orchestrator.adapters import report

    return report.write({"run_id": run_id, "bug": "veth-csum", "first_bad": first_bad, "probes": []}, run_id)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_report_out_refuses_another_runs_directory(kbisect_home, _results_in_tmp, capsys) -> None:
    from tests.test_uncovered import run_cli

    _run("run-a", "5.7")
    b = _run("run-b", "6.1")
    before = _files(b)
    code, _, err = run_cli(["report", "--run", "run-a", "--out", str(b)], capsys)
    assert code == 2 and err.count("kbisect: error:") == 1, err
    assert f"--out {b}: holds run run-b's report" in err and "not run run-a's" in err
    assert _files(b) == before  # before: B's result.json, evidence and report were run A's


def test_report_out_refuses_a_directory_of_other_files(kbisect_home, _results_in_tmp, tmp_path, capsys) -> None:
    from tests.test_uncovered import run_cli

    _run("run-a", "5.7")
    mine = tmp_path / "papers"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\documentclass{article}\n")
    (mine / "report.html").write_text("<p>my own report</p>\n")
    code, _, err = run_cli(["report", "--run", "run-a", "--out", str(mine)], capsys)
    assert code == 2 and f"--out {mine}: holds thesis.tex, which this report did not write" in err, err
    assert (mine / "report.html").read_text() == "<p>my own report</p>\n" and sorted(_files(mine)) == ["report.html",
                                                                                                     "thesis.tex"]
    code, _, err = run_cli(["report", "--run", "run-a", "--out", str(_results_in_tmp)], capsys)
    assert code == 2 and "which this report did not write" in err  # the results directory itself


def test_report_out_rewrites_its_own_earlier_copy(kbisect_home, _results_in_tmp, tmp_path, capsys) -> None:
    from tests.test_uncovered import run_cli

    _run("run-a", "5.7")
    out = tmp_path / "copy"
    for _ in range(2):  # new, then its own earlier copy
        code, _, err = run_cli(["report", "--run", "run-a", "--out", str(out)], capsys)
        assert code == 0, err
    assert json.loads((out / "result.json").read_text())["run_id"] == "run-a"
    code, _, err = run_cli(["report", "--run", "run-a"], capsys)  # the run's own directory, as before
    assert code == 0, err


def test_report_out_refuses_another_sweeps_directory(kbisect_home, capsys) -> None:
    from orchestrator.adapters.store import Store, SweepLog
    from tests.test_uncovered import run_cli

    store = Store()
    try:
        first, _, _ = SweepLog(store).open("nightly", {"bugs": [], "columns": {}})
        second, _, _ = SweepLog(store).open("weekly", {"bugs": [], "columns": {}})
    finally:
        store.close()
    code, out, err = run_cli(["report", "--sweep", str(first)], capsys)
    assert code == 0, err
    theirs = Path(out.split("matrix: ", 1)[1].splitlines()[0]).parent
    before = _files(theirs)
    code, _, err = run_cli(["report", "--sweep", str(second), "--out", str(theirs)], capsys)
    assert code == 2 and f"holds sweep {first}'s report" in err and f"not sweep {second}'s" in err, err
    assert _files(theirs) == before
