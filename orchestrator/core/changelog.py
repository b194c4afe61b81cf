"""What an Ubuntu kernel changelog says about the upstream stable code an upload carries (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.core.versions import KernelVersion, parse_version


def upstream_from_changelog(text: str) -> KernelVersion | None:
    """The newest upstream stable base a changelog names ("… v5.4.56 upstream stable release")."""
    found = [parse_version(m) for m in re.findall(r"\bv(\d+\.\d+(?:\.\d+)?) upstream stable release", text or "")]
    return max(found) if found else None


# A merge of a numbered upstream stable release; verbatim from real changelogs (may end in " //"):
#   "  * Focal update: v5.4.286 upstream stable release (LP: #2089558)"
_STABLE_RELEASE_RE = re.compile(r"\bv(\d+\.\d+(?:\.\d+)?) upstream stable release")
# A merge of an unnumbered upstream stable patchset, which is how updates arrive once the
# upstream stable line has ended (bionic 4.15, noble 6.8). The exact wording is a BELIEF, not
# checked against a real changelog: "  * Bionic update: upstream stable patchset 2020-01-13 (LP: #…)".
_STABLE_PATCHSET_RE = re.compile(r"\bupstream stable patch ?set (\d{4}-\d{2}-\d{2})\b", re.IGNORECASE)
# The first line of each upload's entry: "linux (5.4.0-26.30) focal; urgency=medium".
_CHANGELOG_ENTRY_RE = re.compile(r"^[a-z0-9][a-z0-9+.~-]* \(", re.MULTILINE)


@dataclass(frozen=True)
class ChangelogUpstream:
    """The upstream stable code an Ubuntu kernel changelog says an upload carries.

    `base` is the newest numbered stable release merged; `patchsets` are the dates of the
    unnumbered stable patchsets merged in that upload or later, newest first. Both matter when
    comparing with mainline: "4.15.18 plus 40 patchsets" is far from plain 4.15.18.
    """

    base: KernelVersion | None
    patchsets: tuple[str, ...] = ()

    @property
    def note(self) -> str | None:
        """One line for kernel.json and reports; None when the base alone says it all."""
        if not self.patchsets:
            return None
        count = len(self.patchsets)
        sets = f"{count} upstream stable patchset{'' if count == 1 else 's'} (the newest {self.patchsets[0]})"
        if self.base is None:
            return f"{sets}; the changelog names no numbered upstream base"
        return f"upstream base {self.base} plus {sets}"


def upstream_stable_from_changelog(text: str) -> ChangelogUpstream | None:
    """The numbered upstream base a changelog names and the stable patchsets merged on top of it.

    Changelogs read newest first (pass `changelog.Debian.gz` followed by `changelog.Debian.old.gz`),
    so the patchsets that count are those above the end of the entry holding the base: within that
    one entry the order of the lines is not a reliable clue, and patchsets only exist once the
    numbered releases stopped. None when the text names neither.
    """
    text = text or ""
    releases = [(m.start(), parse_version(m.group(1))) for m in _STABLE_RELEASE_RE.finditer(text)]
    patchsets = [(m.start(), m.group(1)) for m in _STABLE_PATCHSET_RE.finditer(text)]
    if not releases and not patchsets:
        return None
    base = max((version for _, version in releases), default=None)
    cutoff = len(text)
    if base is not None:
        first = min(pos for pos, version in releases if version == base)
        older_entry = _CHANGELOG_ENTRY_RE.search(text, first)
        cutoff = older_entry.start() if older_entry else len(text)
    dates = sorted({date for pos, date in patchsets if pos < cutoff}, reverse=True)
    return ChangelogUpstream(base, tuple(dates))
