#!/usr/bin/env python3
"""Send one TCP flow's consecutive segments, GRE-encapsulated, on a raw socket (stdlib only).

Every segment carries correct checksums, DF, and incrementing IP ids, so GRO on the receiving
veth may merge consecutive ones into one encapsulated super-packet (the write-up's recipe).

usage: gresend.py IFACE DST_MAC OUTER_SRC OUTER_DST SEGMENTS [PAYLOAD] [BURST] [PAUSE]
"""

from __future__ import annotations

import socket
import struct
import sys
import time

from packet import csum, ipv4  # reproducers/lib, uploaded beside this file


def tcp(src: str, dst: str, seq: int, payload: bytes) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", 40000, 80, seq & 0xFFFFFFFF, 1, 5 << 4, 0x10, 8192, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
    c = csum(pseudo + hdr + payload)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload


def main() -> int:
    iface, dst_mac, outer_src, outer_dst = sys.argv[1:5]
    segments = int(sys.argv[5])
    size = int(sys.argv[6]) if len(sys.argv) > 6 else 1436
    burst = int(sys.argv[7]) if len(sys.argv) > 7 else 4
    pause = float(sys.argv[8]) if len(sys.argv) > 8 else 0.02
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    src_mac = sock.getsockname()[4][:6]
    dst = bytes(int(p, 16) for p in dst_mac.split(":"))
    inner_src, inner_dst = "10.99.0.1", "10.99.0.2"
    payload = bytes((i * 7) & 0xFF for i in range(size))
    for n in range(segments):
        inner = ipv4(inner_src, inner_dst, 6, tcp(inner_src, inner_dst, 1 + n * size, payload),
                     ident=1000 + n, frag=0x4000)
        outer = ipv4(outer_src, outer_dst, 47, struct.pack("!HH", 0, 0x0800) + inner, ident=5000 + n, frag=0x4000)
        sock.send(dst + src_mac + b"\x08\x00" + outer)
        if (n + 1) % burst == 0:
            time.sleep(pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
