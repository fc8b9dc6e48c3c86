"""`Canvas` and its drawing objects, with upstream Backend.AI's names and signatures: every call records one command and
`update()` (alias `show()`) emits the batch (docs/protocol.md §8.4).

Parameter names follow upstream's too (`c`, `a`, `r`, ...), so calls that pass them by keyword keep working.
"""

from __future__ import annotations

import builtins
import importlib
import itertools
import sys
from typing import Any, NamedTuple, Union

from kernel_runner.drawing.color import Color, Colors
from kernel_runner.drawing.encoding import encode_commands
from kernel_runner.drawing.turtle import Turtle

DRAWING_MIME = "application/x-sorna-drawing"

# A Color, or its `#rrggbbaa` / `#rrggbb` / `#rgb` text.
ColorArg = Union[Color, str]

# Canvas ids are process-wide, from 0; object ids count per canvas, from 0.
_canvas_ids = itertools.count()

SHAPES = frozenset({"rect", "circle", "triangle"})
LINE = frozenset({"line"})
# Which object types each setter applies to; on other types the call records nothing, as upstream's does.
SETTABLE_ON = {"x": SHAPES, "y": SHAPES, "x1": LINE, "y1": LINE, "x2": LINE, "y2": LINE, "radius": frozenset({"circle"})}


class MediaRecord(NamedTuple):
    """What a legacy `builtins._sorna_emit` hook receives."""

    type: str  # the MIME type
    data: str


def _emit(record: MediaRecord) -> None:
    """A legacy emit hook if one is installed, else a raw display_data in a Jupyter kernel, else a note on stderr."""
    hook = getattr(builtins, "_sorna_emit", None)
    if callable(hook):
        hook(record)
        return
    if _in_jupyter_kernel():
        display: Any = importlib.import_module("IPython.display").display
        display({record.type: record.data}, raw=True)
        return
    sys.stderr.write("drawing: nothing shown (drawings need query mode, i.e. a Jupyter kernel)\n")


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a broken or partial IPython is no kernel
        return False
    return getattr(shell, "kernel", None) is not None


def _hex(color: ColorArg) -> str:
    if isinstance(color, Color):
        return color.to_hex()
    if isinstance(color, str):
        return Color.from_hex(color).to_hex()
    raise TypeError(f"a colour is a Color or '#rrggbbaa' text, got {type(color).__name__}")


class DrawingObject:
    """A line, circle, rectangle or triangle on a canvas; its calls record `update` commands."""

    def __init__(self, canvas: Canvas, id_: int, args: tuple[Any, ...]) -> None:
        self._canvas = canvas
        self._id = id_
        self._type: str = args[0]

    def _update(self, prop: str, value: Any) -> None:
        self._canvas._record("update", self._id, prop, value)

    def _set(self, prop: str, value: float) -> None:
        if self._type in SETTABLE_ON[prop]:
            self._update(prop, value)

    def set_x(self, x: float) -> None:
        self._set("x", x)

    def set_y(self, y: float) -> None:
        self._set("y", y)

    def set_x1(self, x: float) -> None:
        self._set("x1", x)

    def set_y1(self, y: float) -> None:
        self._set("y1", y)

    def set_x2(self, x: float) -> None:
        self._set("x2", x)

    def set_y2(self, y: float) -> None:
        self._set("y2", y)

    def set_radius(self, r: float) -> None:
        self._set("radius", r)

    def rotate(self, a: float) -> None:
        """By `a` degrees, relative to the current angle."""
        self._update("rotate", a)

    def set_angle(self, a: float) -> None:
        """To `a` degrees."""
        self._update("angle", a)

    def stroke(self, color: ColorArg) -> None:
        """The line's colour, or a shape's border."""
        self._update("color" if self._type == "line" else "border", _hex(color))

    def fill(self, color: ColorArg) -> None:
        """A shape's fill; a line has none, so nothing is recorded for one."""
        value = _hex(color)
        if self._type != "line":
            self._update("fill", value)


