"""The one skip policy: which failures skip a kernel and which stop the run.

Every use case (bisect, sweep, verify, run) asks `decide` instead of choosing by whichever
`except` happens to catch the error: a kernel that cannot be had, booted or probed is a skip with
its reason; trouble with the machine or the user's input stops the run, because retrying other
kernels would fail the same way.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Callable

from orchestrator.core.errors import KernelTrouble
from orchestrator.core.verdict import ProbeRecord, Verdict


class Decision(str, Enum):
    SKIP = "skip"  # this kernel is undecided; go on with the others
    ABORT = "abort"  # stop the run with the error's one line


def decide(exc: BaseException) -> Decision:
    """Skip for trouble that concerns one kernel, abort for everything else."""
    return Decision.SKIP if isinstance(exc, KernelTrouble) else Decision.ABORT


def skip_record(spec: str, bug_id: str, exc: BaseException) -> ProbeRecord:
    """The record a skipped kernel gets: its reason is the error's line."""
    return ProbeRecord(kernel=spec, bug=bug_id, verdict=Verdict.SKIP, reason=f"error: {exc}",
                       started_at=time.time())


def guarded(probe: Callable[[str], ProbeRecord], spec: str, bug_id: str) -> ProbeRecord:
    """`probe(spec)`, with kernel trouble turned into a skip record and the rest re-raised."""
    try:
        return probe(spec)
    except KernelTrouble as exc:
        return skip_record(spec, bug_id, exc)
