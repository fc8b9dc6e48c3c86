"""Drawing helpers for query mode with upstream Backend.AI's API (docs/protocol.md §8.4): `Canvas`, `Turtle`, `Color`,
`Colors`, `Vec2D`. A canvas's commands go out as one `application/x-sorna-drawing` media item per `update()`.
Standard library only, so any kernel interpreter that can import this package can draw::

    from kernel_runner.drawing import Canvas      # or upstream's path: from ai.backend.kernel.python.drawing import ...
    canvas = Canvas(300, 200)
    t = canvas.create_turtle()
    t.forward(50); t.left(90); t.forward(50)
    canvas.update()
"""

from __future__ import annotations

from kernel_runner.drawing.canvas import DRAWING_MIME, Canvas
from kernel_runner.drawing.color import Color, Colors
from kernel_runner.drawing.turtle import Turtle, Vec2D

__all__ = ["DRAWING_MIME", "Canvas", "Color", "Colors", "Turtle", "Vec2D"]
