"""TerminalActor with a real pty shell behind real PUB/SUB sockets, driven the way a terminal client and the agent do."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pykka
import pytest
import zmq
from loguru import logger

from kernel_runner import RunnerConfig, RunnerHandle, start
from kernel_runner.actors.terminal.actor import (
    LIFECYCLE,
    Phase,
    TerminalActor,
    TerminalPorts,
    TerminalSettings,
)
from kernel_runner.actors.terminal.commands import GITGRAPH_MIME
from kernel_runner.actors.terminal.io import PtyReader, TermInputReceiver
from kernel_runner.client import AgentClient, RunResult
from kernel_runner.config import RestartDefaults
from kernel_runner.context import RunnerContext
from kernel_runner.ids import TERMINAL_CHILD, next_run_id
from kernel_runner.messages import Finished, Output, RunDone, RunTask
from kernel_runner.runtime.tree import terminal_child_spec
from kernel_runner.supervision.actor import InvalidTransition, PhaseMachine
from kernel_runner.supervision.policy import Backoff
from kernel_runner.supervision.spec import ChildInfo, ChildSpec, ChildState
from tests.support.procs import alive, assert_gone
from tests.support.tree import Tree
from tests.support.waiting import wait_until

# A shell without rc files, so the user's dotfiles cannot change what the tests see.
SHELL = ["/bin/bash", "--norc", "--noprofile"]


class TermClient:
    """A terminal client: PUB connected to the runner's SUB (input), SUB connected to the runner's PUB (output)."""

    def __init__(self, *, term_in: int, term_out: int) -> None:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        self.pub: zmq.Socket[bytes] = ctx.socket(zmq.PUB)
        self.sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.pub.connect(f"tcp://127.0.0.1:{term_in}")
        self.sub.connect(f"tcp://127.0.0.1:{term_out}")
        self.buffer = bytearray()
        self._probe = 0

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close(linger=0)

    def type(self, text: str) -> None:
        self.pub.send(text.encode())

    def mark(self) -> int:
        self._drain(0)
        return len(self.buffer)

    def _drain(self, timeout_ms: int) -> None:
        if not self.sub.poll(timeout_ms):
            return
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            assert len(frames) == 1, f"terminal output must be single-frame, got {len(frames)} frames"
            self.buffer.extend(frames[0])

    def wait_for(self, pattern: bytes, *, since: int = 0, timeout: float = 10.0) -> re.Match[bytes]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(bytes(self.buffer), since)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in terminal output within {timeout}s: {bytes(self.buffer[since:])!r}")
            self._drain(int(min(remaining, 0.1) * 1000) + 1)

    def sync(self, timeout: float = 10.0) -> None:
        """PUB/SUB joins late (slow joiner, both ways): re-send a probe until its output comes back."""
        deadline = time.monotonic() + timeout
        while True:
            self._probe += 1
            since = self.mark()
            # The typed text holds `$((...))`; only the shell's output holds the computed marker.
            self.type(f"echo probe-$(({self._probe}+1000))\n")
            try:
                self.wait_for(rf"probe-{self._probe + 1000}\b".encode(), since=since, timeout=0.3)
                return
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise

    def echo(self, word: str, *, timeout: float = 10.0) -> None:
        since = self.mark()
        self.type(f"echo {word}-$((40+2))\n")
        self.wait_for(rf"{word}-42\r?\n".encode(), since=since, timeout=timeout)


def terminal_info(runner: RunnerHandle) -> ChildInfo:
    return next(info for info in runner.which_children() if info.child_id == TERMINAL_CHILD)


def wait_terminal(
    children: Callable[[], list[ChildInfo]], match: Callable[[ChildInfo], bool], *, what: str, timeout: float = 10.0
) -> ChildInfo:
    """The terminal's status entry once `match` holds for it (ports, shell pid and state ride in `extra`)."""

    def probe() -> ChildInfo | None:
        info = next((i for i in children() if i.child_id == TERMINAL_CHILD), None)
        return info if info is not None and match(info) else None

    found = wait_until(probe, timeout=timeout, what=what)
    assert found is not None
    return found


def has_ports(info: ChildInfo) -> bool:
    return bool(info.extra.get("term_in_port") and info.extra.get("term_out_port"))


