"""Python query mode through a real ipykernel: the KernelActor inside the whole tree, driven over the agent sockets.

Runs reach the kernel child the way the language runner will forward them (ForwardToChild to KERNEL_CHILD);
replies are read with AgentClient exactly as the agent reads them. Each test starts its own kernel (~0.5-1 s).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.actors.kernel.actor import KernelSettings, Phase
from kernel_runner.client import AgentClient, RunResult
from kernel_runner.context import RunnerContext
from kernel_runner.drawing import DRAWING_MIME
from kernel_runner.ids import KERNEL_CHILD
from kernel_runner.runtime.tree import kernel_child_spec
from kernel_runner.supervision.spec import ChildInfo, ChildSpec, ChildState
from tests.support.procs import alive, assert_gone
from tests.support.waiting import wait_until

RUN_TIMEOUT_S = 20.0  # includes the kernel start when the run is queued before the kernel is ready
PHASE_LINE = re.compile(r"\[kernel\] phase (\w+) -> (\w+)")


def kernel_phases(log_lines: list[str]) -> list[Phase]:
    """The kernel child's phases in order, from PhaseMachine's debug lines ("phase A -> B"); an edge that does not
    start where the previous one ended (a new incarnation's LAUNCHING) adds both of its phases."""
    found: list[Phase] = []
    for line in list(log_lines):
        if m := PHASE_LINE.search(line):
            old, new = Phase[m[1]], Phase[m[2]]
            found += [new] if found and found[-1] is old else [old, new]
    return found


class Query:
    """One runner with a python3 kernel child, and the agent's view of it."""

    def __init__(self, handle: RunnerHandle, client: AgentClient) -> None:
        self.handle = handle
        self.client = client

    def send(self, code: str) -> None:
        """As the agent does: lang=python, so the language runner hands `code` (and input, interrupt) to the kernel."""
        self.client.send("code", code)

    def run(self, code: str, timeout: float = RUN_TIMEOUT_S) -> RunResult:
        self.send(code)
        return self.client.collect_run(timeout)

    def kernel_info(self) -> ChildInfo:
        for info in self.handle.which_children():
            if info.child_id == KERNEL_CHILD:
                return info
        raise AssertionError("no kernel child")

    def ready_kernel(self, timeout: float = RUN_TIMEOUT_S) -> ChildInfo:
        return wait_until(
            lambda: (info := self.kernel_info()).state is ChildState.RUNNING and info.extra.get("ready") and info,
            timeout=timeout,
            what="the kernel to be ready",
        )


def start_query(
    config: RunnerConfig, kernel_name: str = "python3", **options: float
) -> tuple[RunnerHandle, AgentClient]:
    # A cold jedi cache makes the first completion take seconds; the test must not depend on a warm one.
    def spec(runner: RunnerContext) -> ChildSpec:
        return kernel_child_spec(runner, KernelSettings(kernel_name=kernel_name, **{"complete_timeout_s": 30.0, **options}))

    handle = start(attrs.evolve(config, lang="python"), extra_children=[spec])
    return handle, AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out)


@pytest.fixture
def query(runner_config: RunnerConfig) -> Iterator[Query]:
    handle, client = start_query(runner_config)
    try:
        yield Query(handle, client)
    finally:
        client.close()
        handle.stop(timeout=5)


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(
        b"IEND", b"")


def media(result: RunResult) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in result.of_type("media")]


def test_outputs_exit_codes_and_completion(query: Query) -> None:
    # Sent at once: the kernel is still starting, so this run is queued and runs when the kernel is ready.
    result = query.run("print(1)")
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"1\n", b"")

    result = query.run("1+1")
    assert (result.exit_code, result.stdout) == (0, b"2")

    result = query.run("1/0")
    assert result.exit_code == 1
    assert b"ZeroDivisionError" in result.stderr and b"Traceback" in result.stderr

    assert query.run("raise SystemExit(3)").exit_code == 3
    assert query.run("import sys; sys.exit()").exit_code == 0

    png = tiny_png()
    result = query.run(
        f"from IPython.display import Image, display\nimport base64\n"
        f"display(Image(data=base64.b64decode({base64.b64encode(png).decode()!r})))"
    )
    assert result.exit_code == 0
    assert media(result) == [{"type": "image/png", "data": "data:image/png;base64," + base64.b64encode(png).decode()}]

    result = query.run("from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))")
    assert [(r.type, r.payload) for r in result.records] == [("html", b"<b>bold</b>")]

    result = query.run("from IPython.display import SVG, display\ndisplay(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>'))")
    assert media(result) == [{"type": "image/svg+xml", "data": '<svg xmlns="http://www.w3.org/2000/svg"/>'}]

    result = query.run(
        "from kernel_runner.drawing import Canvas\n"
        "c = Canvas(40, 30)\nt = c.create_turtle()\nt.forward(10)\nc.update()"
    )
    assert result.exit_code == 0, result.stderr
    [item] = media(result)
    assert item["type"] == DRAWING_MIME
    commands = msgpack.unpackb(base64.b64decode(item["data"]), raw=False)
    assert [command[1] for command in commands] == [
        "canvas", "obj", "begin-group", "obj", "update", "update", "end-group"]

    size = 3 * 1024 * 1024
    result = query.run(f"print('x' * {size})")
    assert result.exit_code == 0
    records = result.of_type("stdout")
    assert all(len(r.payload) <= 1024 * 1024 for r in records) and len(records) >= 4
    assert result.stdout == b"x" * size + b"\n"

    assert "import" in query.client.complete("impo", timeout=30)["suggestions"]


