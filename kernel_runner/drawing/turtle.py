"""Turtle graphics on a Canvas: a triangle cursor that draws translucent red lines as it moves (docs/protocol.md §8.4)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kernel_runner.drawing.color import Color, Colors

if TYPE_CHECKING:
    from kernel_runner.drawing.canvas import Canvas

LINE_COLOR = Color.from_hex("#ff000080")
CURSOR_FILL = Color.from_hex("#ffc8c8ff")


class Vec2D(tuple[float, float]):
    """A 2-D vector with + - and scalar *, as the turtle's positions."""

    def __new__(cls, x: float, y: float) -> Vec2D:
        return super().__new__(cls, (x, y))

    @property
    def x(self) -> float:
        return self[0]

    @property
    def y(self) -> float:
        return self[1]

    def __add__(self, other: object) -> Vec2D:
        if not isinstance(other, tuple) or len(other) != 2:
            return NotImplemented
        return Vec2D(self[0] + other[0], self[1] + other[1])

    def __sub__(self, other: tuple[float, float]) -> Vec2D:
        return Vec2D(self[0] - other[0], self[1] - other[1])

    def __mul__(self, factor: object) -> Vec2D:
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return Vec2D(self[0] * factor, self[1] * factor)

    __rmul__ = __mul__

    def __abs__(self) -> float:
        return math.hypot(self[0], self[1])

    def __repr__(self) -> str:
        return f"Vec2D({self[0]:.2f}, {self[1]:.2f})"


class Turtle:
    """Starts at the canvas centre heading 90° (towards +x) with the pen down."""

    def __init__(self, canvas: Canvas) -> None:
        self.canvas = canvas
        start = Vec2D(canvas.width / 2, canvas.height / 2)
        self.cursor = canvas.create_triangle(start.x, start.y, 12, 18, border=Colors.Red, fill=CURSOR_FILL, angle=90)
        self._start = start
        self._position = start
        self._heading = 90.0
        self._pen_down = True

    @property
    def heading(self) -> float:
        return self._heading

    def forward(self, distance: float) -> None:
        radians = math.radians(self._heading)
        self._move_to(self._position + Vec2D(math.sin(radians) * distance, -math.cos(radians) * distance))

    def left(self, degrees: float) -> None:
        self.cursor.rotate(-degrees)
        self._heading -= degrees

    def right(self, degrees: float) -> None:
        self.cursor.rotate(degrees)
        self._heading += degrees

    def pos(self) -> Vec2D:
        """Position relative to where the turtle started."""
        return self._position - self._start

    def setpos(self, x: float | tuple[float, float], y: float | None = None) -> None:
        """Move to start + (x, y); accepts a pair too."""
        if y is None:
            if not isinstance(x, tuple):
                raise TypeError("setpos takes (x, y) or one (x, y) pair")
            x, y = x
        assert not isinstance(x, tuple)
        self._move_to(self._start + Vec2D(x, y))

    def penup(self) -> None:
        self._pen_down = False

    def pendown(self) -> None:
        self._pen_down = True

    def _move_to(self, target: Vec2D) -> None:
        canvas = self.canvas
        canvas.begin_group()
        if self._pen_down:
            canvas.create_line(self._position.x, self._position.y, target.x, target.y, color=LINE_COLOR)
        self.cursor.set_x(target.x)
        self.cursor.set_y(target.y)
        canvas.end_group()
        self._position = target


__all__ = ["Turtle", "Vec2D"]
