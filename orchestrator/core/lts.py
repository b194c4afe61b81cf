"""The kernel.org long-term (LTS) lines a mainline sweep plans, and which Ubuntu series it sweeps.

The one table of LTS lines. Source: kernel.org's releases page ("Longterm release kernels":
version, released, projected EOL), as stored copies read in 2023 (4.19 ends Dec 2024, 5.4 Dec
2025) and 2025 (5.10, 5.15 Dec 2026; 6.1 Dec 2027), updated by the stable maintainer's 2026
revision announced on the kernel mailing list (6.6 to Dec 2027, 6.12 to Dec 2028, 6.18 new, Dec
2028). 6.18's release date is a belief (the last release of 2025, as each year's LTS is).
A line that has ended stays planned: its last builds are still what people run. A new LTS line
is one row here; nothing else in kbisect names the list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LtsLine:
    line: str  # "6.1"
    released: str  # the X.Y release day, YYYY-MM-DD
    ends: str  # the projected end of life, YYYY-MM

    @property
    def ends_year(self) -> int:
        return int(self.ends[:4])


LTS_LINES: tuple[LtsLine, ...] = (
    LtsLine("4.19", "2018-10-22", "2024-12"),
    LtsLine("5.4", "2019-11-24", "2025-12"),
    LtsLine("5.10", "2020-12-13", "2026-12"),
    LtsLine("5.15", "2021-10-31", "2026-12"),
    LtsLine("6.1", "2022-12-11", "2027-12"),
    LtsLine("6.6", "2023-10-29", "2027-12"),
    LtsLine("6.12", "2024-11-17", "2028-12"),
    LtsLine("6.18", "2025-11-30", "2028-12"),
)

# The oldest Ubuntu series a sweep covers: the series kbisect knows (core.versions.DISTRO_SERIES,
# the one series table) from this one on, i.e. bionic 4.15, focal 5.4, jammy 5.15, noble 6.8 and
# any later one added there (issue 12 names these; xenial's 4.4 is left to explicit bisections).
UBUNTU_SWEPT_FROM = "bionic"


def lts_lines() -> list[str]:
    """The LTS lines, oldest first ("4.19", "5.4", …)."""
    return [lts.line for lts in LTS_LINES]


def lts_of(line: str) -> LtsLine | None:
    return next((lts for lts in LTS_LINES if lts.line == line), None)


def ubuntu_swept_series() -> list[tuple[str, str]]:
    """(series, upstream base) of every Ubuntu series a sweep covers, oldest first."""
    from orchestrator.core.versions import DISTRO_SERIES, UBUNTU_SERIES

    first = UBUNTU_SERIES.index(UBUNTU_SWEPT_FROM)
    known = DISTRO_SERIES["ubuntu"]
    return sorted(((s, b) for s, b in known.items() if s in UBUNTU_SERIES and UBUNTU_SERIES.index(s) >= first),
                  key=lambda item: UBUNTU_SERIES.index(item[0]))
