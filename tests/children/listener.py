"""A service stand-in: listens on PORT (after --delay seconds) and answers each connection with a line.

--ignore-term: ignore SIGTERM; --grandchild: also start a grandchild that ignores SIGTERM and prints its pid;
--exit-after S: exit with --code after S seconds of listening; --gate FILE: listen only once FILE exists (a slow app
whose readiness the test decides).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--code", type=int, default=1)
    parser.add_argument("--gate", default=None)
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        child = subprocess.Popen(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
        )
        print(f"grandchild {child.pid}", flush=True)
    print(f"listener {os.getpid()} starting", flush=True)
    if args.delay:
        time.sleep(args.delay)
    while args.gate is not None and not os.path.exists(args.gate):
        time.sleep(0.02)  # a stand-in's own pace; the tests wait on the port, not on this
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(64)
    if args.exit_after is not None:
        def later() -> None:
            time.sleep(args.exit_after)
            print("exiting on purpose", file=sys.stderr, flush=True)
            os._exit(args.code)

        threading.Thread(target=later, daemon=True).start()
    while True:
        conn, _ = server.accept()
        conn.sendall(b"hello\n")
        conn.close()


if __name__ == "__main__":
    main()
