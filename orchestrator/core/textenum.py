"""The base of the core's str-valued enums (verdicts, statuses, phases, origins, sweep flags).

Their values are contracts: they are written to result.json, the results database and the
matrix, and other tools compare them with plain strings. A `str` mixin keeps `==` with those
strings, hashing, and `json.dumps` working; this base also makes `str()` and f-strings print the
value (a plain `(str, Enum)` prints `Status.FOUND` there since Python 3.11), so messages, HTML
templates and format specs such as `f"{phase:<7}"` read exactly as when they were strings.
"""

from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    """A str-valued enum that prints as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