def code(runner: RunnerHandle, agent: AgentClient, text: str, *, timeout: float = 10.0) -> RunResult:
    """A `code` op as the agent sends it: lang=git, so the language runner hands it to the terminal."""
    agent.send("code", text)
    return agent.collect_run(timeout=timeout)


@pytest.fixture
def term_config(runner_config: RunnerConfig) -> RunnerConfig:
    return attrs.evolve(runner_config, lang="git", term_in_port=0, term_out_port=0)


@pytest.fixture
def term_runner(term_config: RunnerConfig) -> Iterator[RunnerHandle]:
    handle = start(term_config, extra_children=[lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL))])
    yield handle
    handle.stop(timeout=5)


@pytest.fixture
def term_agent(term_runner: RunnerHandle) -> Iterator[AgentClient]:
    with AgentClient(port_in=term_runner.ports.port_in, port_out=term_runner.ports.port_out) as client:
        yield client


@pytest.fixture
def term(term_runner: RunnerHandle) -> Iterator[TermClient]:
    info = wait_terminal(term_runner.which_children, has_ports, what="the terminal's bound ports in status")
    client = TermClient(term_in=info.extra["term_in_port"], term_out=info.extra["term_out_port"])
    try:
        client.sync()
        yield client
    finally:
        client.close()


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test User", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    (path / "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "commit", "-q", "-m", "first commit || with bars")
    git(path, "checkout", "-q", "-b", "feature")
    (path / "b.txt").write_text("b\n")
    git(path, "add", "b.txt")
    git(path, "commit", "-q", "-m", "second commit")
    return path


# ---- the pty over PUB/SUB --------------------------------------------------------------------------------------


def test_typed_input_runs_in_the_shell_and_output_is_published(term_runner: RunnerHandle, term: TermClient) -> None:
    term.echo("hi")
    info = terminal_info(term_runner)
    assert info.state is ChildState.RUNNING
    assert info.pid == info.extra["shell_pid"]
    assert info.extra["term_in_port"] > 0 and info.extra["term_out_port"] > 0


def test_shell_gets_the_runner_environment_and_work_dir(term: TermClient, term_config: RunnerConfig) -> None:
    since = term.mark()
    term.type('echo "cwd=$(pwd)" "term=$TERM" "tty=$(tty)"\n')
    found = term.wait_for(rb"cwd=(\S+) term=(\S+) tty=(\S+)\r?\n", since=since)
    assert found.group(1).decode() == str(term_config.work_dir)
    assert found.group(2) == b"xterm"
    assert found.group(3).startswith(b"/dev/pts/")  # a real controlling terminal, not "not a tty"


def test_resize_applies_to_the_pty(term_runner: RunnerHandle, term_agent: AgentClient, term: TermClient) -> None:
    since = term.mark()
    term.type("stty size\n")
    term.wait_for(rb"\b24 80\r?\n", since=since)  # the initial size (upstream left 0 0)

    result = code(term_runner, term_agent, "%resize 40 100")
    assert (result.status, result.exit_code) == ("finished", 0)
    assert result.stdout == b"OK; terminal resized to 40 lines and 100 columns"

    since = term.mark()
    term.type("stty size\n")
    term.wait_for(rb"\b40 100\r?\n", since=since)
    assert (terminal_info(term_runner).extra["rows"], terminal_info(term_runner).extra["cols"]) == (40, 100)


def test_exit_restarts_the_shell_on_the_same_sockets(term_runner: RunnerHandle, term_agent: AgentClient,
                                                     term: TermClient) -> None:
    assert code(term_runner, term_agent, "%resize 30 90").exit_code == 0
    first_pid = terminal_info(term_runner).extra["shell_pid"]
    since = term.mark()
    term.type("exit\n")
    term.wait_for(rb"Restarting\.\.\.\r\n", since=since)
    info = wait_terminal(
        term_runner.which_children,
        lambda i: i.extra.get("shell_state") == "running" and i.extra["shell_pid"] != first_pid,
        what="a new shell",
    )
    assert info.extra["shell_restarts"] == 1
    assert (info.generation, info.restarts) == (1, 0)  # the actor respawned its shell; the supervisor did nothing
    assert_gone([first_pid], timeout=5)
    term.sync()
    term.echo("again")
    since = term.mark()
    term.type("stty size\n")
    term.wait_for(rb"\b30 90\r?\n", since=since)  # the last %resize applies to the new shell too


