"""A daemon the classic way (fork, setsid, fork again): prints `daemon <pid>` and lives for LIFE seconds.

Its parent and grandparent are gone once this script returns, so the daemon is an orphan that a subreaper adopts.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    life = float(sys.argv[1])
    if os.fork():
        os.wait()  # the first child exits at once, leaving the daemon without a parent
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    print(f"daemon {os.getpid()}", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let go of the runner's pipes, as a daemon does
        os.dup2(devnull, fd)
    time.sleep(life)
    os._exit(0)


if __name__ == "__main__":
    main()
