"""The real gretap-ecn history, as versions and replayable verdicts (tests only).

Mainline: good up to v5.7-rc3, bad from v5.7-rc4 (b723748750ec, committed 27 Apr 2020, between
rc3 and rc4: our belief for K) to v5.14-rc3, good again from v5.14-rc4 (227adfb2b1df).
Stable 5.4: 5.4.40 good, 5.4.41 bad (the backport), good again from 5.4.138.
Stable 5.6: bad from 5.6.13 (belief; bugs.md says "a 5.6.y").
"""

from __future__ import annotations

from orchestrator.core.versions import KernelVersion, parse_version

K = 4  # v5.7-rcK is the upstream first bad
FIRST_BAD = KernelVersion(5, 7, 0, K)
FIXED = KernelVersion(5, 14, 0, 4)
UNAVAILABLE = {"5.5-rc3", "5.4.23", "5.9.9"}  # failed builds on the mirror: skips, not errors


def mainline_versions() -> list[str]:
    """Releases 4.15 .. 5.16 with rc1..rc7 each (rc8 for a few), and the 5.4.y / 5.6.y stable lines."""
    out: list[str] = []
    releases = [(4, m) for m in range(15, 21)] + [(5, m) for m in range(0, 17)]
    for major, minor in releases:
        rcs = 8 if (major, minor) in {(5, 0), (5, 3), (5, 12)} else 7
        out += [f"{major}.{minor}-rc{i}" for i in range(1, rcs + 1)]
        out.append(f"{major}.{minor}")
    out += [f"5.4.{z}" for z in range(1, 151)]
    out += [f"5.6.{z}" for z in range(1, 20)]
    out += [f"5.9.{z}" for z in range(1, 17)]
    return out


def verdict(label: str) -> str:
    v = parse_version(label)
    if v.lineage == "stable-5.4":
        return "bad" if 41 <= v.patch < 138 else "good"
    if v.lineage == "stable-5.6":
        return "bad" if v.patch >= 13 else "good"
    probe = v.base if v.patch else v  # other stable lines follow their base release
    return "bad" if FIRST_BAD <= probe < FIXED else "good"


def verdicts() -> dict[str, str]:
    """The whole history as a --verdicts mapping, keyed like `mainline:5.7-rc4`."""
    return {f"mainline:{label}": verdict(label) for label in mainline_versions()}