def test_input_round_trip_password_and_interrupted_wait(query: Query) -> None:
    query.send("name = input('Your name: ')\nprint('hello', name)")
    waiting = query.client.collect_run(RUN_TIMEOUT_S)
    assert waiting.status == "waiting-input"
    assert waiting.stdout == b"Your name: "
    assert waiting.records[-1].json() == {"is_password": False}
    query.client.feed_input("bob")
    result = query.client.collect_run(RUN_TIMEOUT_S)
    assert (result.exit_code, result.stdout) == (0, b"hello bob\n")

    query.send("import getpass\nsecret = getpass.getpass('Password: ')\nprint(len(secret))")
    waiting = query.client.collect_run(RUN_TIMEOUT_S)
    assert waiting.status == "waiting-input" and waiting.records[-1].json() == {"is_password": True}
    query.client.feed_input("hunter2")
    assert query.client.collect_run(RUN_TIMEOUT_S).stdout == b"7\n"

    # An interrupt while the kernel waits for input cancels the wait; that run ends once, non-zero.
    query.send("input('never answered: ')")
    assert query.client.collect_run(RUN_TIMEOUT_S).status == "waiting-input"
    query.client.interrupt()
    result = query.client.collect_run(5)
    assert result.status == "finished" and result.exit_code == 130
    assert b"KeyboardInterrupt" in result.stderr
    query.client.feed_input("too late")  # nothing waits now: dropped, no reply
    result = query.run("print('next')")
    assert (result.exit_code, result.stdout) == (0, b"next\n")


# Written as a user of upstream Backend.AI writes it: upstream's import path and names, positional colours.
UPSTREAM_STYLE_DRAWING = """\
from ai.backend.kernel.python.drawing import Canvas, Color, Colors

canvas = Canvas(300, 200, Colors.Black, Colors.White)
sun = canvas.circle(150, 60, 20, Colors.Yellow, Colors.from_rgba([255, 200, 0, 255]))
sun.set_radius(25)
ground = canvas.rectangle(0, 150, 300, 50, fill=Colors.Green)
ground.stroke(Color.from_hex('#006400ff'))
canvas.stroke_color(Colors.Red)
horizon = canvas.line(0, 150, 300, 150)
horizon.set_y2(140)
t = canvas.create_turtle()
t.forward(50)
t.left(90)
t.penup()
t.forward(30)
canvas.show()
print(t.pos())
"""


def test_a_drawing_written_for_upstream_arrives_as_one_media_item(query: Query) -> None:
    result = query.run(UPSTREAM_STYLE_DRAWING)
    assert (result.exit_code, result.stderr, result.stdout) == (0, b"", b"(50.00,-30.00)\n")
    [item] = media(result)
    assert item["type"] == DRAWING_MIME
    assert msgpack.unpackb(base64.b64decode(item["data"], validate=True), raw=False) == [
        [0, "canvas", 300, 200, "#000000ff", "#ffffffff"],
        [0, "obj", 0, ["circle", 150, 60, 20, "#ffff00ff", "#ffc800ff", 0]],
        [0, "update", 0, "radius", 25],
        [0, "obj", 1, ["rect", 0, 150, 300, 50, "#ffffffff", "#00ff00ff", 0]],
        [0, "update", 1, "border", "#006400ff"],
        [0, "fgcolor", "#ff0000ff"],
        [0, "obj", 2, ["line", 0, 150, 300, 150, "#ff0000ff"]],
        [0, "update", 2, "y2", 140],
        [0, "obj", 3, ["triangle", 150.0, 100.0, 12, 18, "#ff0000ff", "#ffc8c8ff", 90]],
        [0, "begin-group"],
        [0, "obj", 4, ["line", 150.0, 100.0, 200.0, 100.0, "#ff000080"]],
        [0, "update", 3, "x", 200.0],
        [0, "update", 3, "y", 100.0],
        [0, "end-group"],
        [0, "update", 3, "rotate", -90],
        [0, "begin-group"],
        [0, "update", 3, "x", 200.0],
        [0, "update", 3, "y", 70.0],
        [0, "end-group"],
    ]


