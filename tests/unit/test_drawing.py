"""The drawing helpers (docs/protocol.md §8.4): every name upstream Backend.AI's user code can call, each checked by
decoding what `update()` emits through the legacy `builtins._sorna_emit` hook; colours, vectors, the encoder, and the
`ai.backend.kernel.python.drawing` import path. A real kernel drawing through the runner is in
tests/integration/test_query_python.py."""

from __future__ import annotations

import base64
import builtins
import copy
import importlib
import math
import pickle
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from kernel_runner.drawing import DRAWING_MIME, Canvas, Color, Colors, Turtle, Vec2D
from kernel_runner.drawing._msgpack import packb
from kernel_runner.drawing.canvas import DrawingObject, MediaRecord
from kernel_runner.drawing.encoding import decode_commands, encode_commands

WHITE, BLACK, TRANSPARENT = "#ffffffff", "#000000ff", "#ffffff00"
SHAPES = {"circle", "rect", "triangle"}


class Sink:
    """What the canvases under test emit, caught by the legacy hook."""

    def __init__(self) -> None:
        self.records: list[MediaRecord] = []

    def flush(self, canvas: Canvas) -> list[list[Any]]:
        """`canvas.update()`, and the commands it sent, decoded."""
        before = len(self.records)
        canvas.update()
        [record] = self.records[before:]
        assert record.type == DRAWING_MIME
        return msgpack.unpackb(base64.b64decode(record.data, validate=True), raw=False)

    def canvas(self, *args: Any) -> tuple[Canvas, int]:
        """A canvas whose creation command is already flushed, and its id."""
        canvas = Canvas(*(args or (200, 100)))
        [[cid, kind, *_]] = self.flush(canvas)
        assert kind == "canvas"
        return canvas, cid


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    caught = Sink()
    monkeypatch.setattr(builtins, "_sorna_emit", caught.records.append, raising=False)
    yield caught


def one_of_each(canvas: Canvas) -> dict[str, DrawingObject]:
    """Object ids 0-3, in this order."""
    return {"line": canvas.line(0, 0, 1, 1), "circle": canvas.circle(0, 0, 1), "rect": canvas.rectangle(0, 0, 1, 1),
            "triangle": canvas.triangle(0, 0, 1, 1)}


# ---------------------------------------------------------------------------------------------------------------------
# the public surface is upstream's, no more
# ---------------------------------------------------------------------------------------------------------------------


def public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def test_public_names_are_upstreams(sink: Sink) -> None:
    canvas = Canvas(10, 10)
    assert public(canvas) == {
        "width", "height", "bgcolor", "fgcolor", "update", "show", "create_turtle", "stop_animation",
        "resume_animation", "begin_group", "end_group", "begin_fill", "end_fill", "background_color", "stroke_color",
        "line", "circle", "rectangle", "triangle"}
    assert public(canvas.line(0, 0, 1, 1)) == {
        "set_x", "set_y", "set_x1", "set_y1", "set_x2", "set_y2", "set_radius", "rotate", "set_angle", "stroke", "fill"}
    assert public(canvas.create_turtle()) == {
        "canvas", "points", "pen", "cursor", "angle", "forward", "left", "right", "pos", "penup", "pendown", "setpos"}
    assert public(Color(1, 2, 3)) == {
        "red", "green", "blue", "alpha", "from_hex", "from_rgba", "from_bytes", "to_hex", "to_bytes", "to_rgba"}
    assert public(Vec2D(1, 2)) == {"rotate", "count", "index"}  # the last two are tuple's
    drawing = importlib.import_module("kernel_runner.drawing")
    assert set(drawing.__all__) == {"Canvas", "Color", "Colors", "Turtle", "Vec2D", "DRAWING_MIME"}


# ---------------------------------------------------------------------------------------------------------------------
# Canvas
# ---------------------------------------------------------------------------------------------------------------------


def test_canvas_records_its_size_and_colours_first_with_process_wide_ids(sink: Sink) -> None:
    first = Canvas(200, 100)
    second = Canvas(1.5, 2, Colors.Black, Color(1, 2, 3, 4))
    [[cid, *creation]] = sink.flush(first)
    assert creation == ["canvas", 200, 100, WHITE, BLACK]
    assert sink.flush(second) == [[cid + 1, "canvas", 1.5, 2, BLACK, "#01020304"]]
    assert (second.width, second.height, second.bgcolor, second.fgcolor) == (1.5, 2, Colors.Black, Color(1, 2, 3, 4))


