"""Prints a reason on stderr and exits with the given code before opening any port."""

import sys

print("fatal: config file /nope is missing", file=sys.stderr, flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