def interrupt_a_long_sleep(query: Query) -> RunResult:
    """A 600 s sleep against a 60 s wait: only the interrupt can end the run (KeyboardInterrupt, code 130)."""
    query.send("import time\nprint('sleeping', flush=True)\ntime.sleep(600)")
    assert query.client.expect("stdout", RUN_TIMEOUT_S).payload == b"sleeping\n"
    query.client.interrupt()
    result = query.client.collect_run(60)
    assert result.status == "finished" and result.exit_code == 130
    assert b"KeyboardInterrupt" in result.stderr
    return result


def test_interrupt_ends_a_sleep_with_exactly_one_finished(query: Query, log_lines: list[str]) -> None:
    interrupt_a_long_sleep(query)
    query.client.interrupt()  # nothing runs: logged and dropped, so no extra `finished` follows
    wait_until(lambda: any("interrupt: nothing is running" in line for line in log_lines), timeout=5,
               what="the idle interrupt to be logged")
    result = query.run("print(2)")
    assert (result.status, result.exit_code, result.stdout) == ("finished", 0, b"2\n")
    assert any("SIGINT to the kernel's process group" in line for line in log_lines)


def test_message_interrupt_mode_of_the_kernelspec_is_honoured(
    runner_config: RunnerConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log_lines: list[str]
) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    source = Path(KernelSpecManager().get_kernel_spec("python3").resource_dir)
    target = tmp_path / "jupyter" / "kernels" / "python3-message"
    shutil.copytree(source, target)
    spec = json.loads((target / "kernel.json").read_text())
    (target / "kernel.json").write_text(json.dumps({**spec, "interrupt_mode": "message"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    handle, client = start_query(runner_config, kernel_name="python3-message")
    try:
        query = Query(handle, client)
        assert query.ready_kernel().extra["interrupt_mode"] == "message"
        interrupt_a_long_sleep(query)
        assert any("sent interrupt_request" in line for line in log_lines)
        assert not any("SIGINT to the kernel's process group" in line for line in log_lines)
    finally:
        client.close()
        handle.stop(timeout=5)


def test_an_ignored_interrupt_kills_the_kernel_so_the_run_still_ends_once(runner_config: RunnerConfig) -> None:
    handle, client = start_query(runner_config, interrupt_kill_after_s=0.5)
    try:
        query = Query(handle, client)
        query.send("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                   "print('deaf', flush=True)\ntime.sleep(30)")
        assert client.expect("stdout", RUN_TIMEOUT_S).payload == b"deaf\n"
        query.client.interrupt()
        result = client.collect_run(5)
        assert result.status == "finished" and result.exit_code == 130
        assert b"did not respond to the interrupt within 0.5 s, so it was killed" in result.stderr
        result = query.run("print('fresh kernel')")
        assert (result.exit_code, result.stdout) == (0, b"fresh kernel\n")
    finally:
        client.close()
        handle.stop(timeout=5)


def test_killed_kernel_ends_the_run_and_the_next_query_works(query: Query) -> None:
    query.send("import time\nprint('busy', flush=True)\ntime.sleep(30)")
    assert query.client.expect("stdout", RUN_TIMEOUT_S).payload == b"busy\n"
    first = query.ready_kernel()
    pid = first.extra["kernel_pid"]
    os.kill(pid, signal.SIGKILL)
    result = query.client.collect_run(10)
    assert result.status == "finished" and result.exit_code == 128 + signal.SIGKILL
    assert b"kernel-runner: the Jupyter kernel (python3) died (killed by signal 9)" in result.stderr

    result = query.run("print('after restart')")
    assert (result.exit_code, result.stdout) == (0, b"after restart\n")
    assert result.stderr.count(b"was restarted since the last run") == 1  # told once, on the new kernel's first run
    second = query.kernel_info()
    assert second.generation == first.generation + 1 and second.restarts == 1
    assert second.extra["kernel_pid"] != pid
    assert not Path(first.extra["connection_file"]).exists()


RESTART_NOTICE = (b"kernel-runner: the Jupyter kernel (python3) was restarted since the last run; variables, imports "
                  b"and other state from earlier runs are gone\n")


def test_after_a_kernel_dies_while_idle_the_next_run_says_its_state_is_gone(query: Query) -> None:
    # Issue 11 point 3: the user learns why `x` is undefined, once, at the start of the next run's stderr.
    assert query.run("x = 41").exit_code == 0
    first = query.ready_kernel()
    os.kill(first.extra["kernel_pid"], signal.SIGKILL)
    wait_until(lambda: query.kernel_info().generation == first.generation + 1, timeout=RUN_TIMEOUT_S,
               what="the kernel restarted")
    result = query.run("print(x + 1)")
    assert result.stderr.startswith(RESTART_NOTICE) and b"NameError" in result.stderr and result.exit_code == 1
    result = query.run("x = 1\nprint(x + 1)")
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"2\n", b"")


def test_stop_leaves_no_kernel_process_and_no_connection_file(runner_config: RunnerConfig) -> None:
    handle, client = start_query(runner_config)
    try:
        query = Query(handle, client)
        info = query.ready_kernel()
        pid, connection_file = info.extra["kernel_pid"], Path(info.extra["connection_file"])
        assert alive(pid) and connection_file.is_file()
    finally:
        client.close()
        assert handle.stop(timeout=5)
    assert_gone([pid], timeout=2)
    assert not connection_file.exists() and not connection_file.parent.exists()


def test_code_op_through_the_language_runner(runner_config: RunnerConfig) -> None:
    """The contract with the python LangRunner: `code`, `input`, `complete` and `interrupt` arrive as agent ops."""
    config = attrs.evolve(runner_config, lang="python")
    handle, client = start_query(config)
    try:
        result = client.code("print(6 * 7)", timeout=RUN_TIMEOUT_S)
        assert (result.exit_code, result.stdout) == (0, b"42\n")
        assert client.code("raise SystemExit(4)", timeout=RUN_TIMEOUT_S).exit_code == 4
        client.send("code", "print(input('? ') * 2)")
        assert client.collect_run(RUN_TIMEOUT_S).status == "waiting-input"
        client.feed_input("ab")
        assert client.collect_run(RUN_TIMEOUT_S).stdout == b"abab\n"
        assert "import" in client.complete("impo", timeout=30)["suggestions"]
        client.send("code", "import time\nprint('zz', flush=True)\ntime.sleep(30)")
        assert client.expect("stdout", RUN_TIMEOUT_S).payload == b"zz\n"
        client.interrupt()
        assert client.collect_run(5).exit_code == 130
        # The language runner got RunDone for each run, so the next code op runs (it would queue for ever otherwise).
        assert client.code("print('done')", timeout=RUN_TIMEOUT_S).stdout == b"done\n"
    finally:
        client.close()
        handle.stop(timeout=5)


def test_a_normal_life_goes_through_the_phases_in_order(runner_config: RunnerConfig, log_lines: list[str]) -> None:
    handle, client = start_query(runner_config)
    try:
        query = Query(handle, client)
        assert query.run("print('up')").stdout == b"up\n"
        assert query.ready_kernel().pid == query.kernel_info().extra["kernel_pid"]
        assert kernel_phases(log_lines) == [Phase.LAUNCHING, Phase.CONNECTING, Phase.READY]
    finally:
        client.close()
        assert handle.stop(timeout=5)
    # READY -> STOPPING: a shutdown_request, and the kernel's exit ends the incarnation (no death, no restart).
    assert kernel_phases(log_lines) == [Phase.LAUNCHING, Phase.CONNECTING, Phase.READY, Phase.STOPPING, Phase.ENDED]


def test_a_kernel_killed_for_an_ignored_interrupt_dies_retires_and_is_replaced(
    runner_config: RunnerConfig, log_lines: list[str]
) -> None:
    handle, client = start_query(runner_config, interrupt_kill_after_s=0.5)
    try:
        query = Query(handle, client)
        query.send("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                   "print('deaf', flush=True)\ntime.sleep(30)")
        assert client.expect("stdout", RUN_TIMEOUT_S).payload == b"deaf\n"
        query.client.interrupt()
        assert client.collect_run(5).exit_code == 130
        assert query.run("print('fresh')").stdout == b"fresh\n"
        assert kernel_phases(log_lines) == [
            Phase.LAUNCHING, Phase.CONNECTING, Phase.READY, Phase.KILLING, Phase.DYING, Phase.RETIRING, Phase.ENDED,
            Phase.LAUNCHING, Phase.CONNECTING, Phase.READY,  # the next incarnation, which ran print('fresh')
        ]
        assert query.kernel_info().generation == 2
    finally:
        client.close()
        handle.stop(timeout=5)
