"""Process mechanics: spawn, watch, stop a process tree, the subreaper, the child environment, wake-up pipes and
the OOM process watch (docs/architecture.md §6)."""
