"""`kbisect kernels patch`: build a patched-module variant of a distro kernel.

Registered on the `kernels` group owned by orchestrator/cli/kernels.py, so every kernel command
lives under one family without this module editing that file.
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.base import check_input_file
from orchestrator.cli.kernels import kernels
from orchestrator.core.errors import KbisectError

MAX_PATCH_BYTES = 16 << 20  # a module revert is kilobytes; this only stops a wrong file early


@kernels.command("patch")
@click.option("--base", "base_spec", required=True, metavar="SOURCE:VERSION",
              help="Stock kernel to patch, e.g. debian:6.1.0-54-cloud-amd64.")
@click.option("--patch", "patch_file", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Unified diff (a/ b/ paths) touching module sources only.")
@click.option("--name", default=None, metavar="NAME",
              help="Variant name (default: the patch file's stem); the result is SOURCE:VERSION+NAME.")
def patch_cmd(base_spec: str, patch_file: Path, name: str | None) -> None:
    """Rebuild the modules a patch touches against the kernel's own headers, source and compiler,
    and cache the result as the kernel SOURCE:VERSION+NAME (usable anywhere a spec is).

    Prints the new spec on stdout; progress goes to stderr. A variant of that name built from
    other patch bytes is rebuilt and replaced.
    """
    # function-level import: the variant builder pulls in apt, rich and the sources (~0.4 s),
    # which every other kbisect command would pay for at startup
    from orchestrator.adapters.variants import build_variant
    from orchestrator.core.versions import parse_spec

    # checked before the base kernel, the sources and the toolchain are fetched
    try:
        parse_spec(base_spec)
    except KbisectError as exc:
        raise KbisectError(f"--base: {exc}") from None
    check_input_file("--patch", patch_file, max_bytes=MAX_PATCH_BYTES)
    kernel = build_variant(base_spec, patch_file, name)
    click.echo(f"{kernel.root}", err=True)
    click.echo(kernel.spec)
