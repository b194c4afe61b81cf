"""The root click group and the error boundary every command runs inside.

Bad input or trouble a command cannot recover from is one `kbisect: error: ...` line on stderr
and exit 2 (or the command's documented code), never a traceback: a KbisectError as raised, a
click usage error in the same form, and as the last resort an OSError (a full disk, a file that
cannot be read) or a results-database error named by what failed. The input checks commands
share (`check_input_file`, `check_output_file`, `check_output_dir`) run before anything is
fetched or booted, so a typo costs nothing.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import stat
import sys
import tempfile
import threading
from pathlib import Path

import click

from orchestrator.core.errors import KbisectError

MAX_ERROR_CHARS = 2000  # an error line quoting a huge input is cut in the middle


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kbisect")
def cli() -> None:
    """kbisect: find which kernel version broke a reproducer, and why."""
    from orchestrator.adapters import config

    config.resolve_paths()  # once, at start: make -C TREE O=relative would build inside the tree
    home = os.environ.get("KBISECT_HOME")
    if home and os.path.lexists(home) and not os.path.isdir(home):
        raise KbisectError(f"KBISECT_HOME={home}: not a directory")


def mainline_options(command):
    """--allow-unverified and --keyring: how far a mainline build's packages must be verified."""
    command = click.option("--keyring", default=None, type=click.Path(dir_okay=False),
                           help="Verify mainline CHECKSUMS.gpg with gpgv against this keyring before trusting "
                                "any hash (default $KBISECT_MAINLINE_KEYRING).")(command)
    return click.option("--allow-unverified", is_flag=True,
                        help="Offer mainline builds published without CHECKSUMS (before March 2015), marked "
                             "unverified (default $KBISECT_ALLOW_UNVERIFIED=1).")(command)


def check_keyring(keyring: str | None) -> str | None:
    """The keyring path, checked before anything is listed or fetched (a keyring is binary:
    only that it is a readable regular file of a sane size)."""
    if keyring:
        check_input_file("--keyring", keyring, max_bytes=64 << 20, text=False)
    return keyring


def check_input_file(option: str, path: str | Path, *, max_bytes: int, text: bool = True) -> bytes:
    """The bytes of the file an option names, or one line saying why it cannot be used: missing,
    a directory, a fifo or device (reading one would block or never end), larger than
    `max_bytes`, unreadable, or (with `text`) not UTF-8."""
    where = f"{option} {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KbisectError(f"{where}: no such file") from None
    except OSError as exc:
        raise KbisectError(f"{where}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise KbisectError(f"{where}: a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise KbisectError(f"{where}: not a regular file (a fifo, socket or device)")
    if st.st_size > max_bytes:
        raise KbisectError(f"{where}: {st.st_size} bytes, more than the {max_bytes} this option reads")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise KbisectError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # a file that grows, or /proc-like sizes that lie
        raise KbisectError(f"{where}: more than the {max_bytes} bytes this option reads")
    if text:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KbisectError(f"{where}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}: "
                               "a binary file?)") from None
    return data


def check_output_dir(option: str, path: str | Path) -> Path:
    """A directory a command will write into at its end (reports, a Markdown table), created if
    missing and shown writable now by creating and removing a file in it: a full or read-only
    disk, or a file where the directory should be, fails before anything is booted."""
    path = Path(path)
    where = f"{option} {path}"
    if path.exists() and not path.is_dir():
        raise KbisectError(f"{where}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kbisect-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KbisectError(f"{where}: cannot write there: {exc.strerror or exc}") from None
    return path


def check_results_dir() -> Path:
    """The reports directory ($KBISECT_RESULTS, default results/), checked writable before a
    bisection or sweep boots anything: its report is written only at the end."""
    from orchestrator.adapters import config

    where = os.environ.get("KBISECT_RESULTS") or str(config.REPO_ROOT / "results")
    if os.path.lexists(where) and not os.path.isdir(where):
        raise KbisectError(f"results directory {where} ($KBISECT_RESULTS): not a directory")
    try:
        path = config.results_dir()
    except OSError as exc:
        raise KbisectError(f"results directory {where} ($KBISECT_RESULTS): {exc.strerror or exc}") from None
    return check_output_dir("results directory", path)


def check_output_file(option: str, path: str | Path) -> Path:
    """A file a command writes at its end, checked before anything is booted: its directory must
    exist (a typo'd directory is not created) and be writable, and the file, if present, must be
    a regular file (a fifo would block the command after all its work)."""
    path = Path(path)
    where = f"{option} {path}"
    parent = path.parent
    if not parent.is_dir():
        raise KbisectError(f"{where}: {'no directory' if not parent.exists() else 'not a directory:'} {parent}")
    if path.is_dir():
        raise KbisectError(f"{where}: a directory, not a file")
    if path.exists() and not path.is_file():
        raise KbisectError(f"{where}: not a regular file (a fifo, socket or device)")
    check_output_dir(option, parent)
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised where the process is so every `finally` (staging dirs, locks,
    VMs) runs: a service manager's stop is a clean stop at any point, not only inside a probe."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_terminated(signum, _frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a failure becomes one line on stderr and a non-zero exit, never a traceback."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = _run(argv)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if code not in (None, 0):
        sys.exit(code)


def _run(argv: list[str] | None) -> int | str | None:
    """The command's exit status; every failure mapped to its one line here."""
    try:
        try:
            cli.main(args=argv, prog_name="kbisect", standalone_mode=False)
            code: int | str | None = 0
        except SystemExit as exc:  # the commands' own exit statuses (bisect 3/4, run 0/1/125...)
            code = exc.code
        _flush_stdout()
        return code
    except Terminated as exc:
        click.echo(f"kbisect: stopped by signal {exc.signum}", err=True)
        return 128 + exc.signum
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # `kbisect` alone: the help text, as click prints it
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        return _fail(exc.format_message() + hint, exc.exit_code)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except click.Abort as exc:
        if isinstance(exc.__cause__, Terminated):  # click's main() turns any KeyboardInterrupt into Abort
            click.echo(f"kbisect: stopped by signal {exc.__cause__.signum}", err=True)
            return 128 + exc.__cause__.signum
        click.echo("kbisect: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("kbisect: interrupted", err=True)
        return 130
    except KbisectError as exc:
        return _fail(str(exc), exc.exit_code)
    except BrokenPipeError:  # the reader of stdout went away (`kbisect ... | head`)
        _silence_stdout()
        return 1
    except OSError as exc:  # last resort: trouble a command did not name itself
        return _fail(os_error_text(exc), KbisectError.exit_code)
    except sqlite3.Error as exc:  # the results database is damaged or its disk is full
        return _fail(f"results database {results_db()}: {exc}", KbisectError.exit_code)


# click >= 8.2 raises this for a group called without a command; older clicks print the help itself
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def results_db() -> str:
    """Where the results database is (adapters.store's default), for an error line about it."""
    return str(Path(os.environ.get("KBISECT_HOME") or Path.home() / ".cache" / "kbisect") / "results.db")


def _fail(message: str, code: int) -> int:
    click.echo(f"kbisect: error: {one_line(message)}", err=True)
    _settle_stdout()
    return code


def one_line(message: str) -> str:
    """`message` as one printable line: line breaks become " | ", other control characters
    their escapes, and an overlong message is cut in the middle."""
    text = " | ".join(part.strip() for part in message.splitlines() if part.strip())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text or "unknown error"


def os_error_text(exc: OSError) -> str:
    """"<file>: <strerror>" (both files for a rename), or what stdout's failure means."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write: {reason}"
    return reason


def _flush_stdout() -> None:
    """Push buffered output out now, so a full disk or closed pipe on stdout is reported here as
    one line rather than by the interpreter's final flush ("Exception ignored ...")."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the output: {exc.strerror or exc}") from None


def _settle_stdout() -> None:
    """After a failure: if stdout cannot take what is buffered (it may be what failed), drop it."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null once stdout failed, so the interpreter's last flush of what is
    still buffered cannot print a second error (the pattern the Python docs give for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real fd (a test's captured stdout)
        pass
