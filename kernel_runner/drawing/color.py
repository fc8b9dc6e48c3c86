"""`Color` and the named `Colors`, with upstream Backend.AI's names, signatures and results (docs/protocol.md §8.4).

Drawing commands carry a colour as lowercase `#rrggbbaa` text (`Color.to_hex()`).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Sequence


class Color:
    """An RGBA colour, each component an integer 0-255 (alpha 255 is opaque)."""

    def __init__(self, red: int, green: int, blue: int, alpha: int = 255) -> None:
        self.red = _component(red)
        self.green = _component(green)
        self.blue = _component(blue)
        self.alpha = _component(alpha)

    # Static, not class methods: `Colors.from_rgba(...)` must give a plain Color, not look up an enum member.
    @staticmethod
    def from_hex(value: str) -> Color:
        """`#rrggbbaa`, as the commands carry it; `#rrggbb` and `#rgb` mean opaque. The `#` is optional."""
        text = value.strip().removeprefix("#")
        if len(text) == 3:
            text = "".join(digit * 2 for digit in text)
        if len(text) == 6:
            text += "ff"
        try:
            if len(text) != 8:
                raise ValueError
            red, green, blue, alpha = (int(text[i : i + 2], 16) for i in range(0, 8, 2))
        except ValueError:
            raise ValueError(f"not a hex colour: {value!r}") from None
        return Color(red, green, blue, alpha)

    @staticmethod
    def from_rgba(value: Sequence[int]) -> Color:
        """Red, green, blue and optionally alpha, e.g. `[255, 0, 0, 128]`."""
        if len(value) not in (3, 4):
            raise ValueError(f"a colour has 3 or 4 components, got {len(value)}")
        return Color(*value)

    @staticmethod
    def from_bytes(value: bytes) -> Color:
        """Exactly 4 bytes: red, green, blue, alpha (the inverse of `to_bytes`)."""
        if len(value) != 4:
            raise ValueError(f"a colour is 4 bytes, got {len(value)}")
        return Color(*value)

    def to_hex(self, include_alpha: bool = True) -> str:
        text = f"#{self.red:02x}{self.green:02x}{self.blue:02x}"
        return text + f"{self.alpha:02x}" if include_alpha else text

    def to_bytes(self) -> bytes:
        return bytes((self.red, self.green, self.blue, self.alpha))

    def to_rgba(self) -> str:
        """CSS-like text; alpha stays 0-255 here, as upstream writes it."""
        return f"rgba({self.red},{self.green},{self.blue},{self.alpha})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Color) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"Color({self.red}, {self.green}, {self.blue}, {self.alpha})"


def _component(value: int) -> int:
    try:
        number = operator.index(value)  # any integer type, numpy's included
    except TypeError:
        raise TypeError(f"colour components are integers 0-255, got {value!r}") from None
    if not 0 <= number <= 255:
        raise ValueError(f"colour components are integers 0-255, got {value!r}")
    return number


class Colors(Color, enum.Enum):
    """The named colours; each member is a Color (an enum, as upstream's: `Colors.Red.name`, `list(Colors)` work)."""

    Transparent = (255, 255, 255, 0)
    Black = (0, 0, 0, 255)
    Gray = (128, 128, 128, 255)
    White = (255, 255, 255, 255)
    Red = (255, 0, 0, 255)
    Green = (0, 255, 0, 255)
    Blue = (0, 0, 255, 255)
    Yellow = (255, 255, 0, 255)
    Magenta = (255, 0, 255, 255)
    Cyan = (0, 255, 255, 255)


__all__ = ["Color", "Colors"]
