"""`kbisect kernels list|fetch|show`: what a source offers, fetching one kernel, what is cached.

Machine-readable output (`--json`, the unpacked directory printed by `fetch`) goes to
stdout; progress and notes go to stderr, so other tools can pipe these commands.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import click
from rich.console import Console
from rich.table import Table

from orchestrator.adapters import config
from orchestrator.cli.base import check_keyring, cli, mainline_options
from orchestrator.core.errors import KbisectError
from orchestrator.adapters.kernel import MANIFEST, DamagedManifest, UnpackedKernel, refetch_damaged
from orchestrator.core.versions import SOURCES, parse_spec


@cli.group()
def kernels() -> None:
    """List, fetch and inspect kernels from the mainline, ubuntu, debian and local sources."""


def _source_options(source: str, allow_unverified: bool, keyring: str | None) -> dict:
    if source != "mainline":
        if allow_unverified or keyring:
            raise KbisectError("--allow-unverified and --keyring apply to the mainline source only")
        return {}
    return {"allow_unverified": allow_unverified, "keyring": check_keyring(keyring)}


@kernels.command("list")
@click.option("--source", "source", default="mainline", show_default=True, metavar="|".join(SOURCES),
              help="Where the kernels come from.")
@click.option("--mirror", default=None, help="Override the source's base URL (or directory for local).")
@click.option("--from", "lo", default=None, help="Lowest version to list (inclusive).")
@click.option("--to", "hi", default=None, help="Highest version to list (inclusive).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.option("--refresh", is_flag=True, help="Read every directory again (mainline keeps good builds between listings).")
@mainline_options
def list_cmd(source: str, mirror: str | None, lo: str | None, hi: str | None, as_json: bool, refresh: bool,
             allow_unverified: bool, keyring: str | None) -> None:
    """List a source's kernels in ascending order, with availability."""
    from orchestrator.adapters.sources import get_source

    options = _source_options(source, allow_unverified, keyring)
    _check_range(lo, hi)
    if source == "mainline":
        options["refresh"] = refresh
    entries = get_source(source, mirror, **options).list(lo, hi)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    table = Table(title=f"{source} kernels ({len(entries)})")
    table.add_column("version")
    table.add_column("available")
    table.add_column("detail")
    for entry in entries:
        if entry.available:
            detail = entry.build or ""
            if entry.upstream and entry.upstream != entry.version:
                detail = f"{detail} (upstream {entry.upstream})".strip()
        else:
            detail = entry.reason or ""
        table.add_row(entry.version, "yes" if entry.available else "[red]no[/red]", detail)
    Console(width=max(100, shutil.get_terminal_size().columns)).print(table)


def _check_range(lo: str | None, hi: str | None) -> None:
    """--from newer than --to lists nothing, which read as "no kernels" with exit 0: refused.
    Compared when both are upstream versions (6.1, 5.4.41) or both Debian ABI names; other
    forms are left to the source."""
    from orchestrator.core.versions import parse_debian_kernel, parse_version

    if not (lo and hi):
        return
    for parse, key in ((parse_version, lambda v: v), (parse_debian_kernel, lambda k: k.with_flavour(None).sort_key)):
        try:
            low, high = key(parse(lo)), key(parse(hi))
        except KbisectError:
            continue
        if low > high:
            raise KbisectError(f"--from {lo} is newer than --to {hi}: nothing lies between them (swap them)")
        return


