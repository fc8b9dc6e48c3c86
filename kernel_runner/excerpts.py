"""Bounded quotes of untrusted text: how anything that came from the wire appears in a log line or a reply.

A frame may be 64 MiB (docs/protocol.md §2.7); quoting it whole once wrote 128 MiB of log for one unknown op.
"""

from __future__ import annotations

EXCERPT_CHARS = 120


def excerpt(value: str | bytes, limit: int = EXCERPT_CHARS, *, quote: bool = True) -> str:
    """At most `limit` characters (bytes) of `value`, saying how long the whole was when it was cut.

    Quoted (`repr`, so control characters cannot forge log lines) unless `quote` is False, for a text the runner
    composed itself around wire data (an error message), which must only be kept short.
    """
    if len(value) <= limit:
        return repr(value) if quote or isinstance(value, bytes) else value
    unit = "bytes" if isinstance(value, bytes) else "characters"
    head = value[:limit]
    shown = repr(head) if quote or isinstance(head, bytes) else head
    return f"{shown}… ({len(value)} {unit})"


__all__ = ["EXCERPT_CHARS", "excerpt"]
