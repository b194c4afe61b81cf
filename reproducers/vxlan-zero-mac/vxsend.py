#!/usr/bin/env python3
"""Send one VXLAN-encapsulated inner UDP datagram (stdlib only).

usage: vxsend.py REMOTE VNI INNER_DST_MAC INNER_SRC_MAC INNER_SRC_IP INNER_DST_IP DPORT PAYLOAD

The outer UDP/IP comes from an ordinary UDP socket to REMOTE:4789; the inner Ethernet/IPv4/UDP
frame is packed by hand so the inner source MAC can be anything, including all zeroes.
"""

from __future__ import annotations

import socket
import struct
import sys

from packet import ipv4, mac  # reproducers/lib, uploaded beside this file


def main() -> int:
    remote, vni, dst_mac, src_mac, src_ip, dst_ip, dport, payload = sys.argv[1:9]
    data = payload.encode()
    udp = struct.pack("!HHHH", 40000, int(dport), 8 + len(data), 0) + data  # UDP csum 0: none
    ip = ipv4(src_ip, dst_ip, 17, udp, ident=1)
    inner = mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip
    vxlan = struct.pack("!II", 0x08000000, int(vni) << 8)  # I flag, VNI
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(vxlan + inner, (remote, 4789))
    return 0


if __name__ == "__main__":
    sys.exit(main())
