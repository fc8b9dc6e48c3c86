"""Writes numbered lines in rounds, waiting before each later round until the test releases it.

Usage: paused_writer.py ROUNDS LINES RELEASE_PREFIX. Round r (r >= 1) starts once something is written to the named
pipe RELEASE_PREFIX<r> (the test makes the pipes), so a test can let the agent disconnect and reconnect between
rounds while nothing is in flight. Lines are "<round>:<line>\n". After writing round r the file
RELEASE_PREFIX<r>.written appears.
"""

import sys


def main() -> None:
    rounds, lines, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    out = sys.stdout.buffer
    for round_no in range(rounds):
        if round_no:
            with open(f"{prefix}{round_no}", "rb") as release:  # blocks until the test opens the pipe and writes
                release.read()
        out.write(b"".join(b"%d:%d\n" % (round_no, line) for line in range(lines)))
        out.flush()
        open(f"{prefix}{round_no}.written", "wb").close()


if __name__ == "__main__":
    main()
