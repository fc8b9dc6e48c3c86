"""Commands that cannot start, an environ.txt variable the kernel refuses, and the batch-input server's own failures:
each is answered or logged in a bounded way and never costs the language runner its life (docs/protocol.md §5.1, §1.4
step 5, §5.6). The whole tree in-process, real shells, a real agent client."""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

import pytest

from kernel_runner import RunnerConfig, RunnerHandle
from kernel_runner.actors.lang_runner.job import spawn_failure_text
from kernel_runner.actors.lang_runner.user_input import UserInputServer
from kernel_runner.client import AgentClient, RunResult
from kernel_runner.ids import LANG_CHILD
from kernel_runner.notices import NOTICE_MAX_BYTES, notice_bytes
from kernel_runner.procs.childenv import MAX_ARG_STRLEN
from kernel_runner.supervision.spec import ChildInfo, ChildState
from tests.support.faults import once
from tests.support.runners import running
from tests.support.waiting import wait_until

MIB = 1024 * 1024
FINISHED = {"clean": "clean-finished", "build": "build-finished", "exec": "finished"}


def lang_info(handle: RunnerHandle) -> ChildInfo:
    return next(info for info in handle.which_children() if info.child_id == LANG_CHILD)


def one_line(result: RunResult) -> str:
    """The run's stderr, which must be exactly one line (a notice), as text."""
    text = result.stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    return text


def knocked(path: Path) -> bool:
    """True once a connection to the unix socket at `path` was accepted (it is closed again at once)."""
    with socket.socket(socket.AF_UNIX) as knock:
        try:
            knock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


# ---- commands that cannot start ---------------------------------------------------------------------------------------


def test_nul_bytes_in_any_batch_command_answer_127_and_never_cost_the_language_runner(
    py_runner: tuple[RunnerHandle, AgentClient],
) -> None:
    handle, agent = py_runner
    for kind in ("clean", "build", "exec"):
        for _ in range(7):  # more than the restart intensity (5 a minute) that crashes used to spend
            result = agent.run(kind, "echo a\0b")
            assert (result.status, result.exit_code) == (FINISHED[kind], 127)
            assert one_line(result) == (
                f"kernel-runner: the {kind} command could not start: it contains a NUL byte, which no program can "
                "receive in an argument: 'echo a\\x00b'\n"
            )
        if kind == "build":
            assert agent.run("build", "").exit_code == 0  # a failed build would skip the next exec (§5.2)
    result = agent.run("exec", "echo still serving")
    assert (result.exit_code, result.stdout) == (0, b"still serving\n")
    info = lang_info(handle)
    assert (info.state, info.generation, info.restarts) == (ChildState.RUNNING, 1, 0)


def test_a_command_over_the_argument_limit_is_refused_in_one_short_line(
    py_runner: tuple[RunnerHandle, AgentClient], log_lines: list[str]
) -> None:
    handle, agent = py_runner
    for filler in ("x", "é"):  # ASCII, and two bytes per character (the limit is in bytes)
        command = "echo " + filler * MAX_ARG_STRLEN
        result = agent.run("exec", command)
        assert (result.status, result.exit_code) == ("finished", 127)
        size = len(command.encode())
        text = one_line(result)
        assert text.startswith(f"kernel-runner: the exec command could not start: it is {size} bytes long, and Linux "
                               f"passes at most {MAX_ARG_STRLEN - 1} bytes in one argument (E2BIG)")
        assert f"'echo {filler * 20}" in text and f"({len(command)} characters)" in text
        assert len(result.stderr) < 1024  # an excerpt, not the command echoed back
    assert all(len(line) < 4096 for line in log_lines)  # the log quotes an excerpt too
    # Just under the limit it runs: the bound is the kernel's, not one of ours.
    fits = "x" * (MAX_ARG_STRLEN - 64)
    result = agent.run("exec", f"echo {fits}")
    assert (result.exit_code, result.stdout) == (0, fits.encode() + b"\n")
    assert all(len(record.payload) <= MIB for record in result.records)
    assert lang_info(handle).generation == 1


def test_every_spawn_failure_is_described_on_one_line_with_an_excerpt() -> None:
    argv = ("/bin/sh", "-c", "run " + "y" * 1000)
    no_shell = spawn_failure_text(argv, {}, FileNotFoundError(errno.ENOENT, "No such file or directory", "/bin/sh"))
    assert no_shell.startswith("cannot run /bin/sh: No such file or directory; the command: 'run yyy")
    assert "(1004 characters)" in no_shell and "\n" not in no_shell
    too_big_together = spawn_failure_text(argv, {}, OSError(errno.E2BIG, "Argument list too long"))
    assert "and the environment together are too large for a new program (E2BIG)" in too_big_together
    env_nul = spawn_failure_text(("/bin/sh", "-c", "true"), {"BAD": "a\0b", "GOOD": "x"}, ValueError("embedded null byte"))
    assert env_nul == "the environment holds a NUL byte (in 'BAD')"
    odd = spawn_failure_text(("/bin/sh", "-c", "true"), {}, TypeError("x" * 10_000))
    assert odd.startswith("cannot run /bin/sh: TypeError: xxx") and len(odd) < 400


