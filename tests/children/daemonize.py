"""A user's program that daemonizes the classic way (fork, setsid, fork again): `daemonize.py LIFE [PID_FILE]`.

The daemon prints `daemon <pid>`, writes its pid to PID_FILE if given (the file appears whole), lets go of the
runner's pipes and lives for LIFE seconds. Its parent and grandparent are gone once this script returns, so the
daemon is an orphan that a subreaper adopts, and the `exec` op that started it finishes.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    life = float(sys.argv[1])
    pid_file = sys.argv[2] if len(sys.argv) > 2 else None
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
    if pid_file is not None:
        with open(pid_file + ".tmp", "w") as out:
            out.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
    time.sleep(life)
    os._exit(0)


if __name__ == "__main__":
    main()
