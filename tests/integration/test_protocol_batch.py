"""Batch mode through the wire (docs/protocol.md §5): the whole tree in-process, real shells and processes, an agent client."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import psutil
import pytest

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.actors.lang_runner import actor as lang_runner
from kernel_runner.actors.lang_runner import job as lang_job
from kernel_runner.client import AgentClient
from kernel_runner.procs.process import StopStep
from kernel_runner.supervision.spec import ChildState
from tests.support.flood import MIB, StalledAgent, read_flood_to_the_end, wait_for_stalled_writer
from tests.support.procs import assert_gone, descendants
from tests.support.runners import LangRunners, interrupt_run, read_until, running
from tests.support.waiting import wait_until


@pytest.fixture
def agent(py_runner: tuple[RunnerHandle, AgentClient]) -> AgentClient:  # shadows conftest's app-language agent
    return py_runner[1]


@pytest.fixture
def langs(runner_config: RunnerConfig) -> Iterator[LangRunners]:
    runners = LangRunners(runner_config)
    yield runners
    runners.close()


# ---- the op sequence -----------------------------------------------------------------------------------


def test_clean_build_exec_answer_once_each_in_order(agent: AgentClient, work_dir: Path) -> None:
    results = agent.batch(clean="rm -f built", build="echo building; touch built", exec="test -f built && echo ran")
    assert [(r.status, r.exit_code) for r in results] == [
        ("clean-finished", 0),
        ("build-finished", 0),
        ("finished", 0),
    ]
    assert results[1].stdout == b"building\n"
    assert results[2].stdout == b"ran\n"


def test_many_queued_ops_get_exactly_one_end_message_each_in_order(agent: AgentClient) -> None:
    for index in range(30):
        agent.send("exec", f"echo {index}")
    results = [agent.collect_run() for _ in range(30)]
    assert [(r.status, r.exit_code, r.stdout) for r in results] == [
        ("finished", 0, f"{index}\n".encode()) for index in range(30)
    ]
    agent.send("status")
    assert agent.recv().type == "status"  # nothing else (no stray `finished`) was sent in between


def test_hundreds_of_runs_that_end_at_once_are_answered_in_order(
    agent: AgentClient, work_dir: Path, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs whose step cannot even be spawned end inside the loop that starts them (IDLE -> RUNNING_JOB -> IDLE):
    # the loop goes on without re-entering itself, however many there are (nested calls would hit the recursion limit).
    count = 400
    agent.send("exec", "echo holding; while [ ! -f go ]; do sleep 0.02; done")
    read_until(agent, b"holding")
    for index in range(count):
        agent.send("exec", f"echo {index}")
    wait_until(lambda: any(f"({count - 1} queued before it)" in line for line in log_lines), timeout=10,
               what="every run to be queued behind the holding one")

    class NoSpawn:
        @staticmethod
        def spawn(*args: object, **kwargs: object) -> None:
            raise OSError("no more processes (test)")

    monkeypatch.setattr(lang_job, "ProcessHandle", NoSpawn)
    (work_dir / "go").touch()
    assert agent.collect_run().exit_code == 0
    results = [agent.collect_run() for _ in range(count)]
    assert [(r.status, r.exit_code) for r in results] == [("finished", 127)] * count  # docs/protocol.md §5.1
    assert [r.stderr for r in results] == [
        f"kernel-runner: the exec command could not start: cannot run /bin/sh: no more processes (test); "
        f"the command: 'echo {index}'\n".encode() for index in range(count)
    ]
    monkeypatch.undo()
    assert agent.run("exec", "echo spawned again").stdout == b"spawned again\n"


def test_empty_commands_finish_with_zero_without_running_anything(agent: AgentClient) -> None:
    results = agent.batch(clean="", build="", exec="")
    assert [(r.status, r.exit_code, r.records) for r in results] == [
        ("clean-finished", 0, ()),
        ("build-finished", 0, ()),
        ("finished", 0, ()),
    ]


def test_stdout_stderr_and_exit_code_of_a_shell_command(agent: AgentClient) -> None:
    result = agent.run("exec", "echo out; echo err >&2; exit 3")
    assert (result.status, result.exit_code) == ("finished", 3)
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"


def test_command_not_found_is_the_shells_127(agent: AgentClient) -> None:
    result = agent.run("exec", "no-such-command-anywhere")
    assert result.exit_code == 127
    assert b"not found" in result.stderr


def test_a_failed_build_skips_the_next_exec_only(agent: AgentClient, work_dir: Path) -> None:
    results = agent.batch(build="echo broken >&2; exit 2", exec="touch ran; echo ran")
    assert [(r.status, r.exit_code) for r in results] == [("clean-finished", 0), ("build-finished", 2), ("finished", 127)]
    assert results[2].records == ()  # docs/protocol.md §5.2: no output, nothing ran
    assert not (work_dir / "ran").exists()
    again = agent.run("exec", "echo ran")
    assert (again.exit_code, again.stdout) == (0, b"ran\n")


def test_output_is_streamed_while_the_command_runs(agent: AgentClient, work_dir: Path) -> None:
    agent.send("exec", "echo first; while [ ! -f go ]; do sleep 0.02; done; echo second")
    read_until(agent, b"first")  # arrived while the command still waits for `go`
    (work_dir / "go").touch()
    result = agent.collect_run()
    assert (result.exit_code, result.stdout) == (0, b"second\n")


def test_make_runs_first_for_build_star(agent: AgentClient, work_dir: Path) -> None:
    (work_dir / "Makefile").write_text("all:\n\t@echo made by make\n")
    (work_dir / "setup.py").write_text("raise SystemExit('the python heuristic must not run')\n")
    result = agent.run("build", "*")
    assert (result.status, result.exit_code, result.stdout) == ("build-finished", 0, b"made by make\n")


def test_python_exec_star_runs_main_py(agent: AgentClient, work_dir: Path) -> None:
    (work_dir / "main.py").write_text("import os\nprint('main', os.environ['_BACKEND_BATCH_MODE'])\n")
    result = agent.run("exec", "*")
    assert (result.exit_code, result.stdout) == (0, b"main 1\n")


def test_missing_heuristic_input_is_127_with_a_reason(agent: AgentClient) -> None:
    result = agent.run("exec", "*")
    assert result.exit_code == 127
    assert b"cannot find main.py" in result.stderr


# ---- output volume and backpressure ---------------------------------------------------------------------


def test_20_mib_arrive_byte_exact_and_in_order(agent: AgentClient, work_dir: Path) -> None:
    data = os.urandom(20 * MIB)
    (work_dir / "data.bin").write_bytes(data)
    result = agent.run("exec", "cat data.bin", timeout=60)
    assert result.exit_code == 0
    chunks = [r.payload for r in result.records if r.type == "stdout"]
    assert max(len(c) for c in chunks) <= MIB  # spec: no record over 1 MiB (the agent caps at 10 MiB)
    assert b"".join(chunks) == data


def test_a_stalled_agent_slows_the_child_and_memory_stays_bounded(py_config: RunnerConfig, work_dir: Path) -> None:
    total = 200 * MIB
    progress = work_dir / "progress"
    handle = start(py_config)  # no AgentClient: PUSH would round-robin output to it, and it would absorb some
    try:
        agent = StalledAgent(handle.ports.port_in, handle.ports.port_out)
        try:
            me = psutil.Process()
            before = me.memory_info().rss
            agent.start_flood(total, progress)
            written, peak = wait_for_stalled_writer(progress, lambda: me.memory_info().rss, timeout=30)
            assert written < total, "the child was never slowed down"
            growth = peak - before
            assert growth < 150 * MIB, f"RSS grew by {growth / MIB:.0f} MiB while the agent was not reading"
            # The agent reads again: everything arrives, in order, and the op finishes normally.
            assert read_flood_to_the_end(agent, message_timeout=60, total_timeout=60) == total
        finally:
            agent.close()
    finally:
        handle.stop(timeout=5)


def sleeping() -> list[int]:
    """Pids of `sleep` processes below this test (a shell prints before it forks the next command)."""
    found = []
    for proc in descendants():
        try:
            if proc.name() == "sleep":
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


# ---- interrupt -----------------------------------------------------------------------------------------------


def test_an_interrupted_sleep_finishes_with_the_sigint_code(agent: AgentClient) -> None:
    # A 600 s sleep against a 60 s wait: only the interrupt can end this run, and its exit code says so.
    agent.send("exec", "echo started; sleep 600")
    read_until(agent, b"started")
    sleepers = wait_until(sleeping, timeout=30, what="the sleep process")
    result, _ = interrupt_run(agent, timeout=60)
    assert (result.status, result.exit_code) == ("finished", 130)  # 128 + SIGINT, the shell convention
    assert_gone(sleepers, timeout=30)


def test_interrupt_escalates_to_sigterm_then_sigkill(
    agent: AgentClient, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = (StopStep((signal.SIGINT,), 0.3), StopStep((signal.SIGTERM,), 0.3))
    monkeypatch.setattr(lang_job, "INTERRUPT_STEPS", fast)
    agent.send("exec", "trap '' INT TERM; echo ready; while :; do sleep 0.05; done")
    read_until(agent, b"ready")
    result, _ = interrupt_run(agent, timeout=60)
    assert result.exit_code == 128 + 9  # the loop ignores INT and TERM: only the last step could end it
    assert any("still running; SIGTERM to group" in line for line in log_lines)
    assert any("SIGKILL to its tree" in line for line in log_lines)


def test_interrupt_with_nothing_running_is_logged(agent: AgentClient, log_lines: list[str]) -> None:
    agent.interrupt()
    wait_until(lambda: any("interrupt: nothing is running" in line for line in log_lines), timeout=5, what="log")
    assert agent.run("exec", "echo still fine").stdout == b"still fine\n"


def test_a_background_grandchild_holding_the_pipes_does_not_hang_the_op(agent: AgentClient) -> None:
    # The sleeper holds the pipes for 600 s, the wait is 60 s: only an op that ends with its shell gets an answer.
    result = agent.run("exec", "sleep 600 & echo left a sleeper", timeout=60)
    assert (result.exit_code, result.stdout) == (0, b"left a sleeper\n")
    # The queue goes on; the sleeper is killed with the runner (the leak check of conftest verifies it).
    assert agent.run("exec", "echo next").stdout == b"next\n"


# ---- user input (docs/protocol.md §5.6) ------------------------------------------------------------------------------


def test_python_input_in_batch_mode_goes_through_the_agent(agent: AgentClient, work_dir: Path) -> None:
    (work_dir / "main.py").write_text("name = input('name? ')\nprint('hello', repr(name))\n")
    first = agent.run("exec", f"{sys.executable} main.py")
    assert first.status == "waiting-input"
    assert first.stdout == b"name? "
    assert first.records[-1].json() == {"is_password": False}
    agent.feed_input("alice")
    result = agent.collect_run()
    assert (result.status, result.exit_code, result.stdout) == ("finished", 0, b"hello 'alice'\n")


def test_stale_input_is_dropped_not_kept_for_the_next_prompt(
    agent: AgentClient, work_dir: Path, log_lines: list[str]
) -> None:
    agent.feed_input("stale")
    wait_until(lambda: any("input dropped" in line for line in log_lines), timeout=5, what="the drop log line")
    (work_dir / "main.py").write_text("print('got', input())\n")
    assert agent.run("exec", "*").status == "waiting-input"
    agent.feed_input("fresh")
    assert agent.collect_run().stdout == b"got fresh\n"


def test_interrupt_while_waiting_for_input(agent: AgentClient, work_dir: Path) -> None:
    (work_dir / "main.py").write_text("input('> ')\n")
    assert agent.run("exec", "*").status == "waiting-input"
    result, _ = interrupt_run(agent, timeout=60)  # a run still waiting for input would never end
    assert result.exit_code == 130
    # Nothing waits any more: a late input is dropped, and the next prompt asks again.
    agent.feed_input("late")
    (work_dir / "main.py").write_text("print(input())\n")
    assert agent.run("exec", "*").status == "waiting-input"
    agent.feed_input("on time")
    assert agent.collect_run().stdout == b"on time\n"


def test_a_language_without_input_support_answers_unsupported(langs: LangRunners, runner_config: RunnerConfig) -> None:
    agent = langs.start("cpp")
    client = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "sys.stdout.write(s.recv(100).decode())"
    )
    result = agent.run("exec", f'{sys.executable} -c "{client}" {runner_config.user_input_socket}')
    assert (result.exit_code, result.stdout) == (0, b"<user-input is unsupported>")
    assert result.of_type("waiting-input") == []


# ---- bootstrap, task log, start-up -------------------------------------------------------------------------


def test_bootstrap_runs_once_logged_and_status_waits_for_it(
    py_config: RunnerConfig, work_dir: Path, log_lines: list[str]
) -> None:
    (work_dir / "bootstrap.sh").write_text(
        "echo run >> bootstrap.count\necho bootstrap says hi\nwhile [ ! -f release ]; do sleep 0.02; done\n"
    )
    with running(py_config) as (handle, agent):
        agent.send("status")
        wait_until((work_dir / "bootstrap.count").exists, timeout=10, what="bootstrap.sh to start")
        with pytest.raises(TimeoutError):
            agent.expect("status", timeout=0.3)  # docs/protocol.md §1.6: no status before bootstrap has finished
        (work_dir / "release").touch()
        status = agent.expect("status", timeout=10)
        assert status.payload
        assert any("bootstrap stdout: bootstrap says hi" in line for line in log_lines)
        # Its output was logged, not sent: the next run sees only its own output.
        assert agent.run("exec", "echo mine").records[0].payload == b"mine\n"

        # A restarted language runner does not run bootstrap.sh again, and the runner stays ready.
        import pykka

        (lang_ref,) = pykka.ActorRegistry.get_by_class(lang_runner.LangRunnerActor)
        lang_ref.stop(timeout=5)
        wait_until(
            lambda: any(c.child_id == "lang" and c.generation == 2 and c.state.value == "RUNNING"
                        for c in handle.which_children()),
            timeout=10,
            what="the language runner's second generation",
        )
        assert agent.run("exec", "echo back", timeout=10).stdout == b"back\n"
        assert agent.status()["kernel_runner"]["ready"] is True
    assert (work_dir / "bootstrap.count").read_text() == "run\n"


def test_a_hung_bootstrap_is_stopped_at_its_timeout(
    py_config: RunnerConfig, work_dir: Path, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lang_runner, "BOOTSTRAP_TIMEOUT_S", 0.5)
    (work_dir / "bootstrap.sh").write_text("sleep 60\n")
    with running(py_config) as (_handle, agent):
        assert "started_at" in agent.status(timeout=10)
    assert any("bootstrap did not finish within" in line for line in log_lines)


def lang_phases(log_lines: list[str]) -> list[str]:
    """The language runner's phase changes, as "OLD -> NEW", in order (PhaseMachine logs each one at DEBUG)."""
    prefix = "DEBUG [lang] phase "
    return [line.removeprefix(prefix).split(":", 1)[0] for line in log_lines if line.startswith(prefix)]


