"""Turtle graphics on a Canvas, with upstream Backend.AI's names: a triangle cursor that leaves translucent red lines
(docs/protocol.md §8.4)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from kernel_runner.drawing.color import Color, Colors

if TYPE_CHECKING:
    from collections.abc import Sequence


class Cursor(Protocol):
    def set_x(self, x: float) -> None: ...

    def set_y(self, y: float) -> None: ...

    def rotate(self, a: float) -> None: ...


class Surface(Protocol):
    """What a turtle draws on (canvas.Canvas is one): a Protocol, so this module needs nothing of canvas.py, which
    makes turtles (`Canvas.create_turtle`)."""

    width: float
    height: float

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Any = None) -> Any: ...

    def triangle(  # noqa: PLR0917 - Canvas.triangle, upstream's signature
        self, left: float, top: float, width: float, height: float, border: Any = None, fill: Any = None,
        angle: float = 0,
    ) -> Cursor: ...

    def begin_group(self) -> None: ...

    def end_group(self) -> None: ...

TRAIL_COLOR = Color(255, 0, 0, 128)
CURSOR_FILL = Color(255, 200, 200, 255)


class Vec2D(tuple[float, float]):
    """A 2-D vector, as the standard library's turtle has: + and - by vectors, * by a number (or a vector: the dot
    product), unary -, abs() for the length, `rotate(degrees)` counterclockwise."""

    def __new__(cls, x: float, y: float) -> Vec2D:
        return super().__new__(cls, (x, y))

    def __getnewargs__(self) -> tuple[float, float]:  # copy and pickle rebuild from (x, y)
        return (self[0], self[1])

    def __add__(self, other: Sequence[float]) -> Vec2D:  # type: ignore[override]  # a vector sum, not concatenation
        return Vec2D(self[0] + other[0], self[1] + other[1])

    def __sub__(self, other: Sequence[float]) -> Vec2D:
        return Vec2D(self[0] - other[0], self[1] - other[1])

    def __mul__(self, other: Any) -> Any:  # the dot product (a float) or a scaled Vec2D
        if isinstance(other, Vec2D):
            return self[0] * other[0] + self[1] * other[1]
        return Vec2D(self[0] * other, self[1] * other)

    def __rmul__(self, other: Any) -> Vec2D:
        return Vec2D(other * self[0], other * self[1])

    def __neg__(self) -> Vec2D:
        return Vec2D(-self[0], -self[1])

    def __abs__(self) -> float:
        return math.hypot(self[0], self[1])

    def rotate(self, angle: float) -> Vec2D:
        radians = math.radians(angle)
        cos, sin = math.cos(radians), math.sin(radians)
        return Vec2D(self[0] * cos - self[1] * sin, self[0] * sin + self[1] * cos)

    def __repr__(self) -> str:
        return f"({self[0]:.2f},{self[1]:.2f})"


class Turtle:
    """Starts at the canvas centre with the pen down and heading (`angle`) 90°, i.e. towards +x; `points` holds every
    absolute position it has been at, the start first."""

    def __init__(self, canvas: Surface) -> None:
        self.canvas = canvas
        self.pen = True
        self.angle: float = 90
        start = (canvas.width / 2, canvas.height / 2)
        self.points: list[tuple[float, float]] = [start]
        self.cursor = canvas.triangle(start[0], start[1], 12, 18, border=Colors.Red, fill=CURSOR_FILL, angle=90)

    def forward(self, amt: float) -> None:
        x, y = self.points[-1]
        radians = math.radians(self.angle)
        self._move_to((x + math.sin(radians) * amt, y + -math.cos(radians) * amt))

    def left(self, deg: float) -> None:
        self.cursor.rotate(-deg)
        self.angle -= deg

    def right(self, deg: float) -> None:
        self.cursor.rotate(deg)
        self.angle += deg

    def pos(self) -> Vec2D:
        """Where the turtle is, relative to where it started."""
        (start_x, start_y), (x, y) = self.points[0], self.points[-1]
        return Vec2D(x - start_x, y - start_y)

    def penup(self) -> None:
        self.pen = False

    def pendown(self) -> None:
        self.pen = True

    def setpos(self, x: Any, y: float | None = None) -> None:
        """Move to (x, y) relative to the start; `x` alone may be an (x, y) pair."""
        if y is None:
            x, y = x[0], x[1]
        start_x, start_y = self.points[0]
        self._move_to((x + start_x, y + start_y))

    def _move_to(self, target: tuple[float, float]) -> None:
        """One group: the trail (pen down only) and the cursor's new x and y."""
        canvas = self.canvas
        canvas.begin_group()
        if self.pen:
            canvas.line(*self.points[-1], *target, color=TRAIL_COLOR)
        self.cursor.set_x(target[0])
        self.cursor.set_y(target[1])
        canvas.end_group()
        self.points.append(target)


__all__ = ["Turtle", "Vec2D"]