@kernels.command("fetch")
@click.argument("spec")
@click.option("--mirror", default=None, help="Override the source's base URL (or directory for local).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"spec", "id", "dir"}: the id is the content hash of what boots.')
@mainline_options
def fetch_cmd(spec: str, mirror: str | None, as_json: bool, allow_unverified: bool, keyring: str | None) -> None:
    """Download, verify and unpack SOURCE:VERSION; print the unpacked directory.

    A `local:` kernel whose directory changed since it was fetched is unpacked again (a new id)."""
    from orchestrator.adapters.sources import fetch

    options = _source_options(parse_spec(spec).source, allow_unverified, keyring)
    # a damaged kernel.json (an unpack a power loss cut short) is removed and unpacked again
    kernel = refetch_damaged(lambda: fetch(spec, mirror, **options))
    if as_json:
        click.echo(json.dumps({"spec": kernel.spec, "id": kernel.id, "dir": str(kernel.root)}))
        return
    click.echo(str(kernel.root))


@kernels.command("show")
@click.argument("spec", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(spec: str | None, as_json: bool) -> None:
    """What the cache holds for SOURCE:VERSION (or every cached kernel without SPEC)."""
    from orchestrator.adapters.sources import cached

    if spec:
        try:
            kernel = cached(spec)
        except DamagedManifest as exc:
            click.echo(f"kbisect: note: {exc}", err=True)
            kernel = None
        if kernel is None:
            raise KbisectError(f"{parse_spec(spec)} is not in the cache (kbisect kernels fetch {spec})")
        found = [kernel]
    else:
        found = []
        root = config.subdir("kernels")
        for manifest in sorted(root.glob(f"*/*/{MANIFEST}")):
            try:
                found.append(UnpackedKernel.load(manifest.parent))
            except (KbisectError, ValueError, KeyError):
                continue
    if as_json:
        click.echo(json.dumps([_describe(k) for k in found], indent=2))
        return
    if not found:
        click.echo("no kernels cached", err=True)
        return
    for kernel in found:
        info = _describe(kernel)
        click.echo(f"{info['spec']}\n  root: {info['root']}\n  kver: {info['kver']}\n"
                   f"  vmlinuz: {info['vmlinuz_bytes']} bytes, config: {info['config']}, "
                   f"System.map: {info['system_map']}, modules: {info['module_files']} files")
        if kernel.commit:
            click.echo(f"  upstream commit: {kernel.commit} ({kernel.extra.get('commit_label', '?')})")
        if kernel.unverified:
            click.echo("  UNVERIFIED: published without CHECKSUMS, fetched with --allow-unverified")
        built = info["build"]
        if built:
            origin = built.get("source") or {}
            what = {"git": lambda o: f"{o.get('repo')} at {o.get('commit', '')[:12]} ({o.get('subject', '')})",
                    "debian": lambda o: f"Debian {o.get('package')} {o.get('version')}",
                    "tree": lambda o: f"the tree {o.get('path')}"}.get(origin.get("kind"), lambda o: str(o))(origin)
            patches = ", ".join(p.get("name", "?") for p in built.get("patches") or []) or "none"
            click.echo(f"  built by kbisect kernels build from {what}, config {built.get('config')}, "
                       f"patches: {patches}, {built.get('seconds')} s; log: {Path(kernel.extra['path']) / 'build.log'}")
        for key, value in sorted(kernel.extra.items()):
            if key not in ("files", "commit", "commit_label"):
                click.echo(f"  {key}: {value}")


def _describe(kernel: UnpackedKernel) -> dict:
    modules = [p for p in kernel.modules.rglob("*.ko*") if not p.is_symlink()] if kernel.modules.is_dir() else []
    return {
        "spec": kernel.spec,
        "root": str(kernel.root),
        "kver": kernel.kver,
        "vmlinuz_bytes": kernel.vmlinuz.stat().st_size if kernel.vmlinuz.exists() else 0,
        "config": kernel.config is not None,
        "system_map": kernel.system_map is not None,
        "module_files": len(modules),
        "extra": kernel.extra,
        "build": _build_record(kernel),
    }


def _build_record(kernel: UnpackedKernel) -> dict | None:
    """How a `kbisect kernels build` kernel was built (its local directory's build.json), or None."""
    from orchestrator.adapters.builds.kmake import read_record

    path = kernel.extra.get("path") if kernel.spec.startswith("local:") else None
    return read_record(Path(path)) if isinstance(path, str) else None
