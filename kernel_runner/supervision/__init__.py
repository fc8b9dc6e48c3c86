"""The generic supervision library: child specs, restart policy, the child record and directory, exit reasons,
timers and the clock, and the base every supervised actor uses. It knows nothing of services, languages or the
wire, so a test harness can supervise any pykka actor with it (docs/architecture.md §3). The supervisor itself is
kernel_runner/supervisor.py."""
