"""The `kernel-runner` command (and `python -m kernel_runner`): picks the subcommand's module before importing it.

`kernel-runner ctl` answers health checks from a fresh process each time, so it must not pay for the runner's
imports (pykka, the actor modules; docs/operations.md §1), and neither need `kernel-runner client`. Everything else
is the runner itself, kernel_runner.cli.runner.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ctl"]:
        from kernel_runner.cli.ctl import main as ctl_main

        return ctl_main(args[1:])
    if args[:1] == ["client"]:
        from kernel_runner.cli.client import main as client_main

        return client_main(args[1:])
    from kernel_runner.cli.runner import main as runner_main

    return runner_main(args)
