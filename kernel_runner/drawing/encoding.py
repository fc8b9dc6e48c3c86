"""The payload of a drawing media item: standard base64 (ASCII) of the msgpack encoding of a command list
(docs/protocol.md §8.4). Same module and function names as upstream's."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from kernel_runner.drawing._msgpack import packb


def encode_commands(cmdlist: Sequence[Sequence[Any]]) -> str:
    return base64.b64encode(packb(cmdlist)).decode("ascii")


def decode_commands(data: str | bytes) -> Any:
    """The inverse, for inspecting what was sent; unlike encoding it needs the `msgpack` package."""
    import msgpack

    return msgpack.unpackb(base64.b64decode(data), raw=False)


__all__ = ["decode_commands", "encode_commands"]
