"""The run use case: one kernel spec and one reproducer to a verdict record (or several).

The kernel comes from the provider (any source, a directory, a variant built on demand); the
probe itself is the guest runtime's. The record then names what the kernel was built from and
whether its packages were verified.
"""

from __future__ import annotations

import time

from orchestrator.adapters.guest.probe import aggregate, run_probe_kernel
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources import Mirrors
from orchestrator.app.kernels import fetch_kernel
from orchestrator.core.bug import Bug
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import ProbeRecord, Verdict


def run_probe(kernel_spec: str, bug: Bug, *, mirror: str | Mirrors | None = None, accel: str | None = None,
              **opts) -> ProbeRecord:
    """Fetch `kernel_spec` (any source; `mirror` as KernelProvider reads it) and probe it with
    `bug`; see run_probe_kernel."""
    return _probes(kernel_spec, bug, 1, mirror, accel=accel, **opts)[0]


def run_repeated(kernel_spec: str, bug: Bug, repeat: int = 1, **opts) -> tuple[Verdict, list[ProbeRecord]]:
    """`repeat` probes of one kernel (a fresh VM each); returns the aggregate and the records.

    The kernel is fetched once. A BAD needs `bug.repeat.bad_needed` bad runs.
    """
    if repeat < 1:
        raise KbisectError("--repeat must be at least 1")
    records = _probes(kernel_spec, bug, repeat, opts.pop("mirror", None), **opts)
    return aggregate(records, bug.repeat.bad_needed), records


def _probes(kernel_spec: str, bug: Bug, repeat: int, mirror: str | Mirrors | None, **opts) -> list[ProbeRecord]:
    """Fetch once, probe `repeat` times; the fetch counts in the first record's prepare phase."""
    t0 = time.monotonic()
    kernel = fetch_kernel(kernel_spec, mirror=mirror)
    fetch_s = time.monotonic() - t0
    records = [stamped(run_probe_kernel(kernel, bug, **opts), kernel_spec, kernel) for _ in range(repeat)]
    records[0].phases["prepare"] = round(records[0].phases.get("prepare", 0.0) + fetch_s, 3)
    return records


def stamped(rec: ProbeRecord, spec: str, kernel: UnpackedKernel) -> ProbeRecord:
    """The record under the spec the caller asked for, with the kernel's provenance."""
    rec.kernel = spec
    rec.upstream_commit = kernel.commit
    rec.unverified = kernel.unverified
    return rec