def test_a_notice_is_one_bounded_record_cut_at_a_character() -> None:
    assert notice_bytes("kernel-runner: short\n") == b"kernel-runner: short\n"
    long = notice_bytes("é" * NOTICE_MAX_BYTES + "\n")
    assert len(long) <= NOTICE_MAX_BYTES and long.endswith("… (cut)\n".encode())
    long.decode("utf-8")  # never cut inside a character


# ---- environ.txt -----------------------------------------------------------------------------------------------------


def test_an_environ_value_over_the_kernel_limit_is_dropped_with_one_warning(
    py_config: RunnerConfig, log_lines: list[str]
) -> None:
    big = "y" * MAX_ARG_STRLEN
    py_config.environ_file.write_text(f"BEFORE=1\nBIG={big}\nAFTER=2\n")
    with running(py_config) as (_, agent):
        result = agent.run("exec", 'echo "$BEFORE $AFTER ${#BIG}"')
        assert (result.exit_code, result.stdout) == (0, b"1 2 0\n")  # every spawn works; only BIG is gone
    warnings = [line for line in log_lines if "'BIG'" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("WARNING") and f"environ.txt:2: 'BIG' is {len('BIG=') + len(big) + 1} bytes" in warnings[0]
    assert len(warnings[0]) < 1024


# ---- the batch-input server (docs/protocol.md §5.6) ----------------------------------------------------------------


def test_a_failing_input_event_costs_one_connection_and_the_server_goes_on(
    monkeypatch: pytest.MonkeyPatch, py_runner: tuple[RunnerHandle, AgentClient], work_dir: Path,
    log_lines: list[str],
) -> None:
    _, agent = py_runner
    # The first byte a client sends breaks the handler of its connection (a bug, injected here).
    monkeypatch.setattr(UserInputServer, "_readable", once(RuntimeError("handler bug (test)"), UserInputServer._readable))
    (work_dir / "chatty.py").write_text(
        "import os, socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(os.environ['_BACKEND_INPUT_SOCKET'])\n"
        "s.sendall(b'hello?')\n"
        "try:\n"
        "    answer = s.recv(100)\n"
        "except ConnectionResetError:  # closed with our bytes unread\n"
        "    answer = b''\n"
        "print('answer:', repr(answer))\n"
    )
    first = agent.run("exec", f"{sys.executable} chatty.py")
    # The broken connection was closed (EOF, no answer), whatever waiting-input was already on its way; the
    # answer line may come before that waiting-input or after it.
    stdout = first.stdout
    if first.status == "waiting-input":
        first = agent.collect_run()
        stdout += first.stdout
    assert (first.status, first.exit_code, stdout) == ("finished", 0, b"answer: b''\n")
    assert any("user-input event" in line and "handler bug (test)" in line for line in log_lines)
    (work_dir / "main.py").write_text("print('got', input('? '))\n")
    assert agent.run("exec", "*").status == "waiting-input"
    agent.feed_input("still works")
    assert agent.collect_run().stdout == b"got still works\n"


# The injected SystemExit really ends the thread: that is the point, so pytest's report of it is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_input_server_is_noticed_and_replaced(
    monkeypatch: pytest.MonkeyPatch, py_config: RunnerConfig, work_dir: Path, log_lines: list[str]
) -> None:
    # Something no handler catches (SystemExit) ends the first server's thread at its first connection.
    monkeypatch.setattr(UserInputServer, "_accept", once(SystemExit("thread killed (test)"), UserInputServer._accept))
    with running(py_config) as (handle, agent):
        # The socket file appears at bind(), a moment before listen(): knock until a connection is taken.
        wait_until(lambda: knocked(py_config.user_input_socket), timeout=30, what="the first input server")
        wait_until(lambda: any("the user-input server died" in line for line in log_lines), timeout=10,
                   what="the language runner to notice the dead input server")
        # The dead server removed its socket file before it told; the new one binds it again a second later.
        wait_until(py_config.user_input_socket.exists, timeout=10, what="the new input server's socket")
        (work_dir / "main.py").write_text("print('got', input('? '))\n")
        assert agent.run("exec", "*", timeout=30).status == "waiting-input"  # served by the new server
        agent.feed_input("from the new server")
        assert agent.collect_run().stdout == b"got from the new server\n"
        assert lang_info(handle).generation == 1  # the thread was replaced; the actor lived on
