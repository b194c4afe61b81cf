#!/usr/bin/env python3
"""Decide gro-inner-th from the bpftrace header-offset lines (and dmesg).

For a GRE/IPv4/TCP super-packet built by GRO, the inner transport header must start right after
the 20-byte inner IPv4 header (the sender uses no IP options): ith == inh + 20. Kernels without
d51c5907e980 leave a stale ith (the write-up saw inh=294, ith=254).

usage: oracle.py OFFSETS_FILE [DMESG_FILE]   -> one line; exit 0 good, 1 bad, 125 skip
"""

from __future__ import annotations

import re
import sys

LINE_RE = re.compile(r"ENC gso_size=(\d+) gso_segs=(\d+) nh=(\d+) th=(\d+) inh=(\d+) ith=(\d+) len=(\d+)")
OOPS_RE = re.compile(r"(BUG: unable to handle|general protection fault|Oops:|skb_gso_transport_seglen)")
INNER_IP_HLEN = 20


def classify(lines: list[str], dmesg: list[str] | None = None) -> tuple[int, str]:
    for line in dmesg or []:
        if OOPS_RE.search(line) and ("Oops" in line or "BUG" in line or "fault" in line):
            return 1, f"kernel oops while forwarding: {line.strip()[:120]} (bad)"
    seen = [tuple(int(x) for x in m.groups()) for m in map(LINE_RE.search, lines) if m]
    if not seen:
        return 125, "skip: no encapsulated GSO packet was forwarded (GRO did not merge): oracle not exercised"
    for gso_size, segs, nh, th, inh, ith, length in seen:
        if ith != inh + INNER_IP_HLEN:
            return 1, (f"inner transport header {ith}, expected {inh + INNER_IP_HLEN} (inh {inh}, th {th}, "
                       f"gso_size {gso_size}) in {len(seen)} super-packets (bad)")
    gso_size, segs, nh, th, inh, ith, length = seen[0]
    return 0, (f"{len(seen)} encapsulated GSO skbs checked, inner transport header = inner network + 20 "
               f"({inh}+20={ith}) (good)")


def main() -> int:
    with open(sys.argv[1], errors="replace") as fh:
        lines = fh.readlines()
    dmesg = None
    if len(sys.argv) > 2:
        try:
            with open(sys.argv[2], errors="replace") as fh:
                dmesg = fh.readlines()
        except OSError:
            dmesg = None
    code, line = classify(lines, dmesg)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
