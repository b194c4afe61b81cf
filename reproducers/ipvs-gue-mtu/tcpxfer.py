#!/usr/bin/env python3
"""Tiny TCP sink and source (stdlib only) for the IPVS transfer.

usage: tcpxfer.py serve PORT            (accept forever; read to EOF; reply "got N")
       tcpxfer.py send ADDR PORT BYTES DEADLINE
            -> prints "ok N SECONDS" or "incomplete SENT SECONDS reason", exit 0 / 1
"""

from __future__ import annotations

import socket
import sys
import time


def serve(port: int) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        total = 0
        conn.settimeout(120)
        try:
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
            conn.sendall(f"got {total}\n".encode())
        except OSError:
            pass
        conn.close()


def send(addr: str, port: int, size: int, deadline: float) -> int:
    start = time.monotonic()
    sent = 0
    try:
        sock = socket.create_connection((addr, port), timeout=deadline)
        sock.settimeout(max(0.5, deadline - (time.monotonic() - start)))
        block = b"\xa5" * 65536
        while sent < size:
            sock.settimeout(max(0.1, deadline - (time.monotonic() - start)))
            sent += sock.send(block[: size - sent])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(0.1, deadline - (time.monotonic() - start)))
        reply = sock.recv(100).decode(errors="replace").strip()
    except OSError as exc:
        print(f"incomplete {sent} {time.monotonic() - start:.1f} {type(exc).__name__}")
        return 1
    took = time.monotonic() - start
    if reply != f"got {size}":
        print(f"incomplete {sent} {took:.1f} reply={reply!r}")
        return 1
    print(f"ok {size} {took:.1f}")
    return 0


def main() -> int:
    if sys.argv[1] == "serve":
        return serve(int(sys.argv[2]))
    if sys.argv[1] == "send":
        return send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    raise SystemExit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    sys.exit(main())