def test_stop_hangs_up_the_shell_and_its_jobs(term_config: RunnerConfig) -> None:
    handle = start(term_config, extra_children=[lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL))])
    try:
        info = wait_terminal(handle.which_children, has_ports, what="terminal ports")
        client = TermClient(term_in=info.extra["term_in_port"], term_out=info.extra["term_out_port"])
        try:
            client.sync()
            since = client.mark()
            client.type("sleep 1000 & echo bg=$!\n")
            background = int(client.wait_for(rb"bg=(\d+)\r?\n", since=since).group(1))
            shell_pid = info.extra["shell_pid"]
            assert alive(background) and alive(shell_pid)
            since = client.mark()
            assert handle.stop(timeout=5)
            assert_gone([shell_pid, background], timeout=5)
            client.wait_for(rb"Terminated\.\r\n", since=since, timeout=2)
        finally:
            client.close()
    finally:
        handle.stop(timeout=5)


# ---- code ops: % commands --------------------------------------------------------------------------------------


def test_ping_answers_pong_with_exactly_one_finished(term_runner: RunnerHandle, term_agent: AgentClient) -> None:
    for _ in range(3):
        result = code(term_runner, term_agent, "%ping")
        assert (result.status, result.exit_code, result.stdout) == ("finished", 0, b"pong!")
    # A second `finished` per op (upstream's bug) would be left over here and end the next collect at once.
    with pytest.raises(TimeoutError):
        term_agent.recv(timeout=0.3)


@pytest.mark.parametrize(
    ("text", "exit_code", "stderr"),
    [
        ("%", 2, b"empty command"),
        ("%nope", 2, b"unknown command %nope"),
        ("%resize x", 2, b"usage: %resize ROWS COLS"),
        ("%resize x 10", 2, b"ROWS must be a whole number"),
        ("%show", 2, b"usage: %show graph PATH"),
        ("%show graph 'open", 2, b"cannot parse"),
        ("ls -l", 127, b"Invalid command."),
    ],
)
def test_bad_commands_answer_on_stderr_and_the_runner_keeps_serving(
    term_runner: RunnerHandle, term_agent: AgentClient, text: str, exit_code: int, stderr: bytes
) -> None:
    result = code(term_runner, term_agent, text)
    assert (result.status, result.exit_code) == ("finished", exit_code)
    assert stderr in result.stderr
    assert result.stdout == b""
    assert code(term_runner, term_agent, "%ping").stdout == b"pong!"
    info = terminal_info(term_runner)
    assert (info.state, info.generation, info.restarts) == (ChildState.RUNNING, 1, 0)




def test_show_graph_sends_the_gitgraph_media(term_runner: RunnerHandle, term_agent: AgentClient, repo: Path) -> None:
    result = code(term_runner, term_agent, f"%show graph {repo}")
    assert (result.status, result.exit_code) == ("finished", 0), result.records
    (media,) = result.of_type("media")
    body = media.json()
    assert body["type"] == GITGRAPH_MIME
    first, second = body["data"]
    full = git(repo, "log", "--all", "--topo-order", "--reverse", "--pretty=format:%h %p").splitlines()
    assert first == {
        "oid": full[0].split()[0],
        "parent_ids": [],
        "author": "Test User",
        "message": "first commit || with bars",
        "branch": "main",
        "parent_branches": [],
    }
    assert second == {
        "oid": full[1].split()[0],
        "parent_ids": [first["oid"]],
        "author": "Test User",
        "message": "second commit",
        "branch": "feature",
        "parent_branches": ["main"],
    }


def test_show_graph_dot_is_the_shells_current_folder(term_runner: RunnerHandle, term_agent: AgentClient,
                                                     term: TermClient, repo: Path) -> None:
    since = term.mark()
    term.type(f"cd {repo} && echo in-$((2+2))\n")
    term.wait_for(rb"in-4\r?\n", since=since)
    result = code(term_runner, term_agent, "%show graph .")
    assert result.exit_code == 0, result.records
    (media,) = result.of_type("media")
    assert [c["message"] for c in media.json()["data"]] == ["first commit || with bars", "second commit"]


