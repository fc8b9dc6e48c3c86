"""Colours as `#rrggbbaa` strings, alpha always included (docs/protocol.md §8.4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union


class Color:
    """An RGBA colour; `str(color)` and `to_hex()` give the lowercase `#rrggbbaa` form the drawing commands carry."""

    __slots__ = ("alpha", "blue", "green", "red")

    def __init__(self, red: int, green: int, blue: int, alpha: int = 255) -> None:
        for part in (red, green, blue, alpha):
            if not isinstance(part, int) or not 0 <= part <= 255:
                raise ValueError(f"colour components are integers 0-255, got {part!r}")
        self.red, self.green, self.blue, self.alpha = red, green, blue, alpha

    @classmethod
    def from_hex(cls, value: str) -> Color:
        """`#rgb`, `#rrggbb` or `#rrggbbaa` (the `#` is optional)."""
        text = value.strip().lstrip("#")
        if len(text) == 3:
            text = "".join(ch * 2 for ch in text)
        if len(text) == 6:
            text += "ff"
        if len(text) != 8:
            raise ValueError(f"not a hex colour: {value!r}")
        try:
            parts = [int(text[i : i + 2], 16) for i in range(0, 8, 2)]
        except ValueError:
            raise ValueError(f"not a hex colour: {value!r}") from None
        return cls(*parts)

    @classmethod
    def from_rgba(cls, values: Sequence[int]) -> Color:
        """A list of 3 or 4 integers 0-255 (alpha defaults to opaque)."""
        if len(values) not in (3, 4):
            raise ValueError(f"expected 3 or 4 components, got {len(values)}")
        return cls(*(int(v) for v in values))

    @classmethod
    def from_bytes(cls, value: bytes) -> Color:
        """4 raw bytes: red, green, blue, alpha."""
        if len(value) != 4:
            raise ValueError(f"expected 4 bytes, got {len(value)}")
        return cls(*value)

    def to_hex(self) -> str:
        return f"#{self.red:02x}{self.green:02x}{self.blue:02x}{self.alpha:02x}"

    def to_bytes(self) -> bytes:
        return bytes((self.red, self.green, self.blue, self.alpha))

    def __str__(self) -> str:
        return self.to_hex()

    def __repr__(self) -> str:
        return f"Color.from_hex({self.to_hex()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Color) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())


ColorLike = Union[Color, str, Sequence[int], bytes]


def as_color(value: ColorLike) -> Color:
    if isinstance(value, Color):
        return value
    if isinstance(value, str):
        return Color.from_hex(value)
    if isinstance(value, bytes):
        return Color.from_bytes(value)
    return Color.from_rgba(value)


class Colors:
    """The named colours of the legacy API."""

    Transparent = Color(255, 255, 255, 0)
    Black = Color(0, 0, 0)
    Gray = Color(128, 128, 128)
    White = Color(255, 255, 255)
    Red = Color(255, 0, 0)
    Green = Color(0, 255, 0)
    Blue = Color(0, 0, 255)
    Yellow = Color(255, 255, 0)
    Magenta = Color(255, 0, 255)
    Cyan = Color(0, 255, 255)
