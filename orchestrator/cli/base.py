"""The root click group and the error boundary every command runs inside."""

from __future__ import annotations

import sys

import click

from orchestrator.errors import KbisectError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kbisect")
def cli() -> None:
    """kbisect: find which kernel version broke a reproducer, and why."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a KbisectError becomes one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="kbisect", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("kbisect: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("kbisect: interrupted", err=True)
        sys.exit(130)
    except KbisectError as exc:
        click.echo(f"kbisect: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
