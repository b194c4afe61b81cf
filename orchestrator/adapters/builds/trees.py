"""Where a kernel build's source comes from: a directory, a git revision, or Debian's
linux-source-X.Y package.

Each gives a `SourceTree`: the path to build in and an identity for the reusable build
directory (one per tree and config, so a commit bisection's next step rebuilds only what
changed). A git revision is checked out in one worktree per repository, kept under
$KBISECT_HOME/builds/worktrees, never in the user's own checkout. Debian's source is unpacked
once per package version under $KBISECT_HOME/builds/src (staged, then renamed: a killed unpack
leaves no half tree that looks finished), recorded as a git commit and then built as a git revision.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.adapters import cache, config
from orchestrator.adapters.fsutil import run_tool
from orchestrator.adapters.progress import StepLog
from orchestrator.adapters.variants.packages import PackageFetcher
from orchestrator.core.errors import KbisectError

_MAKEFILE_VERSION_RE = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)\s*$", re.MULTILINE)
_TARBALL_RE = re.compile(r"^\.?/?usr/src/linux-source-[^/]+\.tar\.(xz|gz|bz2)$")


@dataclass
class SourceTree:
    """A Linux source tree ready to build, and how it was had (kept in build.json)."""

    path: Path
    identity: str  # what the reusable build directory is keyed by (not the revision)
    version: str  # Makefile's VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]
    origin: dict = field(default_factory=dict)  # {"kind": "tree"|"git"|"debian", ...}
    # how errors call it: what the user gave (`--tree T`, `--repo R at REV`, `--linux-source X.Y`),
    # never kbisect's worktree path, which the user never typed
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or str(self.path)


def makefile_version(tree: Path, name: str | None = None) -> str:
    """"6.1.190" from the top Makefile; KbisectError when `tree` is no Linux source tree, naming
    it as `name` (what the user gave: `--repo R at REV`, not kbisect's worktree of it)."""
    name = name or str(tree)
    try:
        text = (tree / "Makefile").read_text(errors="replace")
    except OSError:
        raise KbisectError(f"{name} is not a Linux source tree (no top-level Makefile)") from None
    fields = dict(_MAKEFILE_VERSION_RE.findall(text[:4000]))
    if not fields.get("VERSION") or not fields.get("PATCHLEVEL") or not (tree / "Kconfig").is_file():
        raise KbisectError(f"{name} is not a Linux source tree (its Makefile has no VERSION/PATCHLEVEL)")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields.get('SUBLEVEL') or 0}{fields.get('EXTRAVERSION', '')}"


def from_dir(path: Path) -> SourceTree:
    tree = Path(path).expanduser().resolve()
    name = f"--tree {path}"
    if tree.exists() and not tree.is_dir():
        raise KbisectError(f"{name}: a file, not a directory (give the top of a Linux source tree)")
    if not tree.is_dir():
        raise KbisectError(f"{name}: no such directory")
    return SourceTree(tree, f"tree:{tree}", makefile_version(tree, name), {"kind": "tree", "path": str(tree)}, name)


def from_git(repo: Path, rev: str, progress: StepLog, name: str | None = None) -> SourceTree:
    """`rev` of the clone `repo`, checked out (detached, forced) in kbisect's worktree of it.

    `name` is how errors call the source (default `--repo REPO at REV`, as the user gave it).
    A revision that is no Linux tree leaves no worktree registered in the user's clone."""
    from orchestrator.adapters.gitlog import open_repo, resolve_rev

    root = Path(repo).expanduser().resolve()
    name = name or f"--repo {repo} at {rev}"
    try:
        clone = open_repo(root)
        sha = resolve_rev(clone, rev)
    except KbisectError as exc:
        raise KbisectError(f"--repo {repo} --rev {rev}: {exc}") from None
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    worktree = (config.subdir("builds") / "worktrees" / key).resolve()
    with cache.locked(worktree):
        with progress.step(f"checking out {sha[:12]} in {worktree}"):
            _check_out(clone, worktree, sha, name)
        try:
            version = makefile_version(worktree, name)
        except KbisectError:
            remove_worktree(clone, worktree)
            raise
    subject = clone.commit(sha).summary
    return SourceTree(worktree, f"git:{root}", version,
                      {"kind": "git", "repo": str(root), "rev": rev, "commit": sha, "subject": subject}, name)


def _check_out(clone, worktree: Path, sha: str, name: str) -> None:
    """`sha` in kbisect's worktree of `clone`: the one it has when it is whole and registered,
    else a new one (a half-made or unregistered one removed first, by its path)."""
    import git  # GitPython: a slow import, needed only here

    try:
        if (worktree / ".git").exists() and _registered(clone, worktree):
            wt = git.Repo(worktree)
            wt.git.checkout("--detach", "--force", sha)
            wt.git.clean("-fdx", "-q")  # a patch applied for the previous step is gone too
            return
        remove_worktree(clone, worktree)
        clone.git.worktree("add", "--detach", "--force", str(worktree), sha)
    except git.GitCommandError as exc:
        remove_worktree(clone, worktree)
        tail = (exc.stderr or "").strip().splitlines()
        raise KbisectError(f"{name}: checking it out failed: {(tail or [str(exc.status)])[-1]}") from None


