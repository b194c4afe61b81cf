#!/usr/bin/env python3
"""Send Ether/IPv4(ECT(1))/GRE(key)/Ether/IPv4(not-ECT)/ICMP frames on a raw socket.

Plain stdlib instead of scapy: importing scapy costs ~4 s of a ~7 s guest run, and this
frame is simple enough to pack by hand. The inner frame is addressed to 18:be:92:a0:ee:26;
a kernel that reads the inner *Ethernet* header as IPv4 for RFC 6040 ECN propagation flips
byte 1 of that address to 0xbd (the write-up's symptom).

usage: send.py IFACE DST_MAC SRC_IP DST_IP [COUNT] [INTERVAL]
"""

from __future__ import annotations

import socket
import struct
import sys
import time

from packet import csum, ipv4, mac  # reproducers/lib, uploaded beside this file

INNER_DST = "18:be:92:a0:ee:26"
INNER_SRC = "18:be:92:a0:6c:05"
GRE_KEY = 0x49000000


def frame(dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, seq: int) -> bytes:
    payload = bytes(range(56))
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    inner_ip = ipv4("10.254.0.1", "10.254.0.2", 1, icmp, tos=0x00)  # inner: not-ECT
    inner = mac(INNER_DST) + mac(INNER_SRC) + b"\x08\x00" + inner_ip
    gre = struct.pack("!HHI", 0x2000, 0x6558, GRE_KEY) + inner  # K bit, transparent Ethernet bridging
    outer_ip = ipv4(src_ip, dst_ip, 47, gre, tos=0x01)  # outer: ECT(1)
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + outer_ip


def main() -> int:
    iface, dst_mac, src_ip, dst_ip = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0.3
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    src_mac = ":".join(f"{b:02x}" for b in sock.getsockname()[4][:6])
    for seq in range(count):
        sock.send(frame(dst_mac, src_mac, src_ip, dst_ip, seq))
        time.sleep(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
