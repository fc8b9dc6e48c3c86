"""`python -m kernel_runner` → cli.main()."""

from __future__ import annotations

import sys

from kernel_runner.cli import main

sys.exit(main())
