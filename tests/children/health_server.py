"""A model-server stand-in: a real http.server on 127.0.0.1 whose health endpoint tests can switch.

    health_server.py PORT [--path /health] [--listen-after S] [--healthy-after S] [--control FILE]
                          [--ok-status 200] [--starting-status 503] [--exit-after S] [--code N]

GET <path> answers --starting-status until --healthy-after seconds after the port opened, then --ok-status.
When the --control file exists and is not empty, its first word wins over that, read on every request:
an integer (answer that status), `hang` (answer nothing for 30 s), `close` (close without an answer) or
`trickle` (send a header one byte per 0.1 s for 20 s, so no single read ever times out).
Other paths get 404. --exit-after S exits with --code after S seconds of listening, saying so on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--listen-after", type=float, default=0.0)
    parser.add_argument("--healthy-after", type=float, default=0.0)
    parser.add_argument("--control", type=Path, default=None)
    parser.add_argument("--ok-status", type=int, default=200)
    parser.add_argument("--starting-status", type=int, default=503)
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--code", type=int, default=1)
    args = parser.parse_args()
    print(f"health_server {os.getpid()} starting", flush=True)
    if args.listen_after:
        time.sleep(args.listen_after)
    opened_at = 0.0

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != args.path:
                self._answer(404)
                return
            word = self._control()
            if word == "hang":
                threading.Event().wait(30)
                return
            if word == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(200):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.1)
                self.close_connection = True
                return
            if word == "close":
                self.close_connection = True
                self.connection.close()
                return
            if word is not None and word.isdigit():
                self._answer(int(word))
                return
            healthy = time.monotonic() - opened_at >= args.healthy_after
            self._answer(args.ok_status if healthy else args.starting_status)

        def _control(self) -> str | None:
            if args.control is None:
                return None
            try:
                words = args.control.read_text().split()
            except OSError:
                return None
            return words[0] if words else None

        def _answer(self, status: int) -> None:
            body = f"{status}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *log_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    opened_at = time.monotonic()
    print(f"health_server {os.getpid()} listening on {args.port}", flush=True)
    if args.exit_after is not None:
        def later() -> None:
            time.sleep(args.exit_after)
            print("exiting on purpose", file=sys.stderr, flush=True)
            os._exit(args.code)

        threading.Thread(target=later, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
