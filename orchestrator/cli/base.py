"""The root click group and the error boundary every command runs inside."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestrator.core.errors import KbisectError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kbisect")
def cli() -> None:
    """kbisect: find which kernel version broke a reproducer, and why."""


def mainline_options(command):
    """--allow-unverified and --keyring: how far a mainline build's packages must be verified."""
    command = click.option("--keyring", default=None, type=click.Path(dir_okay=False),
                           help="Verify mainline CHECKSUMS.gpg with gpgv against this keyring before trusting "
                                "any hash (default $KBISECT_MAINLINE_KEYRING).")(command)
    return click.option("--allow-unverified", is_flag=True,
                        help="Offer mainline builds published without CHECKSUMS (before March 2015), marked "
                             "unverified (default $KBISECT_ALLOW_UNVERIFIED=1).")(command)


def check_keyring(keyring: str | None) -> str | None:
    """The keyring path, checked before anything is listed or fetched."""
    if keyring and not Path(keyring).is_file():
        raise KbisectError(f"--keyring {keyring}: no such file")
    return keyring


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
