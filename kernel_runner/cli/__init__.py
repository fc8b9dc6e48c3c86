"""The command line: `kernel-runner` (the runner), `kernel-runner ctl` and `kernel-runner client`, picked in
entry.py before anything heavy is imported (docs/architecture.md §2.1)."""
