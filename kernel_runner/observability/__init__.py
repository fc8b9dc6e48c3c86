"""What ops read: log set-up and sinks, per-child log buffers and files, lifecycle events, Prometheus metrics
(docs/operations.md)."""