class Canvas:
    """A drawing surface; commands accumulate until `update()` sends them."""

    def __init__(self, width: float, height: float, bgcolor: ColorArg = Colors.White, fgcolor: ColorArg = Colors.Black) -> None:
        self._id = next(_canvas_ids)
        self._next_objid = 0
        self._cmd_history: list[tuple[Any, ...]] = []
        self.width = width
        self.height = height
        self.bgcolor = bgcolor
        self.fgcolor = fgcolor
        self._record("canvas", width, height, _hex(bgcolor), _hex(fgcolor))

    def _record(self, *parts: Any) -> None:
        self._cmd_history.append((self._id, *parts))

    # ---- emitting ----------------------------------------------------------------------------------------------
    def update(self) -> None:
        """Send the commands recorded since the last update as one media item, then forget them."""
        _emit(MediaRecord(DRAWING_MIME, encode_commands(self._cmd_history)))
        self._cmd_history = []

    def show(self) -> None:
        self.update()

    # ---- canvas state ------------------------------------------------------------------------------------------
    def create_turtle(self) -> Turtle:
        return Turtle(self)

    def stop_animation(self) -> None:
        self._record("stop-anim")

    def resume_animation(self) -> None:
        self._record("resume-anim")

    def begin_group(self) -> None:
        self._record("begin-group")

    def end_group(self) -> None:
        self._record("end-group")

    def begin_fill(self, c: ColorArg) -> None:
        self._record("begin-fill", _hex(c))

    def end_fill(self) -> None:
        self._record("end-fill")

    def background_color(self, c: ColorArg) -> None:
        self._record("bgcolor", _hex(c))
        self.bgcolor = c

    def stroke_color(self, c: ColorArg) -> None:
        """The canvas's foreground: what later lines and borders default to."""
        self._record("fgcolor", _hex(c))
        self.fgcolor = c

    # ---- objects -----------------------------------------------------------------------------------------------
    def line(self, x0: float, y0: float, x1: float, y1: float, color: ColorArg | None = None) -> DrawingObject:
        return self._add(("line", x0, y0, x1, y1, _hex(self.fgcolor if color is None else color)))

    def circle(  # noqa: PLR0917 - upstream's signature: border, fill, angle may come by position
        self,
        x: float,
        y: float,
        radius: float,
        border: ColorArg | None = None,
        fill: ColorArg | None = None,
        angle: float = 0,
    ) -> DrawingObject:
        return self._add(("circle", x, y, radius, *self._paint(border, fill), angle))

    def rectangle(  # noqa: PLR0917 - upstream's signature: border, fill, angle may come by position
        self,
        left: float,
        top: float,
        width: float,
        height: float,
        border: ColorArg | None = None,
        fill: ColorArg | None = None,
        angle: float = 0,
    ) -> DrawingObject:
        return self._add(("rect", left, top, width, height, *self._paint(border, fill), angle))

    def triangle(  # noqa: PLR0917 - upstream's signature: border, fill, angle may come by position
        self,
        left: float,
        top: float,
        width: float,
        height: float,
        border: ColorArg | None = None,
        fill: ColorArg | None = None,
        angle: float = 0,
    ) -> DrawingObject:
        return self._add(("triangle", left, top, width, height, *self._paint(border, fill), angle))

    def _paint(self, border: ColorArg | None, fill: ColorArg | None) -> tuple[str, str]:
        """A shape's border (default: the foreground) and fill (default: transparent) as hex."""
        return _hex(self.fgcolor if border is None else border), _hex(Colors.Transparent if fill is None else fill)

    def _add(self, args: tuple[Any, ...]) -> DrawingObject:
        object_id, self._next_objid = self._next_objid, self._next_objid + 1
        self._record("obj", object_id, args)
        return DrawingObject(self, object_id, args)


__all__ = ["DRAWING_MIME", "Canvas", "DrawingObject", "MediaRecord"]
