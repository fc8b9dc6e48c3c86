"""A small msgpack encoder (binary-type mode) so the drawing helpers need nothing beyond the standard library.

The kernel's interpreter may not have the `msgpack` package; the encoding is byte-for-byte what
`msgpack.packb(obj, use_bin_type=True)` produces for None, bools, ints, floats, str, bytes, lists/tuples and dicts.
"""

from __future__ import annotations

import struct
from typing import Any


def packb(obj: Any) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_len(len(data), out, fix=(0xA0, 31), codes=(0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _pack_len(len(data), out, fix=None, codes=(0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, (list, tuple)):
        _pack_len(len(obj), out, fix=(0x90, 15), codes=(None, 0xDC, 0xDD))
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        _pack_len(len(obj), out, fix=(0x80, 15), codes=(None, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError(f"cannot serialize {type(obj).__name__} for a drawing")


def _pack_len(n: int, out: bytearray, *, fix: tuple[int, int] | None, codes: tuple[int | None, int, int]) -> None:
    code8, code16, code32 = codes
    if fix is not None and n <= fix[1]:
        out.append(fix[0] | n)
    elif code8 is not None and n <= 0xFF:
        out.append(code8)
        out.append(n)
    elif n <= 0xFFFF:
        out.append(code16)
        out += struct.pack(">H", n)
    elif n <= 0xFFFFFFFF:
        out.append(code32)
        out += struct.pack(">I", n)
    else:
        raise ValueError("object too large for msgpack")


def _pack_int(n: int, out: bytearray) -> None:
    if 0 <= n <= 0x7F:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        for code, fmt, limit in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF), (0xCE, ">I", 0xFFFFFFFF),
                                 (0xCF, ">Q", 0xFFFFFFFFFFFFFFFF)):
            if n <= limit:
                out.append(code)
                out += struct.pack(fmt, n)
                return
        raise OverflowError("integer too large for msgpack")
    else:
        for code, fmt, limit in ((0xD0, ">b", -0x80), (0xD1, ">h", -0x8000), (0xD2, ">i", -0x80000000),
                                 (0xD3, ">q", -0x8000000000000000)):
            if n >= limit:
                out.append(code)
                out += struct.pack(fmt, n)
                return
        raise OverflowError("integer too small for msgpack")
