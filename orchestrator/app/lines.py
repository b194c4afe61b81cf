"""The Debian source's listing for the line pickers in orchestrator.core.lines."""

from __future__ import annotations


def debian_entries() -> list[dict]:
    """The Debian source's listing as JSON records (refreshes kbisect's private apt lists when stale)."""
    from orchestrator.adapters.sources import get_source

    return [e.to_json() for e in get_source("debian").list()]
