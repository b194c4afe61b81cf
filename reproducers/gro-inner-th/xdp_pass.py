#!/usr/bin/env python3
"""Attach a two-instruction XDP_PASS program to a device in native (driver) mode.

veth only runs its NAPI receive path - the only place it does GRO before v5.13 - while an
XDP program is attached. Loading the program by hand (bpf() syscall + rtnetlink IFLA_XDP)
avoids needing clang, an ELF object or a mounted bpffs in the guest.

usage: xdp_pass.py IFACE      (exit 0 attached, 1 with a one-line reason)
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_XDP = 6
RTM_SETLINK = 19
NLM_F_REQUEST, NLM_F_ACK = 1, 4
IFLA_XDP = 43
NLA_F_NESTED = 0x8000
IFLA_XDP_FD, IFLA_XDP_FLAGS = 1, 3
XDP_FLAGS_DRV_MODE = 1 << 2


def load_prog() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    # r0 = XDP_PASS (2); exit
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(struct.pack(
        "<IIQQIIQII", BPF_PROG_TYPE_XDP, 2, ctypes.addressof(insn_buf), ctypes.addressof(license),
        1, len(log), ctypes.addressof(log), 0, 0), 48)
    fd = libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, 48)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_LOAD: {os.strerror(err)} {log.value.decode(errors='replace').strip()}")
    return fd


def attach(ifindex: int, fd: int) -> None:
    nested = struct.pack("<HHi", 8, IFLA_XDP_FD, fd) + struct.pack("<HHI", 8, IFLA_XDP_FLAGS, XDP_FLAGS_DRV_MODE)
    attr = struct.pack("<HH", 4 + len(nested), IFLA_XDP | NLA_F_NESTED) + nested
    body = struct.pack("<BBHiII", socket.AF_UNSPEC, 0, 0, ifindex, 0, 0) + attr
    msg = struct.pack("<IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, 0))
    sock.send(msg)
    reply = sock.recv(65536)
    _, mtype, _, _, _ = struct.unpack("<IHHII", reply[:16])
    if mtype == 2:  # NLMSG_ERROR
        (code,) = struct.unpack("<i", reply[16:20])
        if code:
            raise OSError(-code, f"RTM_SETLINK IFLA_XDP: {os.strerror(-code)}")


def main() -> int:
    try:
        attach(socket.if_nametoindex(sys.argv[1]), load_prog())
    except OSError as exc:
        print(f"cannot attach native XDP to {sys.argv[1]}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
