"""Progress on stderr, one way for every long job (downloads, unpacks, image and variant builds,
boots), so `--json` on stdout stays clean and every display shares one console.

rich is imported lazily where a quiet run need not pay for it (rich.console costs ~70 ms).
"""

from __future__ import annotations

import functools
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


@functools.lru_cache(maxsize=None)
def stderr_console() -> "Console":
    """The one stderr console (rich needs a single owner for its live displays)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)  # log lines never wrap mid-word


def transfer_bar() -> "Progress":
    """Bytes moved (downloads, unpacks): shown only on a terminal, gone when done."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = stderr_console()
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)


def stage_bar(enabled: bool = True) -> "Progress":
    """Stages of a build (the root image): a spinner, the stage, done/total, elapsed time."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("[bold]root image[/] {task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=stderr_console(),
                    disable=not enabled, transient=False)


LOG_EVERY = 30.0  # seconds between a long step's progress lines when stderr is not a terminal


class StepLog:
    """Where a build says what it is doing, step by step; one per build."""

    def __init__(self, console: Console | None = None, label: str = "variants") -> None:
        self.console = console or stderr_console()
        self.label = label  # the prefix of each line: "variants", "build"

    def step(self, text: str) -> "Step":
        return Step(self, text)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{self.label}:[/] {text}", soft_wrap=True)


class Step:
    """A timed step with a live status line; `seconds` is set when it ends."""

    def __init__(self, progress: StepLog, text: str) -> None:
        self.progress, self.text = progress, text
        self.seconds = 0.0

    def __enter__(self) -> "Step":
        self.start = time.monotonic()
        self.status = self.progress.console.status(f"{self.text} …")
        self.status.__enter__()
        return self

    def update(self, text: str) -> None:
        self.status.update(f"{self.text} … {text}")
        # without a terminal the status line is invisible: a long step (a kernel build) says
        # where it is in a line of its own every LOG_EVERY seconds instead
        now = time.monotonic()
        if not self.progress.console.is_terminal and now - getattr(self, "_said", self.start) >= LOG_EVERY:
            self._said = now
            self.progress.note(f"{self.text} … {text}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.status.__exit__(exc_type, exc, tb)
        self.seconds = time.monotonic() - self.start
        mark = "[green]done[/]" if exc_type is None else "[red]failed[/]"
        self.progress.console.print(f"[dim]{self.progress.label}:[/] {self.text}: {mark} ({self.seconds:.1f} s)",
                                    soft_wrap=True)


class StatusLine:
    """Phase names on stderr (rich status line), reproducer output streamed beneath it.

    rich is imported only when enabled: rich.console is a slow import (~70 ms) that quiet runs
    and the engine's tests need not pay.
    """

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self._status = None
        if enabled:
            from rich.errors import LiveError

            self.console = stderr_console()
            self._status = self.console.status(f"{label}: starting")
            try:
                self._status.start()
            except LiveError:  # another probe in this process owns the live display
                self._status = None

    def phase(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"[bold]{self.label}[/]: {text}")

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(f"[dim]  | {_escape(text)}[/]")

    def done(self, markup: str, text: str) -> None:
        """Stop the status line and print `markup` followed by the plain (escaped) `text`."""
        if self.enabled:
            self.stop()
            self.console.print(markup + _escape(text))

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _escape(text: str) -> str:
    """`text` safe inside rich markup (only called when progress is shown; see Progress)."""
    from rich.markup import escape

    return escape(text)
