"""`kbisect kernels build`: a whole kernel from a source tree, a git revision or Debian's
linux-source, usable anywhere a kernel spec is (it prints `local:NAME`).

Registered on the `kernels` group owned by orchestrator/cli/kernels.py, like `kernels patch`.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.base import check_input_file
from orchestrator.cli.kernels import kernels
from orchestrator.core.errors import KbisectError
from orchestrator.core.kconfig import Requirement

MAX_PATCH_BYTES = 64 << 20


@kernels.command("build")
@click.option("--tree", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="A Linux source tree to build as it is (make rebuilds what changed).")
@click.option("--repo", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="A Linux git clone; with --rev, built in kbisect's own worktree of it.")
@click.option("--rev", default=None, metavar="REV", help="The revision of --repo to build.")
@click.option("--linux-source", default=None, metavar="X.Y",
              help="Debian's linux-source-X.Y package (through apt): the exact source of a Debian line.")
@click.option("--linux-source-version", default=None, metavar="VERSION",
              help="That package's version (default: the newest apt can download).")
@click.option("--config", "config_mode", default="guest", show_default=True, metavar="guest|base|FILE",
              help="guest: defconfig + what kbisect's VM and the reproducers need; base: --base's own "
                   "config; FILE: a config of yours. olddefconfig resolves the rest.")
@click.option("--base", default=None, metavar="SPEC", help="With --config base: the prebuilt kernel whose config to use.")
@click.option("--patch", "patches", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="A patch applied for this build (-p1, no fuzz), reversed afterwards (repeatable).")
@click.option("--bug", "bug_ids", multiple=True, metavar="ID",
              help="Meet this reproducer's kconfig: requirements (repeatable; default: the whole catalog).")
@click.option("--kconfig", "kconfig", multiple=True, metavar="CONFIG_X[=V]",
              help="Set this option after the reproducers' requirements, replacing theirs of the same "
                   "option, and check it in the result (repeatable). E.g. CONFIG_DEBUG_INFO_BTF=n: the "
                   "catalog's config without BTF, same debug info, so ccache serves the objects.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="make -j (default: one per core).")
def build_cmd(tree: Path | None, repo: Path | None, rev: str | None, linux_source: str | None,
              linux_source_version: str | None, config_mode: str, base: str | None, patches: tuple[Path, ...],
              bug_ids: tuple[str, ...], kconfig: tuple[str, ...], jobs: int | None) -> None:
    """Build bzImage and modules out of tree (ccache, a reused build directory per tree and
    config) and cache the result as a kernel like any other. Prints its spec, `local:NAME`;
    `kbisect kernels show local:NAME` says how it was built. Progress and the build log's path
    go to stderr."""
    from orchestrator.adapters import catalog
    from orchestrator.app.build import BuildRequest, build_kernel, check_request

    for patch in patches:
        check_input_file("--patch", patch, max_bytes=MAX_PATCH_BYTES)
    if config_mode not in ("guest", "base"):
        check_input_file("--config", Path(config_mode), max_bytes=4 << 20)
    bugs = [catalog.resolve(b) for b in bug_ids] if bug_ids else catalog.all_bugs()
    try:
        overrides = [Requirement.parse(k) for k in kconfig]
    except ValueError as e:
        raise KbisectError(f"--kconfig: {e}") from None
    req = BuildRequest(tree=tree, repo=repo, rev=rev, linux_source=linux_source,
                       linux_source_version=linux_source_version, config=config_mode, base=base,
                       patches=list(patches), bugs=bugs, kconfig=overrides, jobs=jobs or 0)
    check_request(req)
    if base and config_mode != "base":
        raise KbisectError("--base is only for --config base")
    kernel = build_kernel(req)
    click.echo(f"{kernel.root}", err=True)
    click.echo(kernel.spec)
