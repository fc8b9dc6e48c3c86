"""Canvas and its drawing objects: every call appends one command; `update()` emits the batch (docs/protocol.md §8.4)."""

from __future__ import annotations

import base64
import builtins
import importlib
import itertools
import sys
from typing import TYPE_CHECKING, Any

from kernel_runner.drawing._msgpack import packb
from kernel_runner.drawing.color import Color, ColorLike, Colors, as_color

if TYPE_CHECKING:
    from kernel_runner.drawing.turtle import Turtle

DRAWING_MIME = "application/x-sorna-drawing"

# Canvas ids are process-wide, from 0; object ids count per canvas, from 0 (docs/protocol.md §8.4).
_canvas_ids = itertools.count()


class MediaRecord:
    """What a legacy `builtins._sorna_emit` hook receives (docs/protocol.md §8.4 `python/types.py`)."""

    __slots__ = ("data", "type")

    def __init__(self, type: str, data: str) -> None:  # the legacy field name
        self.type = type
        self.data = data

    def __repr__(self) -> str:
        return f"MediaRecord(type={self.type!r}, data=<{len(self.data)} chars>)"


def emit_media(mime: str, data: str) -> None:
    """Send one media item: a legacy emit hook if one is installed, else a raw display_data in a Jupyter kernel."""
    hook = getattr(builtins, "_sorna_emit", None)
    if callable(hook):
        hook(MediaRecord(type=mime, data=data))
        return
    shell = _ipython_kernel_shell()
    if shell is not None:
        display: Any = importlib.import_module("IPython.display").display
        display({mime: data}, raw=True)
        return
    sys.stderr.write("drawing: nothing shown (drawings need query mode, i.e. a Jupyter kernel)\n")


def _ipython_kernel_shell() -> Any:
    module = sys.modules.get("IPython")
    if module is None:
        return None
    try:
        shell = module.get_ipython()
    except Exception:  # noqa: BLE001 - no IPython, no kernel
        return None
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def encode_commands(commands: list[list[Any]]) -> str:
    """Standard base64 (ASCII) of the msgpack encoding of the command list."""
    return base64.b64encode(packb(commands)).decode("ascii")


class Canvas:
    """A drawing surface; commands accumulate until `update()` (alias `show()`) emits them and clears the list."""

    def __init__(
        self,
        width: float = 400,
        height: float = 300,
        bgcolor: ColorLike = Colors.White,
        fgcolor: ColorLike = Colors.Black,
    ) -> None:
        self._id = next(_canvas_ids)
        self._object_ids = itertools.count()
        self.width = width
        self.height = height
        self.bgcolor = as_color(bgcolor)
        self.fgcolor = as_color(fgcolor)
        self._commands: list[list[Any]] = []
        self._record("canvas", width, height, self.bgcolor.to_hex(), self.fgcolor.to_hex())

    @property
    def id(self) -> int:
        return self._id

    @property
    def commands(self) -> list[list[Any]]:
        """The commands not yet emitted (a copy)."""
        return [list(command) for command in self._commands]

    def _record(self, *args: Any) -> None:
        self._commands.append([self._id, *args])

    def _new_object_id(self) -> int:
        return next(self._object_ids)

    # ---- emitting ----------------------------------------------------------------------------------------------
    def update(self) -> None:
        commands, self._commands = self._commands, []
        emit_media(DRAWING_MIME, encode_commands(commands))

    show = update

    # ---- canvas state ------------------------------------------------------------------------------------------
    def stop_animation(self) -> None:
        self._record("stop-anim")

    def resume_animation(self) -> None:
        self._record("resume-anim")

    def begin_group(self) -> None:
        self._record("begin-group")

    def end_group(self) -> None:
        self._record("end-group")

    def begin_fill(self, color: ColorLike) -> None:
        self._record("begin-fill", as_color(color).to_hex())

    def end_fill(self) -> None:
        self._record("end-fill")

    def background_color(self, color: ColorLike) -> None:
        self.bgcolor = as_color(color)
        self._record("bgcolor", self.bgcolor.to_hex())

    def foreground_color(self, color: ColorLike) -> None:
        self.fgcolor = as_color(color)
        self._record("fgcolor", self.fgcolor.to_hex())

    # ---- objects -----------------------------------------------------------------------------------------------
    def create_line(self, x0: float, y0: float, x1: float, y1: float, color: ColorLike | None = None) -> Line:
        stroke = as_color(color) if color is not None else self.fgcolor
        return Line(self, ["line", x0, y0, x1, y1, stroke.to_hex()])

    def create_circle(
        self,
        x: float,
        y: float,
        radius: float,
        *,
        border: ColorLike | None = None,
        fill: ColorLike | None = None,
        angle: float = 0,
    ) -> Circle:
        return Circle(self, ["circle", x, y, radius, self._border(border), self.fill_template(fill), angle])

    def create_rectangle(
        self,
        left: float,
        top: float,
        width: float,
        height: float,
        *,
        border: ColorLike | None = None,
        fill: ColorLike | None = None,
        angle: float = 0,
    ) -> Rectangle:
        return Rectangle(self, ["rect", left, top, width, height, self._border(border), self.fill_template(fill), angle])

    create_rect = create_rectangle

    def create_triangle(
        self,
        left: float,
        top: float,
        width: float,
        height: float,
        *,
        border: ColorLike | None = None,
        fill: ColorLike | None = None,
        angle: float = 0,
    ) -> Triangle:
        return Triangle(self, ["triangle", left, top, width, height, self._border(border), self.fill_template(fill), angle])

    def create_turtle(self) -> Turtle:
        from kernel_runner.drawing.turtle import Turtle

        return Turtle(self)

    def _border(self, border: ColorLike | None) -> str:
        return (as_color(border) if border is not None else self.fgcolor).to_hex()

    def fill_template(self, fill: ColorLike | None) -> str:
        return (as_color(fill) if fill is not None else Colors.Transparent).to_hex()


