"""A listener as light as Python gets (run it with -S: no site, no argparse), so fifty start quickly on two cores.

Usage: python -S tiny_listener.py PORT. Accepts and closes connections on 127.0.0.1:PORT until killed.
"""

import socket
import sys

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
while True:
    server.accept()[0].close()