def test_show_graph_outside_a_repository_fails_cleanly(term_runner: RunnerHandle, term_agent: AgentClient,
                                                       tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = code(term_runner, term_agent, f"%show graph {plain}")
    assert result.exit_code == 128  # git's own code
    assert b"not a git repository" in result.stderr.lower()
    assert result.of_type("media") == []

    missing = code(term_runner, term_agent, f"%show graph {tmp_path / 'missing'}")
    assert missing.exit_code == 1
    assert b"is not a directory" in missing.stderr


def test_show_graph_of_an_empty_repository_is_an_empty_graph(term_runner: RunnerHandle, term_agent: AgentClient,
                                                             tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    result = code(term_runner, term_agent, f"%show graph {empty}")
    assert result.exit_code == 0, result.records
    (media,) = result.of_type("media")
    assert media.json() == {"type": GITGRAPH_MIME, "data": []}


# ---- the contract with the language runner (bare supervisor) -----------------------------------------------------


class BareTree(Tree):
    """The terminal and a stand-in language runner under a real supervisor; the recorder stands in for the router."""

    def __init__(self, config: RunnerConfig, terminal: Callable[[RunnerContext], ChildSpec]) -> None:
        super().__init__(config)
        self.start_forwarding_lang()
        self.start(terminal(self.runner))

    def children_list(self) -> list[ChildInfo]:
        return list(self.children().values())


def test_the_terminal_reports_run_done_after_its_output_and_sends_no_finished(term_config: RunnerConfig) -> None:
    tree = BareTree(term_config, lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL)))
    try:
        wait_terminal(tree.children_list, lambda t: t.state is ChildState.RUNNING, what="terminal running")
        run_id = next_run_id()
        tree.tell_child(TERMINAL_CHILD, RunTask(run_id=run_id, kind="code", text="%nope"))
        done = tree.recorder.wait_for(lambda m: m == ("lang", RunDone(run_id=run_id, exit_code=2)), timeout=5,
                                      what="RunDone at the language runner")
        messages = tree.recorder.messages
        assert not [m for m in messages if isinstance(m, Finished)], "only the language runner sends Finished"
        errors = [m for m in messages if isinstance(m, Output) and m.stream == "stderr"]
        assert errors and messages.index(errors[-1]) < messages.index(done)
    finally:
        tree.close()


def test_batch_kinds_are_refused(term_config: RunnerConfig) -> None:
    tree = BareTree(term_config, lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL)))
    try:
        wait_terminal(tree.children_list, lambda t: t.state is ChildState.RUNNING, what="terminal running")
        run_id = next_run_id()
        tree.tell_child(TERMINAL_CHILD, RunTask(run_id=run_id, kind="exec", text="ls"))
        tree.recorder.wait_for(lambda m: m == ("lang", RunDone(run_id=run_id, exit_code=127)), timeout=5,
                               what="RunDone 127")
        assert any(isinstance(m, Output) and b"only `code`" in m.data for m in tree.recorder.messages)
    finally:
        tree.close()


def test_a_terminal_that_cannot_start_rejects_runs_and_releases_the_language_runner(term_config: RunnerConfig,
                                                                                   tmp_path: Path) -> None:
    config = attrs.evolve(
        term_config,
        restart=RestartDefaults(backoff_initial_s=0.01, backoff_cap_s=0.02, backoff_jitter=0.0,
                                intensity_max_restarts=1, intensity_period_s=60.0),
    )
    missing = TerminalSettings(shell_argv=[str(tmp_path / "no-such-shell")])
    tree = BareTree(config, lambda runner: terminal_child_spec(runner, missing))
    try:
        wait_terminal(tree.children_list, lambda t: t.state is ChildState.FATAL, what="terminal FATAL")
        run_id = next_run_id()
        tree.tell_child(TERMINAL_CHILD, RunTask(run_id=run_id, kind="code", text="%ping"))
        done = tree.recorder.wait_for(lambda m: isinstance(m, tuple) and isinstance(m[1], RunDone), timeout=5,
                                      what="RunDone from the reject")[1]
        assert (done.run_id, done.exit_code) == (run_id, 127)
        assert done.note is not None and "the terminal is not running" in done.note
    finally:
        tree.close()


