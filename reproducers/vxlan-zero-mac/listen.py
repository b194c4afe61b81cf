#!/usr/bin/env python3
"""Print every UDP datagram payload that arrives on ADDR:PORT, one per line, flushed.

usage: listen.py ADDR PORT
"""

import socket
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, _ = sock.recvfrom(2048)
    print(data.decode(errors="replace"), flush=True)
