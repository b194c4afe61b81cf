"""The sources' listings for the line pickers in orchestrator.core.lines.

`kbisect sweep` and `kbisect bugs verify` take them as collaborators (SweepDeps, VerifyDeps), so
their tests plan on fake listings; these are the real ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orchestrator.adapters.sources import get_source
from orchestrator.core.lines import mainline_of_line

MAX_WALK = 8  # builds of one mainline line tried newest first before the column gives up


def debian_entries() -> list[dict]:
    """The Debian source's listing as JSON records (refreshes kbisect's private apt lists when stale)."""
    return [e.to_json() for e in get_source("debian").list()]


def mainline_entries(mirror: str | None, lines: list[str]) -> list[dict]:
    """The mainline rows a line picker needs for `lines` ("6.1", "newest"): for each line its
    builds newest first, up to and including the first available one (at most MAX_WALK), so a
    sweep reads a handful of version directories, not the whole mirror. Keyring and unverified
    builds follow the environment (KBISECT_MAINLINE_KEYRING, KBISECT_ALLOW_UNVERIFIED), as every
    fetch does."""
    source = get_source("mainline", mirror)
    dirs, _odd = source.directories()
    rows = [{"version": str(v), "available": True} for v in sorted(dirs, reverse=True)]

    def walk(line: str) -> list[dict]:
        out = []
        for row in mainline_of_line(rows, line)[:MAX_WALK]:
            entry = source.entry(dirs[_version(row["version"])][0]).to_json()
            out.append(entry)
            if entry["available"]:
                break
        return out

    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(walk, lines))
    seen: dict[str, dict] = {}
    for entries in found:
        for e in entries:
            seen.setdefault(e["version"], e)
    return list(seen.values())


def ubuntu_entries(mirror: str | None, series: str) -> list[dict]:
    """Every upload of the `linux` source in one Ubuntu series (Launchpad, or the mirror standing
    for it: --distro-mirror, $KBISECT_UBUNTU_MIRROR), as JSON records."""
    from orchestrator.adapters.sources.ubuntu import UbuntuSource

    return [e.to_json() for e in UbuntuSource(mirror, series=series).list()]


def _version(text: str):
    from orchestrator.core.versions import parse_version

    return parse_version(text)