def test_fixed_ports_are_kept_across_actor_restarts(term_config: RunnerConfig) -> None:
    ports = TerminalPorts(0, 0)
    tree = BareTree(term_config, lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL), ports=ports))
    try:
        first = wait_terminal(tree.children_list, has_ports, what="terminal ports")
        assert (first.extra["term_in_port"], first.extra["term_out_port"]) == (ports.term_in, ports.term_out)
        # Kill the actor (not the shell): the supervisor restarts it, and it binds the same ports again.
        (actor,) = pykka.ActorRegistry.get_by_class(TerminalActor)
        actor.stop(timeout=5)
        second = wait_terminal(tree.children_list, lambda t: t.generation == 2 and has_ports(t), what="restarted terminal")
        assert (second.extra["term_in_port"], second.extra["term_out_port"]) == (ports.term_in, ports.term_out)
        assert second.extra["shell_pid"] != first.extra["shell_pid"]
        assert_gone([first.extra["shell_pid"]], timeout=5)
        client = TermClient(term_in=ports.term_in, term_out=ports.term_out)
        try:
            client.sync()
            client.echo("back")
        finally:
            client.close()
    finally:
        tree.close()



def dying_shell_tree(term_config: RunnerConfig, *, max_restarts: int, max_quick_exits: int) -> BareTree:
    """A terminal whose shell exits at once, every time: it gives up after `max_quick_exits` shells, and the
    supervisor after `max_restarts` restarts of the actor."""
    config = attrs.evolve(
        term_config,
        restart=RestartDefaults(backoff_initial_s=0.01, backoff_cap_s=0.02, backoff_jitter=0.0,
                                intensity_max_restarts=max_restarts, intensity_period_s=60.0),
    )
    return BareTree(config, lambda runner: terminal_child_spec(runner, TerminalSettings(
        shell_argv=["/bin/sh", "-c", "exit 3"],
        shell_backoff=Backoff(initial_s=0.01, factor=1.0, cap_s=0.01, jitter=0.0),
        max_quick_exits=max_quick_exits,
    )))


def test_a_shell_that_keeps_dying_is_left_to_the_supervisor(term_config: RunnerConfig) -> None:
    tree = dying_shell_tree(term_config, max_restarts=1, max_quick_exits=3)
    try:
        # 3 quick exits per incarnation end the actor with ProcessDied; the supervisor restarts it once, then gives up.
        info = wait_terminal(tree.children_list, lambda t: t.state is ChildState.FATAL, what="terminal FATAL")
        assert info.last_exit == "process exited with code 3"
        assert info.generation == 2
    finally:
        tree.close()


def test_show_graph_gives_up_on_a_hung_git(term_config: RunnerConfig, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in git that never answers (a real hung git needs a stuck filesystem); it must be killed, not waited for.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "git.pid"
    fake = bin_dir / "git"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    quick_git = TerminalSettings(shell_argv=SHELL, git_timeout_s=0.5)
    handle = start(term_config, extra_children=[lambda runner: terminal_child_spec(runner, quick_git)])
    try:
        with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
            wait_terminal(handle.which_children, lambda t: t.state is ChildState.RUNNING, what="terminal running")
            result = code(handle, agent, f"%show graph {tmp_path}")
            assert result.exit_code == 124
            assert b"did not finish within 0.5s" in result.stderr
            assert_gone([int(pid_file.read_text())], timeout=5)
            assert code(handle, agent, "%ping").stdout == b"pong!"
    finally:
        handle.stop(timeout=5)


def test_agent_code_ops_reach_the_terminal_through_the_language_runner(term_runner: RunnerHandle,
                                                                        term_agent: AgentClient) -> None:
    # lang=git: the agent's `code` goes router → language runner → terminal; RunDone releases the runner's queue,
    # so back-to-back ops are all answered, each with one `finished`.
    term_agent.send("code", "%ping")
    term_agent.send("code", "%nope")
    term_agent.send("code", "%resize 50 120")
    first, second, third = (term_agent.collect_run() for _ in range(3))
    assert (first.exit_code, first.stdout) == (0, b"pong!")
    assert second.exit_code == 2 and b"unknown command" in second.stderr
    assert (third.exit_code, third.stdout) == (0, b"OK; terminal resized to 50 lines and 120 columns")
    with pytest.raises(TimeoutError):
        term_agent.recv(timeout=0.3)


# ---- the life of one incarnation, as phases ----------------------------------------------------------------------

PHASE_LINE = re.compile(rf"\[{TERMINAL_CHILD}\] phase (\w+) -> (\w+)")


def terminal_phases(lines: list[str]) -> list[tuple[str, str]]:
    """The terminal's phase changes, in order, from PhaseMachine's debug lines."""
    return [(found.group(1), found.group(2)) for line in list(lines) if (found := PHASE_LINE.search(line))]


def test_a_normal_life_goes_through_every_phase_in_order(log_lines: list[str], term_config: RunnerConfig) -> None:
    handle = start(term_config, extra_children=[lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL))])
    try:
        info = wait_terminal(handle.which_children, has_ports, what="terminal ports")
        first_pid = info.extra["shell_pid"]
        assert terminal_phases(log_lines) == [("STARTING", "SHELL_RUNNING")]
        client = TermClient(term_in=info.extra["term_in_port"], term_out=info.extra["term_out_port"])
        try:
            client.sync()
            since = client.mark()
            client.type("exit\n")
            client.wait_for(rb"Restarting\.\.\.\r\n", since=since)
            second = wait_terminal(
                handle.which_children,
                lambda i: i.extra.get("shell_state") == "running" and i.extra["shell_pid"] != first_pid,
                what="a new shell",
            )
            # The supervisor's pid follows the new shell although its state stayed RUNNING throughout.
            assert (second.state, second.pid) == (ChildState.RUNNING, second.extra["shell_pid"])
            client.sync()
            assert handle.stop(timeout=5)
        finally:
            client.close()
    finally:
        handle.stop(timeout=5)
    assert terminal_phases(log_lines) == [
        ("STARTING", "SHELL_RUNNING"),
        ("SHELL_RUNNING", "SHELL_ENDING"),
        ("SHELL_ENDING", "RESPAWN_WAIT"),
        ("RESPAWN_WAIT", "SHELL_RUNNING"),
        ("SHELL_RUNNING", "STOPPING"),
        ("STOPPING", "ENDED"),
    ]


