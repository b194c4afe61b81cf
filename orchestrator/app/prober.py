"""Where a verdict comes from: the user's replay file, then the results database, then a real probe.

The engine asks a probe function for each kernel; this is that function for every use case, so
bisections and sweeps share one order of answers and one way of storing what was paid for.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Callable

from orchestrator.adapters import yamlfile
from orchestrator.adapters.store import Store, reproducer_hash
from orchestrator.app.kernels import KernelProvider
from orchestrator.app.policy import Decision, decide, skip_outcome
from orchestrator.core.bug import Bug
from orchestrator.core.engine import RunOutcome
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import ProbeRecord, Verdict

_WORDS = {"good": Verdict.GOOD, "bad": Verdict.BAD, "skip": Verdict.SKIP,
          "0": Verdict.GOOD, "1": Verdict.BAD, "125": Verdict.SKIP}


def _parse_verdict(value: object, where: str) -> list[Verdict]:
    """`bad`, `good`, `skip`, an exit code (0/1/125), or a list of those (several runs)."""
    if isinstance(value, list):
        out: list[Verdict] = []
        for item in value:
            out.extend(_parse_verdict(item, where))
        if not out:
            raise KbisectError(f"{where}: empty list of verdicts")
        return out
    if isinstance(value, bool) or value is None:
        raise KbisectError(f"{where}: verdict must be good, bad or skip, got {value!r}")
    key = str(value).strip().lower()
    if key not in _WORDS:
        raise KbisectError(f"{where}: verdict must be good, bad or skip (or 0/1/125), got {reprlib.repr(value)}")
    return [_WORDS[key]]


# A replay file names kernels: thousands fit in well under a MiB (the CLI checks the same bound first).
MAX_REPLAY_BYTES = 4 << 20


def load_replay(path: Path) -> dict[str, list[Verdict]]:
    """Read a `--verdicts` file: a YAML or JSON object mapping kernel specs to verdicts
    (ktest's BISECT_REPLAY, and how a user feeds in verdicts found by hand). Read through the
    catalog's bounded loader, so a few KB of nested aliases is one line, not gigabytes."""
    path = Path(path)
    where = f"--verdicts {path}"
    data = yamlfile.load(path, where, MAX_REPLAY_BYTES, expected="YAML or JSON")  # YAML is a superset of JSON
    if not isinstance(data, dict):
        raise KbisectError(f"{where}: expected an object mapping kernel to verdict")
    return {str(k).strip(): _parse_verdict(v, f"{where}: {k}") for k, v in data.items()}


class ResumingProbe:
    """The probe function handed to the engine: replay file first, then the database, then a VM.

    Answers come in this order because a replayed verdict is the user's word (it never boots),
    a stored one was already paid for, and only what is left costs a boot. Each real probe is
    stored the moment it returns, so a kill loses at most the probe in flight.

    Stored verdicts follow bytes, not names: the prober asks `kernel_id(spec)` for the content
    id of what the spec boots now (the kernel provider's; fetching a cached kernel is cheap, and
    a kernel never fetched must be fetched for its probe anyway) and the store answers by that
    id, so a rebuilt `local:` kernel is probed again. Replay stays keyed by spec: it is the
    user's word about a name. Good and bad are reused by any later run; a stored skip only
    inside the run that stored it (`run_key`: a resumed bisection, the same day's sweep), since
    a skip says something about that night (a broken mirror, a flaky host), not about the kernel.
    Without a `run_key` no stored skip is reused.

    `fresh` ignores stored verdicts (new ones still overwrite them); `since` ignores only those
    stored before that time (a resumed `sweep --fresh` keeps what the killed attempt already
    booted afresh). `canon` maps a replay-file key to the spec form the engine's candidates use,
    so `5.7-rc5`, `v5.7-rc5` and `mainline:5.7-rc5` all match.
    """

    def __init__(self, bug: Bug, real_probe: Callable[[str], ProbeRecord], *, store: Store | None = None,
                 replay: dict[str, list[Verdict]] | None = None, fresh: bool = False,
                 canon: Callable[[str], str] | None = None, repro_hash: str | None = None,
                 since: float | None = None, kernel_id: Callable[[str], str] | None = None,
                 run_key: str | None = None) -> None:
        self.bug = bug
        self.real_probe = real_probe  # (spec: str) -> ProbeRecord
        self.store = store
        self.fresh = fresh
        self.since = since
        self.kernel_id = kernel_id or KernelProvider().kernel_id  # (spec: str) -> content id
        self.run_key = run_key
        self.canon = canon or (lambda s: s)
        self.replay: dict[str, list[Verdict]] = {}
        for key, verdicts in (replay or {}).items():
            self.replay[self.canon(key)] = verdicts
        self.repro_hash = repro_hash or reproducer_hash(bug)
        self.seq: dict[str, int] = {}
        self.counts = {"replay": 0, "store": 0, "probe": 0}
        self.offered: dict[str, ProbeRecord] = {}  # spec -> a run already made elsewhere (offer)

    def answered(self, spec: str) -> bool:
        """Whether the next run of `spec` is answered without a boot (replay file or store),
        asked the way __call__ asks; a kernel that cannot be had counts as answered (its skip
        comes from __call__, at no boot's cost)."""
        if self.canon(spec) in self.replay:
            return True
        if self.store is None or self.fresh:
            return False
        try:
            kernel_id = self.kernel_id(spec)
        except KbisectError:
            return True
        return self._lookup(kernel_id, self.seq.get(spec, 0)) is not None

    def offer(self, spec: str, record: ProbeRecord) -> None:
        """A real run of `spec` made by someone else (the sweep's shared guest): the next call
        that would boot takes it instead, and stores it like its own."""
        self.offered[spec] = record

    def __call__(self, cand: Any) -> Any:
        """One run for the engine: a RunOutcome (replay, store or a real probe)."""
        spec = cand.spec if hasattr(cand, "spec") else str(cand)
        n = self.seq.get(spec, 0)
        self.seq[spec] = n + 1
        replayed = self.replay.get(self.canon(spec))
        if replayed is not None:
            self.counts["replay"] += 1
            verdict = replayed[n % len(replayed)]
            return RunOutcome(verdict, 0.0, "from --verdicts file", "replay")
        try:
            kernel_id = self.kernel_id(spec) if self.store is not None else ""
            stored = self._stored(spec, kernel_id, n)
            if stored is not None:
                return stored
            record = self.offered.pop(spec, None) or self.real_probe(spec)
        except KbisectError as exc:
            if decide(exc) is Decision.ABORT:  # app.policy: machine or input trouble stops the run
                raise
            # kernel trouble (gone, unreachable, corrupt, unbuildable, unbootable): a skip, like a
            # failed build in syzkaller; not stored, since it may be had next time
            self.seq[spec] = n
            return skip_outcome(exc)
        if self.store is not None:
            self.store.put(self.bug.id, spec, self.repro_hash, n, record, kernel_id=kernel_id, run_key=self.run_key)
        self.counts["probe"] += 1
        return RunOutcome(record.verdict, record.seconds, record.reason, "probe", record)

    def _stored(self, spec: str, kernel_id: str, n: int) -> Any:
        """The stored answer for the n-th run of these bytes (a RunOutcome), or None."""
        record = self._lookup(kernel_id, n)
        if record is None:
            return None
        record.kernel = spec  # the same bytes may have been stored under another name
        self.counts["store"] += 1
        return RunOutcome(record.verdict, record.seconds, (record.reason + " (stored)").strip(), "store", record)

    def _lookup(self, kernel_id: str, n: int) -> ProbeRecord | None:
        """The stored record of the n-th run of these bytes, in this prober's scope (reproducer
        hash, `since`, `run_key`), or None; none at all when fresh or without a store."""
        if self.store is None or self.fresh:
            return None
        return self.store.get(self.bug.id, kernel_id, self.repro_hash, n, self.since, run_key=self.run_key)
