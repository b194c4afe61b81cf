#!/usr/bin/env python3
"""Minimal TCP file transfer (stdlib only) so the comparison does not depend on nc flavours.

usage: xfer.py serve ADDR PORT OUTFILE TIMEOUT   (accept one connection, write what arrives)
       xfer.py send ADDR PORT INFILE TIMEOUT     (connect, send the file, close)
       xfer.py compare SENT RECEIVED             (prints same / differ@OFFSET / short@LEN)
"""

from __future__ import annotations

import socket
import sys


def serve(addr: str, port: int, out: str, timeout: float) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    srv.settimeout(timeout)
    conn, _ = srv.accept()
    conn.settimeout(timeout)
    with open(out, "wb") as fh:
        while True:
            try:
                chunk = conn.recv(1 << 16)
            except (socket.timeout, OSError):
                return 1
            if not chunk:
                return 0
            fh.write(chunk)


def send(addr: str, port: int, path: str, timeout: float) -> int:
    sock = socket.create_connection((addr, port), timeout=timeout)
    with open(path, "rb") as fh:
        sock.sendall(fh.read())
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except (socket.timeout, OSError):
        pass
    sock.close()
    return 0


def compare(sent: str, received: str) -> str:
    with open(sent, "rb") as fh:
        a = fh.read()
    try:
        with open(received, "rb") as fh:
            b = fh.read()
    except OSError:
        b = b""
    n = min(len(a), len(b))
    if a[:n] != b[:n]:
        first = next(i for i in range(n) if a[i] != b[i])
        return f"differ@{first}"
    if len(b) < len(a):
        return f"short@{len(b)}"
    if len(b) > len(a):
        return f"long@{len(b)}"
    return "same"


def main() -> int:
    cmd = sys.argv[1]
    if cmd == "serve":
        return serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    if cmd == "send":
        return send(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    if cmd == "compare":
        print(compare(sys.argv[2], sys.argv[3]))
        return 0
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