def test_while_the_shell_restarts_input_is_dropped_and_commands_still_run(log_lines: list[str],
                                                                          term_config: RunnerConfig) -> None:
    # A backoff far longer than the test: the terminal stays in RESPAWN_WAIT until it is stopped.
    long_wait = Backoff(initial_s=60.0, factor=1.0, cap_s=60.0, jitter=0.0)
    handle = start(term_config, extra_children=[
        lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL, shell_backoff=long_wait))])
    try:
        info = wait_terminal(handle.which_children, has_ports, what="terminal ports")
        client = TermClient(term_in=info.extra["term_in_port"], term_out=info.extra["term_out_port"])
        try:
            with AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out) as agent:
                client.sync()
                since = client.mark()
                client.type("exit\n")
                client.wait_for(rb"Restarting\.\.\.\r\n", since=since)
                waiting = wait_terminal(handle.which_children, lambda i: i.extra.get("shell_state") == "restarting",
                                        what="the shell restarting")
                assert waiting.state is ChildState.RUNNING

                client.type("echo typed-while-restarting\n")
                wait_until(lambda: any(f"[{TERMINAL_CHILD}] terminal input dropped" in line for line in list(log_lines)),
                           timeout=5, what="the typed input dropped")
                # `code` ops do not wait for a shell.
                assert code(handle, agent, "%ping").stdout == b"pong!"
                resized = code(handle, agent, "%resize 33 99")
                assert (resized.exit_code, resized.stdout) == (0, b"OK; terminal resized to 33 lines and 99 columns")
                info = terminal_info(handle)
                assert (info.extra["shell_state"], info.extra["rows"], info.extra["cols"]) == ("restarting", 33, 99)

                since = client.mark()
                assert handle.stop(timeout=5)
                client.wait_for(rb"Terminated\.\r\n", since=since, timeout=2)
        finally:
            client.close()
    finally:
        handle.stop(timeout=5)
    assert terminal_phases(log_lines)[-3:] == [
        ("SHELL_ENDING", "RESPAWN_WAIT"),
        ("RESPAWN_WAIT", "STOPPING"),
        ("STOPPING", "ENDED"),
    ]
    assert ("RESPAWN_WAIT", "SHELL_RUNNING") not in terminal_phases(log_lines)