def test_a_stop_during_bootstrap_stops_it_and_start_up_counts_as_running(
    py_config: RunnerConfig, work_dir: Path, log_lines: list[str]
) -> None:
    (work_dir / "bootstrap.sh").write_text("touch bootstrap.started\nwhile :; do sleep 0.05; done\n")
    with running(py_config) as (handle, _agent):
        wait_until((work_dir / "bootstrap.started").exists, timeout=10, what="bootstrap.sh to start")
        sleepers = wait_until(sleeping, timeout=5, what="the bootstrap's sleep")
        # The supervisor sees RUNNING while start-up runs (as before phases), so the first `status` shows it so.
        wait_until(lambda: [c.state for c in handle.which_children() if c.child_id == "lang"] == [ChildState.RUNNING],
                   timeout=5, what="the language runner RUNNING during bootstrap")
        assert handle.stop(timeout=5)
    assert lang_phases(log_lines) == ["STARTING -> STOPPING", "STOPPING -> ENDED"]
    assert any("bootstrap job finished with exit code 143" in line for line in log_lines)
    assert_gone(sleepers, timeout=2)


def test_output_is_also_appended_to_the_task_log(runner_config: RunnerConfig, work_dir: Path) -> None:
    kernel_id = uuid.uuid4()
    (runner_config.config_dir / "environ.txt").write_text(f"BACKENDAI_KERNEL_ID={kernel_id}\n")
    (work_dir / ".logs").mkdir()
    with running(attrs.evolve(runner_config, lang="python")) as (_handle, agent):
        assert agent.run("exec", "echo to the log; echo and err >&2").exit_code == 0
        assert agent.run("exec", "echo second op").exit_code == 0
    h = kernel_id.hex
    log_file = work_dir / ".logs" / "task" / h[:2] / h[2:4] / f"{h[4:]}.log"
    text = log_file.read_bytes()
    assert b"to the log\n" in text and b"and err\n" in text and text.endswith(b"second op\n")


def test_the_serial_queue_keeps_inline_ops_responsive(langs: LangRunners, work_dir: Path) -> None:
    agent = langs.start("c")  # c answers `complete` in the language runner itself (no Jupyter kernel)
    agent.send("exec", "while [ ! -f go ]; do sleep 0.02; done; echo one")
    agent.send("exec", "echo two")
    # While one op runs and one waits, status and complete (answered by the busy runner) come at once.
    assert "started_at" in agent.status(timeout=2)
    assert agent.complete("x", timeout=2) == {"suggestions": []}
    (work_dir / "go").touch()
    assert [agent.collect_run().stdout, agent.collect_run().stdout] == [b"one\n", b"two\n"]


def test_stop_during_a_run_answers_it_and_leaves_no_process(py_config: RunnerConfig) -> None:
    with running(py_config) as (handle, agent):
        agent.send("exec", "echo started; sleep 30")
        read_until(agent, b"started")
        sleepers = wait_until(sleeping, timeout=5, what="the sleep process")
        assert handle.stop(timeout=5)
        result = agent.collect_run(timeout=5)
        assert result.status == "finished" and result.exit_code == 128 + 15
    assert_gone(sleepers, timeout=2)
