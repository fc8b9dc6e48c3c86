"""Upstream Backend.AI's import path for the drawing helpers, so code written for upstream keeps its import lines:
`from ai.backend.kernel.python.drawing import Canvas`, `... .drawing.color import Colors` (docs/protocol.md §8.4).

Everything is kernel_runner.drawing's. Only this folder holds a file: `ai` ... `ai.backend.kernel.python` are namespace
packages, so they merge with other `ai.backend.*` distributions, and an installed upstream `ai.backend.kernel` (a
regular package) takes precedence over this alias.
"""

from __future__ import annotations

import sys

from kernel_runner.drawing import Canvas, Color, Colors, Turtle, Vec2D, canvas, color, encoding, turtle

# Upstream's submodules, under this name too: `import a.b.c` finds an entry in sys.modules before searching files.
for _submodule in (canvas, color, encoding, turtle):
    sys.modules.setdefault(f"{__name__}.{_submodule.__name__.rpartition('.')[2]}", _submodule)

__all__ = ["Canvas", "Color", "Colors", "Turtle", "Vec2D"]