def test_a_shell_that_keeps_dying_ends_from_shell_ending(log_lines: list[str], term_config: RunnerConfig) -> None:
    tree = dying_shell_tree(term_config, max_restarts=0, max_quick_exits=2)
    try:
        info = wait_terminal(tree.children_list, lambda t: t.state is ChildState.FATAL, what="terminal FATAL")
        assert info.last_exit == "process exited with code 3"
    finally:
        tree.close()
    assert terminal_phases(log_lines) == [
        ("STARTING", "SHELL_RUNNING"),
        ("SHELL_RUNNING", "SHELL_ENDING"),
        ("SHELL_ENDING", "RESPAWN_WAIT"),
        ("RESPAWN_WAIT", "SHELL_RUNNING"),
        ("SHELL_RUNNING", "SHELL_ENDING"),
        ("SHELL_ENDING", "ENDED"),
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.STOPPING, Phase.SHELL_RUNNING),  # no shell is spawned once a stop was requested
        (Phase.STOPPING, Phase.RESPAWN_WAIT),
        (Phase.SHELL_RUNNING, Phase.RESPAWN_WAIT),  # the banner waits for both the exit and the pty's end
        (Phase.RESPAWN_WAIT, Phase.SHELL_ENDING),  # no shell to end while waiting
        (Phase.STARTING, Phase.STOPPING),  # on_start runs before any StopRequested
        (Phase.ENDED, Phase.STARTING),
        (Phase.ENDED, Phase.SHELL_RUNNING),
        (Phase.SHELL_RUNNING, Phase.SHELL_RUNNING),
    ],
)
def test_the_transition_table_rejects_edges_that_must_never_happen(log_lines: list[str], old: Phase,
                                                                   new: Phase) -> None:
    life = PhaseMachine(old, LIFECYCLE.transitions, log=lambda: logger.bind(child="table"))
    with pytest.raises(InvalidTransition, match=f"{old.name} -> {new.name}"):
        life.to(new, "test")
    assert life.phase is old
    assert not any("phase" in line for line in log_lines if "[table]" in line)


def test_the_transition_table_covers_every_phase_and_every_phase_can_end(log_lines: list[str]) -> None:
    assert set(LIFECYCLE.transitions) == set(Phase) == set(LIFECYCLE.child_states)
    assert LIFECYCLE.transitions[Phase.ENDED] == frozenset()
    assert all(Phase.ENDED in LIFECYCLE.transitions[phase] for phase in Phase if phase is not Phase.ENDED)
    # A whole normal life walks the table without a refusal, and each step is logged.
    life = PhaseMachine(Phase.STARTING, LIFECYCLE.transitions, log=lambda: logger.bind(child="table"))
    walk = [Phase.SHELL_RUNNING, Phase.SHELL_ENDING, Phase.RESPAWN_WAIT, Phase.SHELL_RUNNING, Phase.STOPPING,
            Phase.ENDED]
    for phase in walk:
        life.to(phase)
    assert [line.split("phase ", 1)[1].strip() for line in log_lines if "[table] phase" in line] == [
        "STARTING -> SHELL_RUNNING", "SHELL_RUNNING -> SHELL_ENDING", "SHELL_ENDING -> RESPAWN_WAIT",
        "RESPAWN_WAIT -> SHELL_RUNNING", "SHELL_RUNNING -> STOPPING", "STOPPING -> ENDED",
    ]


# ---- bounded notices; helper threads survive a bad chunk, and a dead one is noticed (docs/architecture.md §7) -------


def test_a_huge_bad_command_is_answered_with_an_excerpt(term_runner: RunnerHandle, term_agent: AgentClient) -> None:
    huge = code(term_runner, term_agent, "%" + "x" * 2_000_000, timeout=30)  # refused before it is parsed
    assert (huge.status, huge.exit_code) == ("finished", 2)
    assert huge.stderr.startswith(b"the command is 2000001 characters long; a % command takes at most 8192: '%xxx")
    assert len(huge.stderr) < 1024
    unknown = code(term_runner, term_agent, "%" + "x" * 8000)
    assert unknown.stderr.startswith(b"unknown command %xxx") and len(unknown.stderr) < 1024
    resize = code(term_runner, term_agent, "%resize " + "9" * 8000 + " 10")
    assert resize.exit_code == 2 and b"(8000 characters)" in resize.stderr and len(resize.stderr) < 1024


