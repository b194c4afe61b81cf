#!/usr/bin/env python3
"""Read `tcpdump -e -n` lines captured on the gretap device and decide good/bad/skip.

Kept apart from run.sh so the host tests can feed it synthetic capture lines and prove the
BAD branch on a kernel that cannot show the bug.

usage: oracle.py CAPTURE_FILE   -> prints one line, exits 0 good / 1 bad / 125 skip
"""

from __future__ import annotations

import re
import sys

SENT_DST = "18:be:92:a0:ee:26"
SENT_SRC = "18:be:92:a0:6c:05"
# The bug rewrites bytes of the inner Ethernet header (dst byte 1 as "TOS", src bytes 4-5 as
# the "IP checksum"), so match our frame by the bytes it leaves alone: 18:??:92:a0:ee:26.
LINE_RE = re.compile(r"\b(?P<src>[0-9a-f]{2}(?::[0-9a-f]{2}){5}) > (?P<dst>18:[0-9a-f]{2}:92:a0:ee:26)\b")


def classify(lines: list[str]) -> tuple[int, str]:
    """Return (exit code, verdict line) for the first frame of ours in the capture."""
    for line in lines:
        match = LINE_RE.search(line)
        if not match:
            continue
        dst, src = match["dst"], match["src"]
        if dst == SENT_DST:
            extra = "" if src == SENT_SRC else f", but src {src} != {SENT_SRC}"
            return (1 if extra else 0), f"inner dst {dst} src {src}{extra} ({'bad' if extra else 'good'})"
        return 1, f"inner dst {dst} (sent {SENT_DST}) src {src} (bad)"
    return 125, "skip: no frame of ours captured on the gretap device"


def main() -> int:
    with open(sys.argv[1], errors="replace") as fh:
        code, line = classify(fh.readlines())
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
