"""The root click group and the error boundary every command runs inside."""

from __future__ import annotations

import signal
import sys
import threading
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


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised where the process is so every `finally` (staging dirs, locks,
    VMs) runs: a service manager's stop is a clean stop at any point, not only inside a probe."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a KbisectError becomes one line on stderr and a non-zero exit, never a traceback."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _run(argv)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="kbisect", standalone_mode=False)
    except Terminated as exc:
        click.echo(f"kbisect: stopped by signal {exc.signum}", err=True)
        sys.exit(128 + exc.signum)
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
