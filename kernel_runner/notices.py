"""The runner's own words to the user as output records, bounded whatever they quote (docs/protocol.md §2.5).

A notice that quotes user input quotes an excerpt (excerpts.py); this is the last guard, so no notice record can ever
come near the 1 MiB record bound, whatever a caller put in it (a tool's stderr, an exception's text).
"""

from __future__ import annotations

NOTICE_MAX_BYTES = 64 * 1024


def notice_bytes(text: str, limit: int = NOTICE_MAX_BYTES) -> bytes:
    """`text` as one stderr record: UTF-8 (undecodable input as replacement characters), at most `limit` bytes, cut at
    a character boundary and still ending in a newline when the text did."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    marker = "… (cut)\n" if text.endswith("\n") else "… (cut)"
    cut = limit - len(marker.encode())
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never inside a multibyte character
        cut -= 1
    return data[:cut] + marker.encode()


__all__ = ["NOTICE_MAX_BYTES", "notice_bytes"]
