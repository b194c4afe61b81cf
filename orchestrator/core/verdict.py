"""Verdict types shared by the probe, the bisection engine, the store and the reports.

The reproducer protocol follows `git bisect run`: exit 0 good, 1 bad, 125 skip. Anything
else (other codes, timeouts, boot failures, infrastructure trouble) is SKIP with a reason,
never silently GOOD. `Verdict` is a str-valued enum (`TextEnum`): it compares equal to and prints
as "good" / "bad" / "skip", the strings the results database and result.json hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.textenum import TextEnum


class Verdict(TextEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"

    @property
    def exit_code(self) -> int:
        return {Verdict.GOOD: 0, Verdict.BAD: 1, Verdict.SKIP: 125}[self]

    @classmethod
    def from_exit_code(cls, code: int | None) -> "Verdict":
        if code == 0:
            return cls.GOOD
        if code == 1:
            return cls.BAD
        return cls.SKIP


@dataclass
class ProbeRecord:
    """One kernel booted, one reproducer run, one verdict."""

    kernel: str  # kernel spec, e.g. "debian:6.1.0-54-cloud-amd64"
    bug: str
    verdict: Verdict
    reason: str  # one line: what the reproducer saw, or why it was skipped / bad
    phases: dict[str, float] = field(default_factory=dict)  # prepare, boot, upload, run, teardown (seconds)
    console_excerpt: str = ""
    output: str = ""  # reproducer stdout+stderr (tail)
    artefacts: list[str] = field(default_factory=list)  # host paths of fetched files (dmesg, pcap...)
    started_at: float = 0.0  # epoch seconds
    # what the kernel was built from and whether its packages were verified (mainline COMMIT;
    # --allow-unverified builds without CHECKSUMS): a verdict on an unverified kernel says so
    upstream_commit: str | None = None
    unverified: bool = False
    # the bug signature (a regular expression of bug.yaml) that the run's kernel trace matched:
    # the kernel's own evidence of this bug, so one such run is BAD whatever the repeat policy says
    signature: str = ""
    # the excerpt of a kernel trace (or panic) that matched none of the bug's signatures: kept
    # whatever the verdict, so reports can list the kernel's other troubles
    unrelated_trace: str = ""
    # how the guest was shared (core.sharing): "" for a probe of its own (run, bisect), "shared",
    # "isolated", "alone" or "rechecked" in a sweep; `note` says what the shared guest had said
    vm: str = ""
    note: str = ""

    @property
    def seconds(self) -> float:
        return round(sum(self.phases.values()), 3)

    @property
    def decisive(self) -> bool:
        """BAD on the kernel's own word (a trace with the bug's signature): one such run decides a
        repeated probe, as syzbot counts only crashes with the bug's signature and then trusts them."""
        return self.verdict == Verdict.BAD and bool(self.signature)

    @classmethod
    def from_json(cls, data: dict) -> "ProbeRecord":
        """The inverse of to_json; records written before a field existed load with its default."""
        return cls(
            kernel=data["kernel"],
            bug=data["bug"],
            verdict=Verdict(data["verdict"]),
            reason=data.get("reason", ""),
            phases=dict(data.get("phases", {}) or {}),
            console_excerpt=data.get("console_excerpt", "") or "",
            output=data.get("output", "") or "",
            artefacts=list(data.get("artefacts", []) or []),
            started_at=float(data.get("started_at", 0.0) or 0.0),
            upstream_commit=data.get("upstream_commit"),
            unverified=bool(data.get("unverified", False)),
            signature=data.get("signature", "") or "",
            unrelated_trace=data.get("unrelated_trace", "") or "",
            vm=data.get("vm", "") or "",
            note=data.get("note", "") or "",
        )

    def to_json(self) -> dict:
        return {
            "kernel": self.kernel,
            "bug": self.bug,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "phases": self.phases,
            "seconds": self.seconds,
            "console_excerpt": self.console_excerpt,
            "output": self.output,
            "artefacts": self.artefacts,
            "started_at": self.started_at,
            "upstream_commit": self.upstream_commit,
            "unverified": self.unverified,
            "signature": self.signature,
            "unrelated_trace": self.unrelated_trace,
            "vm": self.vm,
            "note": self.note,
        }
