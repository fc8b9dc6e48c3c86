"""Writes N bytes to stdout in 64 KiB chunks (a counter pattern), recording how far it got in a progress file.

Usage: flood.py TOTAL_BYTES PROGRESS_FILE. The progress file holds the byte count written so far, updated
every MiB, so a test can see the writer stall when the reader applies backpressure.
"""

import os
import sys

CHUNK = 64 * 1024


def main() -> None:
    total = int(sys.argv[1])
    progress = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = bytes(range(256)) * (CHUNK // 256)
    written = 0
    out = sys.stdout.fileno()
    while written < total:
        data = block[: min(CHUNK, total - written)]
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
        written += len(data)
        if written % (1024 * 1024) == 0 or written == total:
            os.pwrite(progress, f"{written:>16}".encode(), 0)
    os.close(progress)


if __name__ == "__main__":
    main()
