"""Real git histories of any shape for the commit-graph tests: each commit is written with
`git commit-tree` from its own parents (merges included) and a committer date of its own, so a
test decides both the graph and the order `git log` lists it in by date. Every commit adds one
file; a merge carries the files of all its parents."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

Spec = tuple[str, Sequence[str], str]  # (name, parent names, the file it adds)


def _git(root: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, text=True, check=True,
                          env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", **(env or {})}).stdout.strip()


def graph_repo(root: Path, commits: Sequence[Spec], *, branch: str = "master") -> dict[str, str]:
    """Create the history; name -> sha. Commits are dated in the order given (one hour apart)."""
    root.mkdir(parents=True, exist_ok=True)
    _git(root, "init", "-q", f"--initial-branch={branch}")
    shas: dict[str, str] = {}
    files: dict[str, dict[str, str]] = {}
    for n, (name, parents, path) in enumerate(commits):
        tree_files = {k: v for p in parents for k, v in files[p].items()}
        tree_files[path] = _git(root, "hash-object", "-w", "--stdin", stdin=f"/* {name} */\n")
        files[name] = tree_files
        _git(root, "read-tree", "--empty")
        for rel, blob in sorted(tree_files.items()):
            _git(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}")
        tree = _git(root, "write-tree")
        date = f"{1600000000 + n * 3600} +0000"
        env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        args = [a for p in parents for a in ("-p", shas[p])]
        shas[name] = _git(root, "commit-tree", tree, *args, "-m", name, env=env)
    _git(root, "update-ref", f"refs/heads/{branch}", shas[commits[-1][0]])
    _git(root, "reset", "-q", "--hard", branch)
    return shas


def date_order(root: Path, good: str, bad: str) -> list[str]:
    """The shas `git log --reverse --ancestry-path good..bad` lists (what a line walk bisected)."""
    return _git(root, "log", "--reverse", "--ancestry-path", "--format=%H", f"{good}..{bad}").split()