class DrawingObject:
    """One object on a canvas; setters for properties its type does not have emit nothing (docs/protocol.md §8.4)."""

    properties: frozenset[str] = frozenset()
    stroke_property = "border"
    fillable = True

    def __init__(self, canvas: Canvas, args: list[Any]) -> None:
        self.canvas = canvas
        self.id = canvas._new_object_id()
        canvas._record("obj", self.id, args)

    def _update(self, prop: str, value: Any) -> None:
        self.canvas._record("update", self.id, prop, value)

    def _set(self, prop: str, value: float) -> None:
        if prop in self.properties:
            self._update(prop, value)

    def set_x(self, value: float) -> None:
        self._set("x", value)

    def set_y(self, value: float) -> None:
        self._set("y", value)

    def set_x1(self, value: float) -> None:
        self._set("x1", value)

    def set_y1(self, value: float) -> None:
        self._set("y1", value)

    def set_x2(self, value: float) -> None:
        self._set("x2", value)

    def set_y2(self, value: float) -> None:
        self._set("y2", value)

    def set_radius(self, value: float) -> None:
        self._set("radius", value)

    def rotate(self, degrees: float) -> None:
        """Relative rotation, any object."""
        self._update("rotate", degrees)

    def set_angle(self, degrees: float) -> None:
        """Absolute angle, any object."""
        self._update("angle", degrees)

    def stroke(self, color: ColorLike) -> None:
        self._update(self.stroke_property, as_color(color).to_hex())

    def fill(self, color: ColorLike) -> None:
        if self.fillable:
            self._update("fill", as_color(color).to_hex())


class Line(DrawingObject):
    properties = frozenset({"x1", "y1", "x2", "y2"})
    stroke_property = "color"
    fillable = False


class Circle(DrawingObject):
    properties = frozenset({"x", "y", "radius"})


class Rectangle(DrawingObject):
    properties = frozenset({"x", "y"})


class Triangle(DrawingObject):
    properties = frozenset({"x", "y"})


__all__ = [
    "DRAWING_MIME",
    "Canvas",
    "Circle",
    "Color",
    "DrawingObject",
    "Line",
    "MediaRecord",
    "Rectangle",
    "Triangle",
    "emit_media",
    "encode_commands",
]
