"""A probe's verdict from what it observed: pure, so every rule is tested without a VM.

The run's kernel traces are read from two places: the console text written after the run
started (when the guest died during the upload, from the upload's start; boot noise does not
count) and the dmesg saved after the run (the lines after the run's marker, RUN_MARKER, which the
guest writes to /dev/kmsg just before the reproducer starts). A trace is an Oops / BUG: /
WARNING: / general protection fault / panic headline and the lines after it up to its
`---[ end trace` (at most EXCERPT_LINES_AFTER); the same headline on both is one trace.

Rules, in order (the kernel's own word about this bug wins; then anything that makes the run
untrustworthy; then the reproducer):
1. the guest never reached SSH             -> SKIP "boot failure: ..." (console tail kept)
2. a trace matching one of the bug's `signatures` (searched in the trace's excerpt)
                                            -> BAD "kernel panic: ..." when the run panicked
                                               (pvpanic crash state or "Kernel panic" on the
                                               console), else BAD "kernel trace: <headline>";
                                               the record names the signature, and such a run
                                               decides a repeated probe on its own
3. `unrelated_traces: bad` and any trace or panic -> BAD, as in rule 2 (no signature recorded)
4. console text was lost after the run started (the file shrank, or virtlogd rolled it over past
   its backups between two reads)          -> SKIP "console lost: ..."
5. any other trace or panic                 -> SKIP "unrelated kernel trace: <headline>"
6. the reproducer's exit code, as `git bisect run`: 0 GOOD, 1 BAD, 125 SKIP; anything else,
   a timeout or a lost connection -> SKIP with the reason.
The reason for GOOD/BAD/125 is the last non-empty stdout line of the reproducer. Whatever the
verdict, the first trace that matches no signature is kept in `Judgement.unrelated_trace`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterator

from orchestrator.core.bug import Bug, TracePolicy
from orchestrator.core.verdict import Verdict

TRACE_RE = re.compile(
    r"Kernel panic - not syncing|\bOops\b|\bBUG: |kernel BUG at|\bWARNING: |general protection fault"
    r"|Unable to handle kernel|BUG: unable to handle"
)
PANIC_RE = re.compile(r"Kernel panic - not syncing")
PANIC_LINE_RE = re.compile(r"Kernel panic - not syncing.*")
# The kernel closes a WARN/BUG/Oops report with "---[ end trace <id> ]---" (lib/bug.c,
# kernel/panic.c print_oops_end_marker) and a panic with "---[ end Kernel panic - not syncing".
TRACE_END_RE = re.compile(r"---\[ end (trace|Kernel panic)")
# Written to /dev/kmsg at debug level (not printed on the console) just before the reproducer
# starts; dmesg lines after it are the run's.
RUN_MARKER = "kbisect: reproducer starts"
EXCERPT_LINES_BEFORE = 3
PANIC_FOLLOWS_LINES = 5  # a panic this close after a trace's end is that trace's ending
EXCERPT_LINES_AFTER = 45
EXCERPT_MAX_CHARS = 8000
TAIL_LINES = 40
REASON_MAX_CHARS = 300
TIMEOUT_EXIT_CODES = (124, 137)  # timeout(1): the command timed out / was killed after -k
CRASHED_HEADLINE = "guest crashed"  # pvpanic said so, and no trace text came with it


@dataclass
class Observation:
    """What one probe saw, step by step; the verdict is decided from this alone."""

    booted: bool = False  # the guest reached an SSH login
    boot_reason: str = ""  # why it did not (domain would not start, crash, initramfs failure...)
    console_boot: str = ""  # console text before the run (the whole console if never booted)
    console_run: str = ""  # console text from the run's start (the upload's, if it failed) on
    console_lost: str = ""  # why console text written after the run started is missing ("" if none is)
    dmesg: str = ""  # the guest's dmesg saved after the run ("" when none came back)
    crashed: bool = False  # libvirt reported the domain crashed (pvpanic)
    exit_code: int | None = None  # the reproducer's; None when no exit status came back
    timed_out: bool = False  # the host stopped waiting at the run timeout
    stdout: str = ""
    stderr: str = ""
    lost: str | None = None  # why the session to the guest ended early (upload failed, panic, EOF)
    artefacts: list[str] = field(default_factory=list)  # host paths (console.log first)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, in step order


@dataclass(frozen=True)
class Judgement:
    """The verdict, its one-line reason and the excerpt that supports it; plus which signature
    matched (rule 2) and the excerpt of a trace that matched none.

    Unpacks as (verdict, reason, excerpt), the form most callers use."""

    verdict: Verdict
    reason: str
    excerpt: str
    signature: str = ""
    unrelated_trace: str = ""

    def __iter__(self) -> Iterator:
        return iter((self.verdict, self.reason, self.excerpt))

    def __getitem__(self, index):
        return tuple(self)[index]


@dataclass(frozen=True)
class Trace:
    """One kernel trace: its headline (from the matched keyword on), its excerpt, where it was read."""

    headline: str
    excerpt: str
    source: str  # "console" or "dmesg"


def last_line(text: str) -> str:
    """The last non-empty line, stripped and cut to a reason's length."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:REASON_MAX_CHARS]
    return ""


