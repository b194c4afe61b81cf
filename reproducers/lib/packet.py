"""Packing helpers shared by the reproducers' raw-socket senders (stdlib only).

Senders pack frames by hand instead of importing scapy, which costs ~4 s per import under TCG.
This file is uploaded beside every reproducer (see lib/README), so a sender imports it as
`from packet import ...`.
"""

from __future__ import annotations

import socket
import struct


def mac(text: str) -> bytes:
    """'18:be:92:a0:ee:26' -> 6 bytes."""
    return bytes(int(part, 16) for part in text.split(":"))


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, tos: int = 0, ident: int = 0,
         frag: int = 0) -> bytes:
    """An IPv4 header (no options, TTL 64, valid checksum) followed by `payload`.

    `frag` is the flags/fragment-offset field, e.g. 0x4000 for DF.
    """
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident & 0xFFFF, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload
