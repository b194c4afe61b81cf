"""Guest runtime commands: `kbisect run`, `kbisect image build`, `kbisect gc`.

`kbisect run` follows `git bisect run`'s protocol so it can be the bisect script itself:
exit 0 good, 1 bad, 125 skip. Kernel trouble (app.policy: the kernel cannot be had, built or
booted) is a skip like any other, with the error as its reason on stderr, so `git bisect run`
moves on to another commit. A usage or installation error (unknown bug, bad kernel spec, no
libvirt) exits 128 with one line on stderr, which makes `git bisect run` stop instead of reading
it as "bad".
"""

from __future__ import annotations

import json
import sys

import click

from orchestrator.cli.base import cli, os_error_text, results_db
from orchestrator.core.errors import KbisectError

ABORT_BISECT = 128


class RunSetupError(KbisectError):
    """A `kbisect run` that could not test the kernel at all: stop a `git bisect run`."""

    exit_code = ABORT_BISECT


class BisectRunCommand(click.Command):
    """`kbisect run` is a `git bisect run` script, where 1..127 (but 125) means bad: every failure
    to test the kernel at all, a usage error or a full disk included, must exit 128 instead of
    the CLI's usual 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = ABORT_BISECT
            raise

    def invoke(self, ctx: click.Context):
        import sqlite3

        try:
            return super().invoke(ctx)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise RunSetupError(os_error_text(exc)) from None
        except sqlite3.Error as exc:
            raise RunSetupError(f"results database {results_db()}: {exc}") from None


@cli.command("run", cls=BisectRunCommand)
@click.option("--bug", "bug_ref", required=True, metavar="ID_OR_DIR", help="Catalog id or reproducer directory.")
@click.option("--kernel", "kernel_spec", required=True, metavar="SOURCE:VERSION",
              help="e.g. debian:6.1.0-54-cloud-amd64 (or an unpacked kernel directory).")
@click.option("--repeat", type=click.IntRange(1, 1000), default=None, help="Probes of this kernel (fresh VM each).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict record(s) as JSON on stdout.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="auto tries KVM once per machine and remembers the answer.")
@click.option("--connect", "uri", default="qemu:///system", show_default=True, help="libvirt URI.")
@click.option("--memory", "memory_mb", type=click.IntRange(128, 1 << 20), default=1024, show_default=True, help="Guest MiB.")
@click.option("--cpus", type=click.IntRange(1, 64), default=1, show_default=True, help="Guest vCPUs.")
@click.option("--boot-timeout", type=click.FloatRange(5, 3600), default=None,
              help="Seconds to reach SSH before the probe is a boot-failure skip (default 90 KVM, 180 TCG).")
@click.option("--mirror", default=None, help="Package mirror handed to the kernel source.")
@click.option("--timeout", "run_timeout", type=click.IntRange(1, 86400), default=None,
              help="Override the reproducer's own timeout (seconds inside the guest).")
@click.option("--quiet", "-q", is_flag=True, help="No progress or reproducer output on stderr.")
def run_cmd(bug_ref, kernel_spec, repeat, as_json, accel, uri, memory_mb, cpus, boot_timeout, mirror, run_timeout,
            quiet) -> None:
    """Boot KERNEL in a throw-away VM, run the reproducer, exit 0 good / 1 bad / 125 skip."""
    from orchestrator.adapters import catalog
    from orchestrator.adapters.guest import probe
    from orchestrator.app import run
    from orchestrator.app.policy import Decision, decide, skip_record
    from orchestrator.core.verdict import Verdict

    bug = None
    try:
        bug = catalog.resolve(bug_ref)
        if run_timeout is not None:
            bug.timeout = run_timeout
        n = repeat or bug.repeat.runs or 1
        with probe.terminate_as_interrupt():
            verdict, records = run.run_repeated(
                kernel_spec,
                bug,
                repeat=n,
                mirror=mirror,
                accel=accel,
                uri=uri,
                memory_mb=memory_mb,
                cpus=cpus,
                boot_timeout=boot_timeout,
                progress=not quiet,
                echo_output=not quiet,
            )
    except KbisectError as exc:
        if bug is not None and decide(exc) is Decision.SKIP:
            click.echo(f"kbisect: skip: {exc}", err=True)
            verdict, records = Verdict.SKIP, [skip_record(kernel_spec, bug.id, exc)]
        elif isinstance(exc, RunSetupError) or exc.exit_code == ABORT_BISECT:
            raise
        else:
            raise RunSetupError(str(exc)) from None
    if as_json:
        out = [r.to_json() for r in records]
        payload = out[0] if len(out) == 1 else {"verdict": verdict.value, "probes": out}
        click.echo(json.dumps(payload, indent=2))
    elif len(records) > 1:
        click.echo(f"{verdict.value}: {sum(r.verdict.value == 'bad' for r in records)}/{len(records)} bad", err=True)
    sys.exit(verdict.exit_code)


@cli.group("image")
def image_group() -> None:
    """The guest root image (built from Debian packages, cached by recipe hash)."""


@image_group.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the image for this recipe exists.")
def image_build(force: bool) -> None:
    """Build (or find) the root image for the recipe in images/ and print its path."""
    from orchestrator.adapters.guest import image

    img = image.rebuild(progress=True) if force else image.ensure(progress=True)
    click.echo(str(img.path))


@image_group.command("info")
def image_info() -> None:
    """Recipe hash, whether it is built, and where."""
    from orchestrator.adapters.guest import image

    img = image.cached()
    rh = image.recipe_hash()
    if img is None:
        click.echo(f"recipe {rh}: not built (kbisect image build)")
    else:
        click.echo(f"recipe {rh}: {img.path} ({img.meta.get('size_bytes', 0) / 2**20:.0f} MiB, suite {img.meta.get('suite')})")


@cli.command("gc")
@click.option("--connect", "uri", default="qemu:///system", show_default=True, help="libvirt URI.")
def gc_cmd(uri: str) -> None:
    """Remove what dead (e.g. killed) kbisect processes left: VMs, overlays and run dirs, partial
    downloads (.part), unpack scratch and staging, apt work dirs, image/boot-file/variant builds."""
    from orchestrator.app import gc

    removed = gc.collect(uri)
    for r in removed:
        click.echo(f"removed {r}", err=True)
    click.echo(f"gc: removed {len(removed)} leftover(s)", err=True)
