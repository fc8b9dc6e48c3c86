#!/usr/bin/env python3
"""Stand-in for ttyd (Debian does not package it): takes ttyd's `-p PORT` and listens there, printing its argv."""

import socket
import sys

args = sys.argv[1:]
port = int(args[args.index("-p") + 1])
print("fake ttyd argv:", args, flush=True)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(8)
while True:
    conn, _ = server.accept()
    conn.close()
