"""Kernel lines (pure): which kernel is the newest of each line: Debian ("5.10", "6.1", "newest"),
mainline ("6.1" and its stable updates, "newest" release) and Ubuntu (a series' uploads).

Shared by `kbisect bugs verify` (prove each reproducer on the newest kernel of every line) and
`kbisect sweep` (every reproducer across those kernels, night after night).
"""

from __future__ import annotations

from dataclasses import dataclass

from debian.debian_support import Version


def ver_key(version: str) -> Version:
    """Sort key for Debian upstream versions ("6.12.117" > "6.12.9"): dpkg's own ordering."""
    return Version(version)


def is_line(text: str) -> bool:
    """"6.1" or "5.10" (a Debian line), as opposed to a full version like "6.1.0-54-cloud-amd64"."""
    return bool(text) and all(part.isdigit() for part in text.split(".")) and text.count(".") <= 1


def pick_line_kernels(entries: list[dict], lines: list[str], flavour: str = "cloud-amd64") -> dict[str, str | None]:
    """Newest available kernel spec of each Debian line ("5.10", "6.1", …, "newest").

    `entries` are `kbisect kernels list --source debian --json` records. The cloud flavour is
    preferred (small, boots fast under TCG); backport builds (`6.1.0-0.deb11…`) only when the
    line has nothing else.
    """
    usable = [e for e in entries if e.get("available") and e.get("flavour", flavour) == flavour] or \
        [e for e in entries if e.get("available")]

    def native(e: dict) -> bool:
        # "6.1.0-0.deb11.52-…" and "…~deb12u1" are backports to an older release; prefer the
        # line's own release build when both exist.
        return "-0.deb" not in e["version"] and "~" not in (e.get("package_version") or "")

    def newest(cands: list[dict]) -> str | None:
        if not cands:
            return None
        best = max(cands, key=lambda e: (ver_key(e.get("upstream") or e["version"]), native(e), e["version"]))
        return best.get("spec") or f"debian:{best['version']}"

    picked: dict[str, str | None] = {}
    for line in lines:
        if line == "newest":
            picked[line] = newest(usable)
        else:
            picked[line] = newest([e for e in usable
                                   if (e.get("upstream") or e["version"]).split(".")[:len(line.split("."))] == line.split(".")])
    return picked


# -- mainline and Ubuntu lines: the newest *available* build, and what was passed over --------

@dataclass(frozen=True)
class Pick:
    """The kernel a column uses, and (when newer builds were unusable) the sentence saying so."""

    spec: str | None
    note: str | None = None


def mainline_of_line(entries: list[dict], line: str) -> list[dict]:
    """The mainline listing rows of one line: "6.1" is 6.1 and its stable updates 6.1.N (no rc's);
    "newest" is the releases X.Y themselves (Linus's, no rc's, no stable updates)."""
    out = []
    for e in entries:
        v = _mainline_version(e)
        if v is None or v.is_rc:
            continue
        if (line == "newest" and v.patch == 0) or (line != "newest" and f"{v.major}.{v.minor}" == line):
            out.append(e)
    return out


def pick_newest_build(entries: list[dict], source: str) -> Pick:
    """The newest available build among `entries` (one line of `source`: mainline or ubuntu), with
    a note naming the newer ones that were not usable ("6.1.120 build failed; using 6.1.119")."""
    ordered = sorted((e for e in entries if _order(source, e) is not None),
                     key=lambda e: _order(source, e), reverse=True)
    passed: list[dict] = []
    for e in ordered:
        if e.get("available"):
            spec = e.get("spec") or f"{source}:{e['version']}"
            return Pick(spec, f"{_passed_over(passed)}; using {e['version']}" if passed else None)
        passed.append(e)
    return Pick(None, f"no available build: {_passed_over(passed)}" if passed else None)


def _passed_over(passed: list[dict]) -> str:
    words = []
    for e in passed[:3]:
        reason = str(e.get("reason") or "unavailable")
        words.append(f"{e['version']} build failed" if "build failed" in reason else f"{e['version']} unavailable ({reason})")
    more = f" and {len(passed) - 3} more" if len(passed) > 3 else ""
    return ", ".join(words) + more


def _mainline_version(e: dict):
    from orchestrator.core.errors import KbisectError
    from orchestrator.core.versions import parse_version

    try:
        return parse_version(str(e.get("version", "")))
    except KbisectError:
        return None


def _order(source: str, e: dict):
    """Sort key of a listing row of `source` (None: a name that is no version of it)."""
    if source == "mainline":
        v = _mainline_version(e)
        return None if v is None else v.sort_key
    from orchestrator.core.errors import KbisectError
    from orchestrator.core.versions import parse_ubuntu_version

    try:
        return parse_ubuntu_version(str(e.get("version", ""))).sort_key
    except KbisectError:
        return None
