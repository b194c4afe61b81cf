"""The one skip policy: which failures skip a kernel and which stop the run.

Every use case (bisect, sweep, verify, run) asks `decide` instead of choosing by whichever
`except` happens to catch the error: a kernel that cannot be had, booted or probed is a skip with
its reason; trouble with the machine or the user's input stops the run, because retrying other
kernels would fail the same way. A skip reads the same everywhere (`skip_reason`), so a sweep
cell, a proof row and a bisection probe say the same thing about the same failure.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Callable

from orchestrator.core.engine import RunOutcome
from orchestrator.core.errors import KbisectError, KernelTrouble
from orchestrator.core.verdict import ProbeRecord, Verdict

# Where a skip decided by this policy came from, as the engine's run origin and a sweep cell's
# source: no reproducer ran, an error decided it.
ERROR_ORIGIN = "error"


class Decision(str, Enum):
    SKIP = "skip"  # this kernel is undecided; go on with the others
    ABORT = "abort"  # stop the run with the error's one line


def decide(exc: BaseException) -> Decision:
    """Skip for trouble that concerns one kernel, abort for everything else."""
    return Decision.SKIP if isinstance(exc, KernelTrouble) else Decision.ABORT


def skip_reason(exc: BaseException) -> str:
    """The reason line of a kernel skipped for `exc`."""
    return f"error: {exc}"


def skip_record(spec: str, bug_id: str, exc: BaseException) -> ProbeRecord:
    """The record a skipped kernel gets: its reason is the error's line."""
    return ProbeRecord(kernel=spec, bug=bug_id, verdict=Verdict.SKIP, reason=skip_reason(exc),
                       started_at=time.time())


def skip_outcome(exc: BaseException) -> RunOutcome:
    """The engine's run for a kernel skipped for `exc` (no reproducer ran, so no seconds)."""
    return RunOutcome(Verdict.SKIP, 0.0, skip_reason(exc), ERROR_ORIGIN)


def guarded(probe: Callable[[str], ProbeRecord], spec: str, bug_id: str) -> ProbeRecord:
    """`probe(spec)`, with an error `decide` calls a skip turned into a skip record; the rest
    (an abort, or anything that is not a KbisectError: a bug, an interrupt) is re-raised."""
    try:
        return probe(spec)
    except KbisectError as exc:
        if decide(exc) is Decision.ABORT:
            raise
        return skip_record(spec, bug_id, exc)