def _registered(clone, worktree: Path) -> bool:
    """Whether `clone` lists `worktree` (an absolute, resolved path) among its worktrees."""
    listing = clone.git.worktree("list", "--porcelain")
    return f"worktree {worktree}" in listing.splitlines()


def remove_worktree(clone, worktree: Path) -> None:
    """kbisect's own worktree of `clone` unregistered by its path and its directory removed.

    Never `git worktree prune`: it unregisters every worktree whose directory is missing, the
    user's on an unmounted disk too (git-worktree(1), "prune")."""
    if _registered(clone, worktree):
        # twice: a locked worktree too (git-worktree(1), "remove")
        clone.git.worktree("remove", "--force", "--force", str(worktree))
    shutil.rmtree(worktree, ignore_errors=True)


def debian_repo(line: str, packages: PackageFetcher, progress: StepLog,
                version: str | None = None, exact: bool = False) -> tuple[Path, dict]:
    """Debian's linux-source-LINE (the exact source of a Debian kernel line), unpacked once into a
    git repository of one commit (tagged DEBIAN_TAG); the repository and how it was had.

    Why git: every build of that source (a plain build, a whole-kernel control with a revert, a
    commit bisection over a history someone adds on top) then goes through the one worktree and
    the one build directory of that repository (`from_git`), so only the first is a full build.
    `exact`: `version` itself or an error, never the nearest one.
    """
    if not re.fullmatch(r"\d+\.\d+", line):
        raise KbisectError(f"--linux-source {line!r}: expected a kernel line such as 6.1")
    package = f"linux-source-{line}"
    pkg_version = packages.pick(package, version or f"{line}.999-1")
    if exact and version and pkg_version != version:
        raise KbisectError(f"{package} {version} is not downloadable (nearest: {pkg_version}); a build from "
                           "another version would not be that kernel's own source")
    deb = packages.download(package, pkg_version, progress)
    dest = debian_source_dir(package, pkg_version)
    with cache.locked(dest):
        if not (dest / "Makefile").is_file():
            _unpack_source(deb.path, dest, progress)
        if not _has_tag(dest):
            _commit_source(dest, f"Debian {package} {pkg_version}", progress)
    return dest, {"kind": "debian", "package": package, "version": pkg_version, "deb": deb.path.name}


DEBIAN_TAG = "kbisect/debian-source"  # the commit of the package's source as Debian ships it


def debian_source_dir(package: str, pkg_version: str) -> Path:
    """Where linux-source-X.Y at `pkg_version` is unpacked (a git repository, see debian_repo)."""
    return config.subdir("builds") / "src" / f"{package}_{pkg_version.replace(':', '%3a')}"


def _has_tag(repo: Path) -> bool:
    if not (repo / ".git").is_dir():
        return False
    try:
        run_tool(["git", "-C", str(repo), "rev-parse", "-q", "--verify", f"refs/tags/{DEBIAN_TAG}"], "git rev-parse")
    except KbisectError:
        return False
    return True


def _commit_source(repo: Path, message: str, progress: StepLog) -> None:
    """The unpacked tree as one commit, tagged; a half-made .git of a killed run is made again."""
    shutil.rmtree(repo / ".git", ignore_errors=True)
    git = ["git", "-C", str(repo), "-c", "user.name=kbisect", "-c", "user.email=kbisect@localhost",
           "-c", "core.autocrlf=false", "-c", "gc.auto=0"]
    with progress.step(f"recording {repo.name} as a git commit"):
        run_tool(git + ["init", "-q"], "git init")
        run_tool(git + ["add", "-f", "-A", "."], "git add")  # Debian's .gitignore ignores the top level
        run_tool(git + ["commit", "-q", "--no-verify", "-m", message], "git commit")
        run_tool(git + ["tag", DEBIAN_TAG], "git tag")  # last: its presence says the repository is whole


def _unpack_source(deb: Path, dest: Path, progress: StepLog) -> None:
    """The tarball inside linux-source-X.Y's .deb, unpacked into `dest` through a staging dir."""
    staging = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with progress.step(f"unpacking {deb.name}") as step:
            run_tool(["dpkg-deb", "-x", str(deb), str(staging / "deb")], f"unpacking {deb.name}")
            tarballs = [p for p in (staging / "deb").rglob("linux-source-*.tar.*")
                        if _TARBALL_RE.match(str(p.relative_to(staging / "deb")))]
            if not tarballs:
                raise KbisectError(f"{deb.name} holds no usr/src/linux-source-*.tar.* tarball")
            step.update(f"extracting {tarballs[0].name}")
            (staging / "src").mkdir()
            # tar, not tarfile: several times faster on ~80,000 members; the archive is apt-verified
            run_tool(["tar", "-xf", str(tarballs[0]), "-C", str(staging / "src"), "--no-same-owner",
                      "--no-same-permissions"], f"extracting {tarballs[0].name}")
            tops = [p for p in (staging / "src").iterdir() if p.is_dir()]
            if len(tops) != 1:
                raise KbisectError(f"{tarballs[0].name}: expected one top directory, found {len(tops)}")
            tops[0].rename(staging / "tree")
            shutil.rmtree(staging / "deb")
        shutil.rmtree(dest, ignore_errors=True)
        (staging / "tree").rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
