"""Legacy drawing helpers for query mode (docs/protocol.md §8.4): `Canvas`, `Turtle` and colours, emitted as
`application/x-sorna-drawing` media (base64 of msgpack of the command list). Standard library only.

Inside the Python kernel::

    from kernel_runner.drawing import Canvas
    canvas = Canvas(300, 200)
    t = canvas.create_turtle()
    t.forward(50); t.left(90); t.forward(50)
    canvas.update()
"""

from __future__ import annotations

from kernel_runner.drawing.canvas import (
    DRAWING_MIME,
    Canvas,
    Circle,
    DrawingObject,
    Line,
    MediaRecord,
    Rectangle,
    Triangle,
    emit_media,
    encode_commands,
)
from kernel_runner.drawing.color import Color, Colors
from kernel_runner.drawing.turtle import Turtle, Vec2D

__all__ = [
    "DRAWING_MIME",
    "Canvas",
    "Circle",
    "Color",
    "Colors",
    "DrawingObject",
    "Line",
    "MediaRecord",
    "Rectangle",
    "Triangle",
    "Turtle",
    "Vec2D",
    "emit_media",
    "encode_commands",
]
