"""The Debian source's listing for the line pickers in orchestrator.core.lines.

`kbisect sweep` and `kbisect bugs verify` take it as a collaborator (SweepDeps, VerifyDeps), so
their tests plan on a fake listing; this is the real one.
"""

from __future__ import annotations

from orchestrator.adapters.sources import get_source


def debian_entries() -> list[dict]:
    """The Debian source's listing as JSON records (refreshes kbisect's private apt lists when stale)."""
    return [e.to_json() for e in get_source("debian").list()]
