"""A probe's verdict from what it observed: pure, so every rule is tested without a VM.

Rules, in order (the kernel's own word wins):
1. the guest never reached SSH            -> SKIP "boot failure: ..." (console tail kept)
2. a panic during the run (pvpanic crash state or "Kernel panic" on the console)
                                           -> BAD, with the console excerpt
3. an Oops / BUG: / WARNING: trace on the console during the run -> BAD, excerpt kept
   (only console text written after the run started counts, not boot noise; when the guest
   died during the upload, text from the upload's start)
4. the reproducer's exit code, as `git bisect run`: 0 GOOD, 1 BAD, 125 SKIP; anything else,
   a timeout or a lost connection -> SKIP with the reason.
The reason for GOOD/BAD/125 is the last non-empty stdout line of the reproducer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from orchestrator.core.bug import Bug
from orchestrator.core.verdict import Verdict

TRACE_RE = re.compile(
    r"Kernel panic - not syncing|\bOops\b|\bBUG: |kernel BUG at|\bWARNING: |general protection fault"
    r"|Unable to handle kernel|BUG: unable to handle"
)
PANIC_RE = re.compile(r"Kernel panic - not syncing")
PANIC_LINE_RE = re.compile(r"Kernel panic - not syncing.*")
EXCERPT_LINES_BEFORE = 3
EXCERPT_LINES_AFTER = 45
EXCERPT_MAX_CHARS = 8000
TAIL_LINES = 40
REASON_MAX_CHARS = 300
TIMEOUT_EXIT_CODES = (124, 137)  # timeout(1): the command timed out / was killed after -k


@dataclass
class Observation:
    """What one probe saw, step by step; the verdict is decided from this alone."""

    booted: bool = False  # the guest reached an SSH login
    boot_reason: str = ""  # why it did not (domain would not start, crash, initramfs failure...)
    console_boot: str = ""  # console text before the run (the whole console if never booted)
    console_run: str = ""  # console text from the run's start (the upload's, if it failed) on
    crashed: bool = False  # libvirt reported the domain crashed (pvpanic)
    exit_code: int | None = None  # the reproducer's; None when no exit status came back
    timed_out: bool = False  # the host stopped waiting at the run timeout
    stdout: str = ""
    stderr: str = ""
    lost: str | None = None  # why the session to the guest ended early (upload failed, panic, EOF)
    artefacts: list[str] = field(default_factory=list)  # host paths (console.log first)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, in step order


class Judgement(NamedTuple):
    """The verdict, its one-line reason, and the console excerpt that supports it."""

    verdict: Verdict
    reason: str
    excerpt: str


def last_line(text: str) -> str:
    """The last non-empty line, stripped and cut to a reason's length."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:REASON_MAX_CHARS]
    return ""


def console_trace(text: str) -> tuple[str, str] | None:
    """First kernel trace in `text`: (headline, excerpt), or None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = TRACE_RE.search(line)
        if m:
            lo = max(0, i - EXCERPT_LINES_BEFORE)
            excerpt = "\n".join(lines[lo : i + EXCERPT_LINES_AFTER])[:EXCERPT_MAX_CHARS]
            return line[m.start():].strip()[:REASON_MAX_CHARS], excerpt
    return None


def tail(text: str, n: int = TAIL_LINES) -> str:
    """The last `n` lines, capped at an excerpt's size."""
    return "\n".join(text.splitlines()[-n:])[-EXCERPT_MAX_CHARS:]


def classify(obs: Observation, bug: Bug) -> Judgement:
    """The verdict for `obs`; see the module docstring for the rules and their order."""
    if not obs.booted:
        return Judgement(Verdict.SKIP, f"boot failure: {obs.boot_reason}".strip().rstrip(":"),
                         tail(obs.console_boot))
    kernel = _kernel_word(obs)
    if kernel is not None:
        return kernel
    return _reproducer_word(obs, bug)


def _kernel_word(obs: Observation) -> Judgement | None:
    """BAD when the kernel panicked or printed a trace while the reproducer ran, else None."""
    run = obs.console_run
    trace = console_trace(run)
    if obs.crashed or (trace and PANIC_RE.search(run)):
        panic = PANIC_LINE_RE.search(run)
        headline = panic.group(0).strip()[:REASON_MAX_CHARS] if panic else (trace[0] if trace else "guest crashed")
        return Judgement(Verdict.BAD, f"kernel panic: {headline}", trace[1] if trace else tail(run))
    if trace:
        return Judgement(Verdict.BAD, f"kernel trace: {trace[0]}", trace[1])
    return None


def _reproducer_word(obs: Observation, bug: Bug) -> Judgement:
    """The verdict from the reproducer's exit code (git bisect run's protocol)."""
    code = obs.exit_code
    if obs.timed_out or code in TIMEOUT_EXIT_CODES:
        return Judgement(Verdict.SKIP, f"reproducer timed out after {bug.timeout:g}s", "")
    if code is None:
        return Judgement(Verdict.SKIP, f"reproducer lost: {obs.lost or 'no exit status'}", tail(obs.console_run))
    line = last_line(obs.stdout)
    if code == 0:
        return Judgement(Verdict.GOOD, line or "exit 0", "")
    if code == 1:
        return Judgement(Verdict.BAD, line or "exit 1", "")
    if code == 125:
        return Judgement(Verdict.SKIP, line or "reproducer asked to skip (125)", "")
    return Judgement(Verdict.SKIP, f"reproducer error: exit {code}" + (f": {line}" if line else ""), "")