def poison(method: Callable[..., Any], marker: bytes, exception: BaseException) -> Callable[..., Any]:
    """`method`, raising `exception` for a chunk or message that holds `marker` (a fault injected into a real thread)."""

    def patched(self: Any, data: Any) -> Any:
        if marker in (data[0] if isinstance(data, list) else data):
            raise exception
        return method(self, data)

    return patched


def test_input_that_breaks_its_handler_is_dropped_and_the_receiver_goes_on(
    monkeypatch: pytest.MonkeyPatch, term_runner: RunnerHandle, term: TermClient, log_lines: list[str]
) -> None:
    monkeypatch.setattr(TermInputReceiver, "_forward",
                        poison(TermInputReceiver._forward, b"poison", RuntimeError("handler bug (test)")))
    term.type("echo poison-$((40+2))\n")
    term.echo("healthy")  # typed after the poisoned message, and it arrives: the receiver went on
    assert b"poison-42" not in term.buffer
    assert any("terminal input of" in line and "handler bug (test)" in line and "poison" in line for line in log_lines)
    assert terminal_info(term_runner).generation == 1


def test_pty_output_that_breaks_its_handler_is_dropped_and_the_reader_goes_on(
    monkeypatch: pytest.MonkeyPatch, term_runner: RunnerHandle, term: TermClient, log_lines: list[str]
) -> None:
    monkeypatch.setattr(PtyReader, "_forward", poison(PtyReader._forward, b"poison-42", RuntimeError("handler bug (test)")))
    term.type("echo poison-$((40+2))\n")  # the typed line echoes as `$((40+2))`; only the output holds poison-42
    wait_until(lambda: any("pty output of" in line and "handler bug (test)" in line for line in log_lines), timeout=10,
               what="the dropped chunk's log line")
    term.echo("healthy")
    assert b"poison-42" not in term.buffer
    info = terminal_info(term_runner)
    assert (info.generation, info.extra["shell_restarts"]) == (1, 0)


# The injected SystemExit really ends the thread: that is the point, so pytest's report of it is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_pty_reader_restarts_the_shell_with_a_new_reader(
    monkeypatch: pytest.MonkeyPatch, term_runner: RunnerHandle, term: TermClient
) -> None:
    first_pid = terminal_info(term_runner).extra["shell_pid"]
    monkeypatch.setattr(PtyReader, "_forward", poison(PtyReader._forward, b"die-42", SystemExit("reader killed (test)")))
    since = term.mark()
    term.type("echo die-$((40+2))\n")
    info = wait_terminal(term_runner.which_children, lambda i: i.extra.get("shell_restarts") == 1
                         and i.extra.get("shell_state") == "running", what="a new shell (and reader)")
    assert info.generation == 1 and info.extra["shell_pid"] != first_pid
    assert_gone([first_pid], timeout=5)
    term.wait_for(rb"Restarting\.\.\.\r\n", since=since)
    term.sync()
    term.echo("back")


# The injected SystemExit really ends the thread: that is the point, so pytest's report of it is expected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_input_receiver_ends_the_incarnation_and_the_terminal_comes_back(
    monkeypatch: pytest.MonkeyPatch, term_config: RunnerConfig, log_lines: list[str]
) -> None:
    ports = TerminalPorts(0, 0)
    tree = BareTree(term_config, lambda runner: terminal_child_spec(runner, TerminalSettings(shell_argv=SHELL), ports=ports))
    try:
        first = wait_terminal(tree.children_list, has_ports, what="terminal ports")
        client = TermClient(term_in=ports.term_in, term_out=ports.term_out)
        try:
            client.sync()
            monkeypatch.setattr(TermInputReceiver, "_forward",
                                poison(TermInputReceiver._forward, b"die-now", SystemExit("receiver killed (test)")))
            client.type("die-now\n")
            second = wait_terminal(tree.children_list, lambda t: t.generation == 2 and has_ports(t),
                                   what="the terminal restarted by the supervisor")
            assert (second.extra["term_in_port"], second.extra["term_out_port"]) == (ports.term_in, ports.term_out)
            assert_gone([first.extra["shell_pid"]], timeout=5)
            assert any("the terminal input receiver died" in line for line in log_lines)
            client.sync()  # the new receiver takes input again (the client's PUB reconnects by itself)
            client.echo("back")
        finally:
            client.close()
    finally:
        tree.close()
