"""The agent's edge: frames in and out, the outbox between producers and the socket, the answers owed to the
agent, and the status board (docs/protocol.md §2, docs/architecture.md §5)."""
