"""The build use case: a source tree (directory, git revision, Debian's linux-source) and a config
to a kernel like any other.

The result is installed as a `local:` kernel (vmlinuz, lib/modules, config, build.json saying
how it was built), so it is content-keyed, cached and probed like a downloaded one, and
`kbisect kernels show local:NAME` tells its provenance. The name is a hash of the inputs
(tree identity and revision, config, patches): the same git revision with the same config is
built once; a `--tree DIR` of the user's is a mutable thing, so it is always handed to make,
which rebuilds only what changed. Patches are applied for the build and reversed afterwards
(a shared Debian source tree or the user's tree is left as it was found).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.adapters import cache, config
from orchestrator.adapters.builds import kmake, trees
from orchestrator.adapters.builds.kmake import BuildPlan
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.progress import StepLog
from orchestrator.adapters.sources.local import LocalSource
from orchestrator.adapters.variants.packages import DebianPackages, PackageFetcher
from orchestrator.adapters.variants.patches import apply_patch, reverse_patch
from orchestrator.app.kernels import fetch_kernel
from orchestrator.core.bug import Bug
from orchestrator.core.errors import KbisectError
from orchestrator.core.kconfig import Requirement, check_overrides


@dataclass
class BuildRequest:
    """`kbisect kernels build` as given: exactly one source, a config, patches."""

    tree: Path | None = None
    repo: Path | None = None
    rev: str | None = None
    linux_source: str | None = None  # a Debian line: "6.1"
    linux_source_version: str | None = None  # a package version of it (default: the newest)
    exact_source: bool = False  # that very version or an error (a control is its base's own source)
    config: str = "guest"  # guest, base, or a file's path
    base: str | None = None  # the prebuilt kernel whose config `base` takes
    patches: list[Path] = field(default_factory=list)
    bugs: list[Bug] = field(default_factory=list)  # whose kconfig requirements the guest config meets
    # `--kconfig`: options set last, each replacing a requirement of the same option (the
    # catalog's config with CONFIG_DEBUG_INFO_BTF=n: a kernel without BTF, compiled alike)
    kconfig: list[Requirement] = field(default_factory=list)
    jobs: int = 0
    name: str | None = None  # the local:NAME to install as (a commit bisection names its steps)


@dataclass
class BuildDeps:
    packages: Callable[[], PackageFetcher] = DebianPackages
    fetch: Callable[[str], UnpackedKernel] = fetch_kernel
    local_root: Callable[[], Path] = lambda: LocalSource().root


def check_request(req: BuildRequest) -> None:
    """Bad input, one line, before anything is downloaded or built."""
    given = [n for n, v in (("--tree", req.tree), ("--repo", req.repo), ("--linux-source", req.linux_source)) if v]
    if len(given) != 1:
        raise KbisectError("give exactly one source: --tree DIR, --repo PATH --rev REV, or --linux-source X.Y"
                           + (f" (got {', '.join(given)})" if given else ""))
    if req.repo and not req.rev:
        raise KbisectError("--repo needs --rev (the revision to build)")
    if req.rev and not req.repo:
        raise KbisectError("--rev needs --repo")
    if req.config == "base" and not req.base:
        raise KbisectError("--config base needs --base SPEC (the prebuilt kernel whose config to take)")
    if req.config not in kmake.CONFIG_MODES and not Path(req.config).is_file():
        raise KbisectError(f"--config {req.config}: not guest, base, or a readable config file")
    for patch in req.patches:
        if not Path(patch).is_file():
            raise KbisectError(f"--patch {patch}: no such file")
        if not Path(patch).read_bytes().strip():  # `patch` applies an empty file silently, exit 0
            raise KbisectError(f"--patch {patch}: empty, it holds no change to apply")
    try:
        check_overrides(req.kconfig)
    except ValueError as e:
        raise KbisectError(f"--kconfig {e}") from None


def source_repo(req: BuildRequest, deps: BuildDeps, progress: StepLog) -> tuple[Path | None, dict]:
    """The git repository a Debian source is built from (downloaded and recorded when new), and
    how it was had; (None, {}) for the other sources, which name their tree or clone themselves."""
    if req.linux_source:
        return trees.debian_repo(str(req.linux_source), deps.packages(), progress, req.linux_source_version,
                                 exact=req.exact_source)
    return None, {}


def source_tree(req: BuildRequest, repo: Path | None, origin: dict, progress: StepLog) -> trees.SourceTree:
    if req.tree:
        return trees.from_dir(req.tree)
    if req.repo:
        return trees.from_git(req.repo, str(req.rev), progress)
    tree = trees.from_git(repo, trees.DEBIAN_TAG, progress,
                          name=f"--linux-source {req.linux_source} ({origin['package']} {origin['version']})")
    tree.origin.update(origin)
    return tree


def plan_for(req: BuildRequest, tree: trees.SourceTree, deps: BuildDeps) -> BuildPlan:
    # sorted: the same reproducers named in another order are the same config (one build directory)
    requirements = sorted({r for bug in req.bugs for r in bug.kconfig}, key=str)
    if req.config == "guest":
        return BuildPlan(tree, "guest", requirements=requirements, patches=list(req.patches), jobs=req.jobs,
                         overrides=list(req.kconfig))
    if req.config == "base":
        base = deps.fetch(str(req.base))
        if base.config is None:
            raise KbisectError(f"{req.base} has no kernel config to build with")
        return BuildPlan(tree, "base", base.config.read_text(), requirements, list(req.patches), req.jobs,
                         list(req.kconfig))
    return BuildPlan(tree, "file", Path(req.config).read_text(), requirements, list(req.patches), req.jobs,
                     list(req.kconfig))


def inputs_key(plan: BuildPlan) -> str:
    """What decides the result: tree identity and revision, config, patches' bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps([plan.tree.identity, plan.tree.origin.get("commit") or plan.tree.origin.get("version"),
                              plan.config_key()]).encode())
    for patch in plan.patches:
        digest.update(b"\0" + Path(patch).read_bytes())
    return digest.hexdigest()[:12]


