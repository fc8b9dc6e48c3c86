"""The git runner's terminal delegate: the actor, its pty and socket thread, and its `%` commands."""
