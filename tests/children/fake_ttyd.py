#!/usr/bin/env python3
"""Stand-in for ttyd (Debian 12 does not package it): takes ttyd's `-p PORT` and listens there, printing its argv.

`--help` lists options as ttyd 1.7 and later do, `-W, --writable` among them (docs/protocol.md §6.11); it writes them
to stderr, and the runner reads both streams.
"""

import socket
import sys

args = sys.argv[1:]
if args == ["--help"]:
    sys.stderr.write("ttyd is a tool for sharing terminal over the web\n\nOPTIONS:\n"
                     "    -p, --port              Port to listen (default: 7681, use `0` for random port)\n"
                     "    -W, --writable          Allow clients to write to the TTY (readonly by default)\n")
    sys.exit(0)
port = int(args[args.index("-p") + 1])
print("fake ttyd argv:", args, flush=True)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(8)
while True:
    conn, _ = server.accept()
    conn.close()
