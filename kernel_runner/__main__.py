"""`python -m kernel_runner` → entry.main() (kernel_runner.cli.runner, or the light `ctl`)."""

from __future__ import annotations

import sys

from kernel_runner.cli.entry import main

sys.exit(main())