def build_kernel(req: BuildRequest, deps: BuildDeps | None = None, progress: StepLog | None = None) -> UnpackedKernel:
    """The kernel for `req`, built (or found built) and fetched as `local:NAME`."""
    deps = deps or BuildDeps()
    progress = progress or StepLog(label="build")
    check_request(req)
    repo, origin = source_repo(req, deps, progress)
    # one build per source at a time, from checkout to install: a git worktree is checked out
    # and a shared source tree patched for the build, so nobody else may touch it meanwhile
    with cache.locked(_source_lock(req, repo)):
        tree = source_tree(req, repo, origin, progress)
        plan = plan_for(req, tree, deps)
        key = inputs_key(plan)
        name = req.name or f"{tree.version}-{plan.mode}-{key}"
        dest = deps.local_root() / name
        reusable = tree.origin.get("kind") != "tree" and _built_from(dest) == key
        if not reusable:
            _build_into(plan, dest, key, progress)
        else:
            progress.note(f"built earlier: {dest}")
    return deps.fetch(f"local:{name}")


def _source_lock(req: BuildRequest, repo: Path | None) -> Path:
    """The lock of the source a request builds from: a tree, or a clone (Debian's source is one:
    a `--repo` naming it and a `--linux-source` build share the lock as they share the worktree)."""
    if req.tree:
        key = f"tree:{Path(req.tree).expanduser().resolve()}"
    else:
        key = f"git:{Path(repo or req.repo or '').expanduser().resolve()}"
    return config.subdir("builds") / "locks" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _built_from(dest: Path) -> str | None:
    """The inputs key of the build installed at `dest` (None: nothing finished is there)."""
    return (kmake.read_record(dest) or {}).get("inputs")


def _build_into(plan: BuildPlan, dest: Path, key: str, progress: StepLog) -> None:
    """Configure, make and install under the build directory's lock; `dest` appears whole or not at all."""
    obj, lock = kmake.locked_obj(plan)
    staging = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    t0 = time.monotonic()
    with lock, _patched(plan.tree.path, plan.patches, progress):
        log_path = obj / "build.log"
        try:
            with open(log_path, "wb") as log:
                with progress.step(f"configuring ({plan.mode})"):
                    resolved = kmake.configure(plan, obj, log)
                kmake.build(plan, obj, log, progress)
                shutil.rmtree(staging, ignore_errors=True)
                with progress.step("installing modules"):
                    release = kmake.install(plan, obj, staging, log)
            shutil.copyfile(log_path, staging / "build.log")
            kmake.write_record(staging, {
                "release": release, "inputs": key, "source": plan.tree.origin, "tree": str(plan.tree.path),
                "version": plan.tree.version, "config": plan.mode, "config_key": plan.config_key(),
                "requirements": [str(r) for r in plan.checked()],
                "overrides": [str(r) for r in plan.overrides],
                "patches": [{"name": Path(p).name, "sha256": cache.sha256_file(Path(p))} for p in plan.patches],
                "build_dir": str(obj), "seconds": round(time.monotonic() - t0, 1), "built_at": time.time(),
                "modules": sum(1 for _ in (staging / "lib" / "modules" / release).rglob("*.ko*")),
                "options": len(resolved)})
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    progress.note(f"built {dest.name} in {time.monotonic() - t0:.0f} s (log: {dest / 'build.log'})")


class _patched:
    """Patches applied to the tree for one build, reversed afterwards in reverse order.

    All or nothing: each is checked (apply_patch's dry run) before it is applied, and when one
    does not fit, those applied before it are reversed before the error is raised (before, they
    stayed in the user's tree and the next build included them)."""

    def __init__(self, tree: Path, patches: list[Path], progress: StepLog) -> None:
        self.tree, self.patches, self.progress, self.applied = tree, patches, progress, []

    def __enter__(self) -> None:
        try:
            for patch in self.patches:
                with self.progress.step(f"applying {Path(patch).name}"):
                    apply_patch(Path(patch), self.tree)
                self.applied.append(patch)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        while self.applied:
            reverse_patch(Path(self.applied.pop()), self.tree)