def find_traces(text: str, source: str = "console") -> list[Trace]:
    """Every kernel trace in `text`, in order. A trace's excerpt runs from a few lines before its
    headline to its end marker (or EXCERPT_LINES_AFTER lines); a headline inside that excerpt
    (the Oops line after "BUG: unable to handle ...") belongs to the same trace, and so does a
    panic right after its end ("Kernel panic - not syncing: Fatal exception" is how an oops in
    interrupt context ends, not a second trouble)."""
    lines = text.splitlines()
    out: list[Trace] = []
    prev_end = -1  # line after the previous trace's excerpt
    i = 0
    while i < len(lines):
        m = TRACE_RE.search(lines[i])
        if not m:
            i += 1
            continue
        end = min(len(lines), i + EXCERPT_LINES_AFTER)
        for j in range(i + 1, end):
            if TRACE_END_RE.search(lines[j]):
                end = j + 1
                break
        if out and PANIC_RE.search(lines[i]) and 0 <= i - prev_end <= PANIC_FOLLOWS_LINES:
            last = out[-1]
            out[-1] = replace(last, excerpt="\n".join([last.excerpt, *lines[prev_end:end]])[:EXCERPT_MAX_CHARS])
        else:
            lo = max(0, i - EXCERPT_LINES_BEFORE)
            excerpt = "\n".join(lines[lo:end])[:EXCERPT_MAX_CHARS]
            out.append(Trace(lines[i][m.start():].strip()[:REASON_MAX_CHARS], excerpt, source))
        prev_end = i = end
    return out


def console_trace(text: str) -> tuple[str, str] | None:
    """First kernel trace in `text`: (headline, excerpt), or None."""
    found = find_traces(text)
    return (found[0].headline, found[0].excerpt) if found else None


def dmesg_run_part(dmesg: str) -> str:
    """The dmesg lines written after the run's marker. Without a marker the ring buffer rolled
    over past it (the run logged more than the buffer holds), so every line left is the run's."""
    at = dmesg.rfind(RUN_MARKER)
    if at < 0:
        return dmesg
    newline = dmesg.find("\n", at)
    return "" if newline < 0 else dmesg[newline + 1:]


def run_traces(obs: Observation) -> list[Trace]:
    """The run's traces from the console, then those only dmesg saw (same headline = same trace)."""
    found = find_traces(obs.console_run, "console")
    seen = {t.headline for t in found}
    for t in find_traces(dmesg_run_part(obs.dmesg), "dmesg"):
        if t.headline not in seen:
            seen.add(t.headline)
            found.append(t)
    return found


def tail(text: str, n: int = TAIL_LINES) -> str:
    """The last `n` lines, capped at an excerpt's size."""
    return "\n".join(text.splitlines()[-n:])[-EXCERPT_MAX_CHARS:]


def matching_signature(trace: Trace, signatures: list[str]) -> str:
    """The first signature found in the trace's excerpt (one line per ^...$), or ""."""
    for pattern in signatures:
        if re.search(pattern, trace.excerpt, re.MULTILINE):
            return pattern
    return ""


def classify(obs: Observation, bug: Bug) -> Judgement:
    """The verdict for `obs`; see the module docstring for the rules and their order."""
    if not obs.booted:
        return Judgement(Verdict.SKIP, f"boot failure: {obs.boot_reason}".strip().rstrip(":"),
                         tail(obs.console_boot))
    traces = run_traces(obs)
    panicked = obs.crashed or bool(PANIC_RE.search(obs.console_run))
    if panicked and not traces:
        traces = [Trace(CRASHED_HEADLINE, tail(obs.console_run), "console")]
    matched = [(t, sig) for t in traces if (sig := matching_signature(t, bug.signatures))]
    unrelated = next((t for t in traces if not matching_signature(t, bug.signatures)), None)
    judgement = _kernel_word(obs, bug, traces, matched, panicked) or _reproducer_word(obs, bug)
    return replace(judgement, unrelated_trace=unrelated.excerpt) if unrelated else judgement


def _kernel_word(obs: Observation, bug: Bug, traces: list[Trace], matched: list[tuple[Trace, str]],
                 panicked: bool) -> Judgement | None:
    """Rules 2-5: what the run's traces (or a lost console) say, or None to ask the reproducer."""
    if matched:
        trace, sig = matched[0]
        return Judgement(Verdict.BAD, _bad_reason(obs, trace, panicked), trace.excerpt, signature=sig)
    if traces and bug.unrelated_traces == TracePolicy.BAD:
        return Judgement(Verdict.BAD, _bad_reason(obs, traces[0], panicked), traces[0].excerpt)
    if obs.console_lost:
        return Judgement(Verdict.SKIP, f"console lost: {obs.console_lost}"[:REASON_MAX_CHARS], "")
    if traces:
        return Judgement(Verdict.SKIP, f"unrelated kernel trace: {traces[0].headline}"[:REASON_MAX_CHARS],
                         traces[0].excerpt)
    return None


def _bad_reason(obs: Observation, trace: Trace, panicked: bool) -> str:
    """ "kernel panic: <the panic line>" for a run that panicked, else "kernel trace: <headline>"."""
    if not panicked:
        return f"kernel trace: {trace.headline}"
    panic = PANIC_LINE_RE.search(obs.console_run)
    headline = panic.group(0).strip()[:REASON_MAX_CHARS] if panic else trace.headline
    return f"kernel panic: {headline}"


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
