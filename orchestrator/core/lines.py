"""Debian kernel lines (pure): which kernel is the newest of each line ("5.10", "6.1", "newest").

Shared by `kbisect bugs verify` (prove each reproducer on the newest kernel of every line) and
`kbisect sweep` (every reproducer across those kernels, night after night).
"""

from __future__ import annotations

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