def test_update_sends_one_base64_msgpack_media_item_and_forgets_what_it_sent(sink: Sink) -> None:
    canvas = Canvas(10, 20)
    canvas.line(1, 2, 3, 4)
    canvas.update()
    [record] = sink.records
    mime, data = record  # a (type, data) pair, as upstream's record
    assert mime == DRAWING_MIME
    cid = msgpack.unpackb(base64.b64decode(data))[0][0]
    assert base64.b64decode(data) == msgpack.packb(
        [[cid, "canvas", 10, 20, WHITE, BLACK], [cid, "obj", 0, ["line", 1, 2, 3, 4, BLACK]]], use_bin_type=True)
    assert sink.flush(canvas) == []


def test_show_is_update(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.end_group()
    canvas.show()
    assert msgpack.unpackb(base64.b64decode(sink.records[-1].data)) == [[cid, "end-group"]]
    assert sink.flush(canvas) == []


def test_line_defaults_to_the_foreground(sink: Sink) -> None:
    canvas, cid = sink.canvas(50, 50, Colors.White, Colors.Gray)
    assert isinstance(canvas.line(0, 1.5, 2, 3), DrawingObject)
    canvas.line(4, 5, 6, 7, Colors.Red)
    canvas.line(4, 5, 6, 7, color="#00f")
    assert sink.flush(canvas) == [
        [cid, "obj", 0, ["line", 0, 1.5, 2, 3, "#808080ff"]],
        [cid, "obj", 1, ["line", 4, 5, 6, 7, "#ff0000ff"]],
        [cid, "obj", 2, ["line", 4, 5, 6, 7, "#0000ffff"]],
    ]


def test_circle_takes_border_fill_and_angle_by_position_or_keyword(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.circle(5, 6, 7)
    canvas.circle(5, 6, 7, Colors.Red, Colors.Blue, 30)
    canvas.circle(5, 6, 7, fill=Colors.Yellow, angle=-1.5)
    assert sink.flush(canvas) == [
        [cid, "obj", 0, ["circle", 5, 6, 7, BLACK, TRANSPARENT, 0]],
        [cid, "obj", 1, ["circle", 5, 6, 7, "#ff0000ff", "#0000ffff", 30]],
        [cid, "obj", 2, ["circle", 5, 6, 7, BLACK, "#ffff00ff", -1.5]],
    ]


def test_rectangle_is_recorded_as_rect(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.rectangle(1, 2, 3, 4)
    canvas.rectangle(1, 2, 3, 4, Colors.Green, Colors.Cyan, 45)
    canvas.rectangle(left=1, top=2, width=3, height=4, border=Colors.Magenta)
    assert sink.flush(canvas) == [
        [cid, "obj", 0, ["rect", 1, 2, 3, 4, BLACK, TRANSPARENT, 0]],
        [cid, "obj", 1, ["rect", 1, 2, 3, 4, "#00ff00ff", "#00ffffff", 45]],
        [cid, "obj", 2, ["rect", 1, 2, 3, 4, "#ff00ffff", TRANSPARENT, 0]],
    ]


def test_triangle(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.triangle(1, 2, 3, 4)
    canvas.triangle(1, 2, 3, 4, Colors.Blue, Color(1, 1, 1, 1), 90)
    assert sink.flush(canvas) == [
        [cid, "obj", 0, ["triangle", 1, 2, 3, 4, BLACK, TRANSPARENT, 0]],
        [cid, "obj", 1, ["triangle", 1, 2, 3, 4, "#0000ffff", "#01010101", 90]],
    ]


def test_stroke_color_changes_the_default_for_later_lines_and_borders(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.stroke_color(Colors.Red)
    canvas.line(0, 0, 1, 1)
    canvas.circle(0, 0, 1)
    assert canvas.fgcolor == Colors.Red
    assert sink.flush(canvas) == [
        [cid, "fgcolor", "#ff0000ff"],
        [cid, "obj", 0, ["line", 0, 0, 1, 1, "#ff0000ff"]],
        [cid, "obj", 1, ["circle", 0, 0, 1, "#ff0000ff", TRANSPARENT, 0]],
    ]


def test_background_color(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.background_color(Colors.Cyan)
    assert canvas.bgcolor == Colors.Cyan
    assert sink.flush(canvas) == [[cid, "bgcolor", "#00ffffff"]]


def test_begin_fill_and_end_fill(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.begin_fill(Colors.Gray)
    canvas.end_fill()
    assert sink.flush(canvas) == [[cid, "begin-fill", "#808080ff"], [cid, "end-fill"]]


def test_stop_animation_and_resume_animation(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.stop_animation()
    canvas.resume_animation()
    assert sink.flush(canvas) == [[cid, "stop-anim"], [cid, "resume-anim"]]


def test_begin_group_and_end_group(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    canvas.begin_group()
    canvas.end_group()
    assert sink.flush(canvas) == [[cid, "begin-group"], [cid, "end-group"]]


def test_create_turtle_puts_its_cursor_at_the_centre(sink: Sink) -> None:
    canvas, cid = sink.canvas(101, 80)
    turtle = canvas.create_turtle()
    assert isinstance(turtle, Turtle) and turtle.canvas is canvas
    assert sink.flush(canvas) == [[cid, "obj", 0, ["triangle", 50.5, 40.0, 12, 18, "#ff0000ff", "#ffc8c8ff", 90]]]


def test_a_colour_that_is_neither_a_color_nor_hex_text_is_refused(sink: Sink) -> None:
    canvas, _ = sink.canvas()
    with pytest.raises(TypeError, match="a colour is a Color or '#rrggbbaa' text, got list"):
        canvas.line(0, 0, 1, 1, [255, 0, 0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a hex colour"):
        canvas.background_color("red")
    assert sink.flush(canvas) == []


# ---------------------------------------------------------------------------------------------------------------------
# drawing objects: a setter records only on the object types that have its property
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setter", "prop", "types"),
    [
        ("set_x", "x", SHAPES),
        ("set_y", "y", SHAPES),
        ("set_x1", "x1", {"line"}),
        ("set_y1", "y1", {"line"}),
        ("set_x2", "x2", {"line"}),
        ("set_y2", "y2", {"line"}),
        ("set_radius", "radius", {"circle"}),
        ("rotate", "rotate", {"line", *SHAPES}),
        ("set_angle", "angle", {"line", *SHAPES}),
    ],
)
def test_object_setter(sink: Sink, setter: str, prop: str, types: set[str]) -> None:
    canvas, cid = sink.canvas()
    objects = one_of_each(canvas)
    sink.flush(canvas)
    for obj in objects.values():
        getattr(obj, setter)(12.5)
    assert sink.flush(canvas) == [
        [cid, "update", oid, prop, 12.5] for oid, kind in enumerate(objects) if kind in types]


def test_stroke_sets_a_lines_color_and_a_shapes_border(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    for obj in one_of_each(canvas).values():
        obj.stroke(Colors.Red)
    assert sink.flush(canvas)[4:] == [
        [cid, "update", 0, "color", "#ff0000ff"],
        [cid, "update", 1, "border", "#ff0000ff"],
        [cid, "update", 2, "border", "#ff0000ff"],
        [cid, "update", 3, "border", "#ff0000ff"],
    ]


def test_fill_sets_a_shapes_fill_and_nothing_on_a_line(sink: Sink) -> None:
    canvas, cid = sink.canvas()
    for obj in one_of_each(canvas).values():
        obj.fill(Colors.Yellow)
    assert sink.flush(canvas)[4:] == [
        [cid, "update", 1, "fill", "#ffff00ff"],
        [cid, "update", 2, "fill", "#ffff00ff"],
        [cid, "update", 3, "fill", "#ffff00ff"],
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Turtle
# ---------------------------------------------------------------------------------------------------------------------


def turtle_on(sink: Sink) -> tuple[Turtle, Canvas, int]:
    """A turtle at (50, 40) on a 100 x 80 canvas; its cursor (object 0) already flushed."""
    canvas, cid = sink.canvas(100, 80)
    turtle = canvas.create_turtle()
    sink.flush(canvas)
    return turtle, canvas, cid


def test_turtle_forward_draws_a_grouped_trail_and_moves_the_cursor(sink: Sink) -> None:
    turtle, canvas, cid = turtle_on(sink)
    turtle.forward(10)  # heading 90°: +x (the step is sin(heading)·d, -cos(heading)·d)
    assert sink.flush(canvas) == [
        [cid, "begin-group"],
        [cid, "obj", 1, ["line", 50.0, 40.0, 60.0, 40.0, "#ff000080"]],
        [cid, "update", 0, "x", 60.0],
        [cid, "update", 0, "y", 40.0],
        [cid, "end-group"],
    ]
    turtle.angle = 180  # downwards: the screen's y grows down
    turtle.forward(5)
    assert sink.flush(canvas)[1:4] == [[cid, "obj", 2, ["line", 60.0, 40.0, 60.0, 45.0, "#ff000080"]],
                                      [cid, "update", 0, "x", 60.0], [cid, "update", 0, "y", 45.0]]
    turtle.angle = 45
    turtle.forward(2)
    step = math.sin(math.radians(45)) * 2
    assert sink.flush(canvas)[2:4] == [[cid, "update", 0, "x", 60.0 + step], [cid, "update", 0, "y", 45.0 - step]]
    assert turtle.points == [(50.0, 40.0), (60.0, 40.0), (60.0, 45.0), (60.0 + step, 45.0 - step)]


def test_turtle_left_and_right_rotate_the_cursor_and_turn_the_heading(sink: Sink) -> None:
    turtle, canvas, cid = turtle_on(sink)
    turtle.left(30)
    turtle.right(45.5)
    assert turtle.angle == 90 - 30 + 45.5
    assert sink.flush(canvas) == [[cid, "update", 0, "rotate", -30], [cid, "update", 0, "rotate", 45.5]]


def test_turtle_penup_moves_without_a_trail_and_pendown_draws_again(sink: Sink) -> None:
    turtle, canvas, cid = turtle_on(sink)
    turtle.penup()
    assert turtle.pen is False
    turtle.forward(10)
    assert sink.flush(canvas) == [[cid, "begin-group"], [cid, "update", 0, "x", 60.0], [cid, "update", 0, "y", 40.0],
                                  [cid, "end-group"]]
    turtle.pendown()
    assert turtle.pen is True
    turtle.forward(10)
    assert sink.flush(canvas)[1] == [cid, "obj", 1, ["line", 60.0, 40.0, 70.0, 40.0, "#ff000080"]]


def test_turtle_setpos_moves_relative_to_the_start(sink: Sink) -> None:
    turtle, canvas, cid = turtle_on(sink)
    turtle.setpos(10, -5)
    turtle.setpos((1.5, 2))
    turtle.setpos(Vec2D(0, 0))
    assert sink.flush(canvas) == [
        [cid, "begin-group"], [cid, "obj", 1, ["line", 50.0, 40.0, 60.0, 35.0, "#ff000080"]],
        [cid, "update", 0, "x", 60.0], [cid, "update", 0, "y", 35.0], [cid, "end-group"],
        [cid, "begin-group"], [cid, "obj", 2, ["line", 60.0, 35.0, 51.5, 42.0, "#ff000080"]],
        [cid, "update", 0, "x", 51.5], [cid, "update", 0, "y", 42.0], [cid, "end-group"],
        [cid, "begin-group"], [cid, "obj", 3, ["line", 51.5, 42.0, 50.0, 40.0, "#ff000080"]],
        [cid, "update", 0, "x", 50.0], [cid, "update", 0, "y", 40.0], [cid, "end-group"],
    ]


def test_turtle_pos_is_relative_to_the_start(sink: Sink) -> None:
    turtle, _, _ = turtle_on(sink)
    assert turtle.pos() == (0, 0)
    turtle.setpos(7, -3)
    position = turtle.pos()
    assert isinstance(position, Vec2D) and position == (7.0, -3.0)


# ---------------------------------------------------------------------------------------------------------------------
# Color, Colors, Vec2D
# ---------------------------------------------------------------------------------------------------------------------


def test_color_to_hex_is_lowercase_with_or_without_alpha() -> None:
    assert Color(171, 205, 239).to_hex() == "#abcdefff"
    assert Color(171, 205, 239, 0).to_hex(include_alpha=False) == "#abcdef"


def test_color_from_hex_reads_8_6_or_3_digits() -> None:
    assert Color.from_hex("#FF000080") == Color(255, 0, 0, 128)
    assert Color.from_hex("00ff00") == Color(0, 255, 0, 255)
    assert Color.from_hex("#00f") == Color(0, 0, 255)
    for bad in ("#12345", "#gg0000", ""):
        with pytest.raises(ValueError, match="not a hex colour"):
            Color.from_hex(bad)


def test_color_from_rgba_takes_3_or_4_components() -> None:
    assert Color.from_rgba([0, 255, 255]) == Colors.Cyan
    assert Color.from_rgba((1, 2, 3, 4)).to_hex() == "#01020304"
    with pytest.raises(ValueError, match="3 or 4 components, got 2"):
        Color.from_rgba([1, 2])


def test_color_from_bytes_and_to_bytes_are_inverse() -> None:
    assert Color.from_bytes(b"\xff\x00\xff\xff") == Colors.Magenta
    assert Colors.Red.to_bytes() == b"\xff\x00\x00\xff"
    with pytest.raises(ValueError, match="4 bytes, got 3"):
        Color.from_bytes(b"abc")


def test_color_to_rgba_keeps_alpha_in_0_255() -> None:
    assert Color(1, 2, 3, 128).to_rgba() == "rgba(1,2,3,128)"


def test_color_components_are_integers_0_255() -> None:
    with pytest.raises(ValueError, match="integers 0-255, got 256"):
        Color(256, 0, 0)
    with pytest.raises(TypeError, match=r"integers 0-255, got 0\.5"):
        Color(0.5, 0, 0)  # type: ignore[arg-type]
    assert Color(True, 0, 0).red == 1  # any integer type counts


def test_colors_is_an_enum_of_colors() -> None:
    assert {c.name: c.to_hex() for c in Colors} == {
        "Transparent": "#ffffff00", "Black": "#000000ff", "Gray": "#808080ff", "White": "#ffffffff",
        "Red": "#ff0000ff", "Green": "#00ff00ff", "Blue": "#0000ffff", "Yellow": "#ffff00ff", "Magenta": "#ff00ffff",
        "Cyan": "#00ffffff"}
    assert isinstance(Colors.Red, Color) and Colors.Red.value == (255, 0, 0, 255) and Colors["Red"] is Colors.Red
    made = Colors.from_rgba([255, 200, 200, 255])  # upstream's turtle builds its colours this way
    assert type(made) is Color and made.to_hex() == "#ffc8c8ff"
    assert pickle.loads(pickle.dumps(Colors.Blue)) is Colors.Blue


def test_vec2d_arithmetic() -> None:
    v = Vec2D(3, 4)
    assert (v + (1, 1), v - Vec2D(1, 1), -v) == ((4, 5), (2, 3), (-3, -4))  # noqa: RUF005 - a vector sum
    assert (v * 2, 0.5 * v, v * Vec2D(2, 1)) == ((6, 8), (1.5, 2), 10)
    assert abs(v) == 5.0
    turned = v.rotate(90)
    assert turned == pytest.approx((-4, 3)) and isinstance(turned, Vec2D)
    assert repr(Vec2D(1, 2.345)) == "(1.00,2.35)"
    assert copy.copy(v) == v and pickle.loads(pickle.dumps(v)) == v and isinstance(pickle.loads(pickle.dumps(v)), Vec2D)


# ---------------------------------------------------------------------------------------------------------------------
# encoding and emitting
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
        0.0, 1.5, -2.25, math.pi, "", "a", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 70000, "é€",
        b"", b"\x00\x01", b"y" * 300, b"z" * 70000,
        [], [1, [2, [3]]], list(range(15)), list(range(16)), list(range(70000)), (1, "a"),
        {}, {"a": 1}, {str(i): i for i in range(16)},
    ],
)
def test_builtin_msgpack_matches_the_msgpack_package(value: Any) -> None:
    assert packb(value) == msgpack.packb(value, use_bin_type=True)


def test_encode_commands_and_decode_commands() -> None:
    commands = [(0, "canvas", 10, 20.5, WHITE, BLACK), (0, "obj", 0, ("line", 1, 2, 3, 4, BLACK))]
    encoded = encode_commands(commands)
    assert encoded == base64.b64encode(msgpack.packb(commands, use_bin_type=True)).decode("ascii")
    assert decode_commands(encoded) == [list(commands[0]), [0, "obj", 0, list(commands[1][3])]]


def test_without_a_hook_or_a_kernel_update_says_so_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert not hasattr(builtins, "_sorna_emit")
    canvas = Canvas(1, 1)
    canvas.update()
    assert "drawings need query mode" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# upstream's import path
# ---------------------------------------------------------------------------------------------------------------------


def test_upstreams_import_path_gives_the_same_objects() -> None:
    alias = importlib.import_module("ai.backend.kernel.python.drawing")
    assert (alias.Canvas, alias.Color, alias.Colors, alias.Turtle, alias.Vec2D) == (Canvas, Color, Colors, Turtle, Vec2D)
    assert importlib.import_module("ai.backend.kernel.python.drawing.canvas").DrawingObject is DrawingObject
    assert importlib.import_module("ai.backend.kernel.python.drawing.color").Colors is Colors
    assert importlib.import_module("ai.backend.kernel.python.drawing.turtle").Vec2D is Vec2D
    assert importlib.import_module("ai.backend.kernel.python.drawing.encoding").decode_commands is decode_commands
    namespace = importlib.import_module("ai.backend.kernel")
    assert getattr(namespace, "__file__", None) is None  # a namespace package: it shadows no real ai.backend.kernel
