"""Step-by-step progress of a variant build on stderr (stdout stays clean for the new spec).

Each step prints its duration, so a build's time is measurable from its output alone.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console


class Progress:
    """Where a build says what it is doing; one per build."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)

    def step(self, text: str) -> "Step":
        return Step(self, text)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]variants:[/] {text}", soft_wrap=True)


class Step:
    """A timed step with a live status line; `seconds` is set when it ends."""

    def __init__(self, progress: Progress, text: str) -> None:
        self.progress, self.text = progress, text
        self.seconds = 0.0

    def __enter__(self) -> "Step":
        self.start = time.monotonic()
        self.status = self.progress.console.status(f"{self.text} …")
        self.status.__enter__()
        return self

    def update(self, text: str) -> None:
        self.status.update(f"{self.text} … {text}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.status.__exit__(exc_type, exc, tb)
        self.seconds = time.monotonic() - self.start
        mark = "[green]done[/]" if exc_type is None else "[red]failed[/]"
        self.progress.console.print(f"[dim]variants:[/] {self.text}: {mark} ({self.seconds:.1f} s)", soft_wrap=True)
