"""TerminalActor: the git runner's pty shell behind the terminal SUB/PUB sockets, and its `%` commands (docs/protocol.md §8.3).

Who owns what. Every ZeroMQ socket and every fd has exactly one owning thread, which is also the one that closes it
(the helper threads TermInputReceiver, PtyReader and GitGraphJob are described in io.py):

* TerminalActor (actor thread): the PUB socket, bound on `term_out_port` (sends are NOBLOCK; a PUB socket drops
  instead of blocking, so the actor never waits on it); the pty master fd, used for input writes (non-blocking,
  leftovers retried on a tick) and TIOCSWINSZ; the shell process; its CommandRunner (command_runner.py), which
  owns the queue of `code` ops.
* ProcessWatcher (one thread per shell): waits for the shell's pid only (the pty is read by PtyReader).

The PUB socket belongs to the actor rather than to a pty reader because it has to outlive each shell (subscribers
stay connected across restarts) and because the actor orders the `Restarting...`/`Terminated.` banners after the
last output of the old shell.

Restarts. When the shell exits (the user typed `exit`), the actor itself starts a new one after a Ticker-scheduled
backoff (0.05 s, doubling only while shells die within 1 s of starting), on the same sockets. A user's `exit` is
routine and must neither close the sockets (subscribers would have to re-join, port 0 would move) nor spend the
supervisor's restart intensity (5 per minute would turn the terminal FATAL after a few `exit`s). A shell that keeps
dying at start (10 times in a row) ends the actor with ProcessDied and the supervisor's backoff and intensity decide;
so do bind failures, a missing shell binary and actor crashes.

Life of one incarnation: one `Phase`, changed only through `to_phase` (LIFECYCLE; docs/architecture.md §3.4):

    STARTING ──(sockets bound, first shell spawned)──> SHELL_RUNNING ──(the shell exited, or its pty closed)──┐
                                                            ^                                                v
                                                            │ backoff over:                            SHELL_ENDING
                                                            │ the next shell spawned                         │ exit and pty
                                                            │                                                │ EOF both in
                                                       RESPAWN_WAIT <──(`Restarting...`, backoff scheduled)──┘
                                                       (input dropped)

    SHELL_RUNNING, SHELL_ENDING, RESPAWN_WAIT ──StopRequested──> STOPPING ──(the shell exited, or none was left)──> ENDED
                                                    (SIGHUP, then TERM, then KILL: stop_process)

    ──> ENDED also from STARTING (start failed), SHELL_ENDING (the shell died within QUICK_EXIT_S of starting
        max_quick_exits times in a row: ProcessDied), RESPAWN_WAIT (the next shell cannot be spawned: StartFailed),
        SHELL_RUNNING, SHELL_ENDING, RESPAWN_WAIT (the input receiver thread died: Crashed), and any phase when the
        actor crashes or is stopped from outside (cleanup).

The supervisor sees RUNNING from SHELL_RUNNING through RESPAWN_WAIT (its pid follows each new shell; `status` shows
`shell_state` running/restarting), STOPPING in STOPPING; the end itself is the ChildExited. Terminal input is written
to the pty only in SHELL_RUNNING. A shell's exit and its pty's EOF arrive in either order: which of the two is in is
per-shell data (`_Shell.exited`, `_Shell.pty_closed`), and SHELL_ENDING lasts until both are.

`code` ops (the `%` commands) do not depend on the shell's phase, as before: they run one at a time, in arrival
order, in every phase until ENDED, so `%ping` and `%resize` work while the shell restarts (a size set then applies to
the next shell) and `%show graph .` falls back to the work dir when no shell runs. The queue, the current op and its
git job are the CommandRunner's, not life-cycle state; at ENDED, `cleanup` closes it, which answers every op still
queued or running with its one RunDone (127).
"""

from __future__ import annotations

import enum
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
import zmq

from kernel_runner.actors.terminal.command_runner import CommandRunner
from kernel_runner.actors.terminal.io import (
    CTTY_SHIM,
    REAP_TIMEOUT_S,
    PtyReader,
    TermInputReceiver,
    TermInputReceiverDied,
    set_winsize,
)
from kernel_runner.context import RunnerContext
from kernel_runner.messages import (
    GitGraphDone,
    ProcessExited,
    PtyClosed,
    PtyOutput,
    RunTask,
    ShellRespawnDue,
    TerminalInput,
    TerminalInputFlushDue,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.process import ProcessHandle, StopStep, describe_returncode, stop_process, watch_process
from kernel_runner.supervision.actor import Lifecycle, PhasedActor
from kernel_runner.supervision.exits import Crashed, ExitReason, ProcessDied, ShutdownExit, StartFailed
from kernel_runner.supervision.policy import Backoff
from kernel_runner.supervision.spec import ChildContext, ChildState, StopRequested
from kernel_runner.wire.outbox import Credits
from kernel_runner.wire.sockets import bind_socket

DEFAULT_SHELL = "/bin/bash"
DEFAULT_SIZE = (24, 80)  # upstream left a new pty at 0x0, which full-screen programs mistake for "no terminal"
SHELL_BACKOFF = Backoff(initial_s=0.05, factor=2.0, cap_s=5.0, jitter=0.1)
QUICK_EXIT_S = 1.0
MAX_QUICK_EXITS = 10
OUTPUT_CREDITS = 64
INPUT_CREDITS = 64
PENDING_INPUT_LIMIT = 1 << 20
INPUT_RETRY_S = (0.005, 0.01, 0.02, 0.05, 0.1)
GIT_TIMEOUT_S = 10.0
MAX_GRAPH_COMMITS = 10_000
BIND_TIMEOUT_S = 5.0
JOIN_TIMEOUT_S = 1.0
PUB_LINGER_MS = 100

RESTARTING_BANNER = b"Restarting...\r\n"  # docs/protocol.md §8.3
TERMINATED_BANNER = b"Terminated.\r\n"  # docs/protocol.md §8.3


class Phase(enum.Enum):
    """Where one incarnation of the terminal is in its life (see the module docstring's diagram)."""

    STARTING = "starting"
    """Binding the sockets and spawning the first shell (inside start_child)."""
    SHELL_RUNNING = "shell-running"
    """A shell runs on the pty; typed input is written to it."""
    SHELL_ENDING = "shell-ending"
    """The shell exited or its pty closed; waiting for the other before the `Restarting...` banner. Input dropped."""
    RESPAWN_WAIT = "respawn-wait"
    """No shell: the backoff before the next one runs. Input is dropped (docs/protocol.md §8.3)."""
    STOPPING = "stopping"
    """A stop was requested: the shell is being hung up, then terminated, then killed (stop_process)."""
    ENDED = "ended"
    """The incarnation is over (finish called or cleanup ran); nothing follows."""


LIFECYCLE = Lifecycle(
    initial=Phase.STARTING,
    transitions={
        Phase.STARTING: frozenset({Phase.SHELL_RUNNING, Phase.ENDED}),
        Phase.SHELL_RUNNING: frozenset({Phase.SHELL_ENDING, Phase.STOPPING, Phase.ENDED}),
        Phase.SHELL_ENDING: frozenset({Phase.RESPAWN_WAIT, Phase.STOPPING, Phase.ENDED}),
        Phase.RESPAWN_WAIT: frozenset({Phase.SHELL_RUNNING, Phase.STOPPING, Phase.ENDED}),
        Phase.STOPPING: frozenset({Phase.ENDED}),
        Phase.ENDED: frozenset(),
    },
    # The supervisor's view of each phase; None: nothing to report (ENDED is reported by ChildExited).
    child_states={
        Phase.STARTING: ChildState.STARTING,
        Phase.SHELL_RUNNING: ChildState.RUNNING,
        # A user's `exit` is routine: the terminal stays RUNNING while its shell restarts (`shell_state` tells).
        Phase.SHELL_ENDING: ChildState.RUNNING,
        Phase.RESPAWN_WAIT: ChildState.RUNNING,
        Phase.STOPPING: ChildState.STOPPING,
        Phase.ENDED: None,
    },
)


def default_shell_argv(env: Mapping[str, str]) -> list[str]:
    """$SHELL split shell-style, or /bin/bash (docs/protocol.md §8.3)."""
    try:
        argv = shlex.split(env.get("SHELL") or DEFAULT_SHELL)
    except ValueError:
        argv = []
    return argv or [DEFAULT_SHELL]


class TerminalPorts:
    """The ports the terminal sockets really bound (port 0 picks one), kept across incarnations of the actor."""

    def __init__(self, term_in: int, term_out: int) -> None:
        self.term_in = term_in
        self.term_out = term_out


@attrs.frozen(kw_only=True)
class TerminalSettings:
    """The terminal child's configuration (runtime/tree.py makes its spec): `shell_argv` overrides $SHELL; the rest are
    the actor's own bounds (git deadline, graph size, shell respawn backoff and quick-exit limit)."""

    shell_argv: Sequence[str] | None = None
    git_timeout_s: float = GIT_TIMEOUT_S
    max_graph_commits: int = MAX_GRAPH_COMMITS
    shell_backoff: Backoff = SHELL_BACKOFF
    max_quick_exits: int = MAX_QUICK_EXITS


# ---- the actor --------------------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class _Shell:
    shell_id: int
    handle: ProcessHandle
    master_fd: int | None
    reader: PtyReader
    started_at: float
    exited: ProcessExited | None = None
    pty_closed: bool = False


class TerminalActor(PhasedActor[Phase]):
    """A pty shell published over PUB/SUB, restarted when it exits; `code` ops are `%` commands (docs/protocol.md §8.3)."""

    redeliverable = (RunTask,)
    lifecycle = LIFECYCLE

    def __init__(
        self,
        *,
        ctx: ChildContext,
        runner: RunnerContext,
        ports: TerminalPorts,
        settings: TerminalSettings,
        zmq_context: zmq.Context[Any] | None = None,
    ) -> None:
        super().__init__(ctx=ctx)
        self._runner = runner
        self._ports = ports
        self._zmq = zmq_context or zmq.Context.instance()
        # docs/protocol.md §1.4: the pty shell gets the runner's own environment (with environ.txt), not the batch child env.
        self._env: dict[str, str] = dict(runner.runner_env or os.environ)
        self._env.setdefault("TERM", "xterm")
        self._shell_argv = list(settings.shell_argv) if settings.shell_argv else default_shell_argv(self._env)
        self._shell_backoff = settings.shell_backoff
        self._max_quick_exits = settings.max_quick_exits
        self._pub: zmq.Socket[bytes] | None = None
        self._receiver: TermInputReceiver | None = None
        self._shell: _Shell | None = None
        self._shell_seq = 0
        self._shell_restarts = 0
        self._quick_exits = 0
        self._size = DEFAULT_SIZE
        self._pending_input = bytearray()
        self._input_flush_scheduled = False
        self._input_flush_attempt = 0
        self._output_credits = Credits(OUTPUT_CREDITS)
        self._input_credits = Credits(INPUT_CREDITS)
        self._commands = CommandRunner(
            runner=runner, owner=self.actor_ref, env=self._env, log=self.log, tell_child=self.tell_child,
            resize_pty=self._resize_pty, shell_cwd=self._shell_cwd, git_timeout_s=settings.git_timeout_s,
            max_graph_commits=settings.max_graph_commits)
        self._stop_snapshot: list[psutil.Process] = []
        self._rng = random.Random()

    @property
    def accepting_input(self) -> bool:
        """Typed input reaches the pty only while a shell runs (docs/protocol.md §8.3: not while restarting)."""
        return self.phase is Phase.SHELL_RUNNING

    def reported_pid(self) -> int | None:
        """A new shell brings a new pid to the supervisor; between shells there is none to show."""
        shell = self._shell
        return shell.handle.pid if self.phase is Phase.SHELL_RUNNING and shell else None

    def _end_life(self, reason: ExitReason, why: str) -> None:
        """-> ENDED, then end this incarnation with `reason` (the supervisor decides what follows)."""
        self.to_phase(Phase.ENDED, why)
        self.finish(reason)

    # ---- life ----------------------------------------------------------------------------------------------------
    def start_child(self) -> None:
        self._bind_sockets()
        shell = self._spawn_shell()
        self.to_phase(Phase.SHELL_RUNNING, f"shell {shell.handle.pid} spawned")  # STARTING -> SHELL_RUNNING
        self._report_info()

    def _bind_sockets(self) -> None:
        bind = self._runner.config.bind
        pub: zmq.Socket[bytes] = self._zmq.socket(zmq.PUB)
        self._pub = pub
        pub.setsockopt(zmq.LINGER, PUB_LINGER_MS)
        self._ports.term_out = bind_socket(pub, bind, self._ports.term_out)
        receiver = TermInputReceiver(
            context=self._zmq, bind=bind, port=self._ports.term_in, owner=self.actor_ref, credits=self._input_credits
        )
        self._receiver = receiver
        receiver.start()
        self._ports.term_in = receiver.bound.result(timeout=BIND_TIMEOUT_S)
        self.log.info("listening: terminal SUB :{} PUB :{}", self._ports.term_in, self._ports.term_out)

    def _spawn_shell(self) -> _Shell:
        argv = self._shell_argv
        if shutil.which(argv[0], path=self._env.get("PATH")) is None:
            raise FileNotFoundError(f"the shell {argv[0]!r} is not an executable file")
        work_dir = self._runner.config.work_dir
        cwd = work_dir if work_dir.is_dir() else None
        if cwd is None:
            self.log.warning("work dir {} does not exist; the shell starts in the runner's folder", work_dir)
        master, slave = os.openpty()
        reader_fd = -1
        try:
            reader_fd = os.dup(master)  # the PtyReader's own fd: it reads and closes it, the actor never touches it
            os.set_blocking(master, False)  # input writes never block the actor; the reader polls before reading
            set_winsize(master, *self._size)
            handle = ProcessHandle.spawn(
                [sys.executable, "-I", "-S", "-c", CTTY_SHIM, *argv],
                env=self._env,
                cwd=cwd,
                stdin=slave,
                stdout=slave,
                stderr=slave,
            )
        except BaseException:
            os.close(master)
            if reader_fd >= 0:
                os.close(reader_fd)
            raise
        finally:
            os.close(slave)
        self._shell_seq += 1
        reader = PtyReader(fd=reader_fd, shell_id=self._shell_seq, owner=self.actor_ref, credits=self._output_credits)
        shell = _Shell(
            shell_id=self._shell_seq,
            handle=handle,
            master_fd=master,
            reader=reader,
            started_at=self.ctx.clock.monotonic(),
        )
        self._shell = shell
        reader.start()
        watch_process(handle, self.actor_ref, clock=self.ctx.clock)
        self.log.bind(pid=handle.pid).info("spawned argv={} cwd={} size={}x{}", argv, cwd, *self._size)
        return shell

    def request_stop(self, message: StopRequested) -> None:
        """SIGHUP (then SIGCONT) to the shell's group, SIGTERM at half the grace, SIGKILL to the tree at the end."""
        if self.phase is Phase.STOPPING:
            debug(self.log, "stop requested again ({}); the stop in progress goes on", message.reason)
            return
        self.to_phase(Phase.STOPPING, message.reason)  # SHELL_RUNNING / SHELL_ENDING / RESPAWN_WAIT -> STOPPING
        shell = self._shell
        if shell is None or shell.exited is not None:
            self._end_life(ShutdownExit(), "no shell left to stop")  # STOPPING -> ENDED
            return
        self._stop_snapshot = shell.handle.descendants()
        # The supervisor's `stopping` event says that it stops and why (logged once); this line says how.
        self.log.info("SIGHUP to the shell's process group")
        # A hangup first, as a closing terminal would (SIGCONT wakes a stopped job so it sees it), then TERM, then KILL.
        steps = (StopStep((signal.SIGHUP, signal.SIGCONT), message.grace_s / 2),
                 StopStep((signal.SIGTERM,), message.grace_s / 2))
        stop_process(shell.handle, steps, log=self.log, what="the shell")

    def cleanup(self) -> None:
        if self.phase is not Phase.ENDED:
            # any phase -> ENDED: a failed start, a crash, or the actor stopped from outside
            self.to_phase(Phase.ENDED, "cleanup")
        if self._receiver is not None:
            self._receiver.stopping.set()
            self._receiver.join(timeout=JOIN_TIMEOUT_S)
        shell, self._shell = self._shell, None
        if shell is not None:
            self._kill_shell(shell)
        self._commands.close(JOIN_TIMEOUT_S)
        if self._pub is not None:
            self._publish(TERMINATED_BANNER)
            self._pub.close(linger=PUB_LINGER_MS)
            self._pub = None

    def _kill_shell(self, shell: _Shell) -> None:
        stragglers = [*self._stop_snapshot, *shell.handle.descendants()]
        shell.handle.kill_tree()
        for proc in stragglers:
            try:
                proc.kill()
            except psutil.Error:
                pass
        try:
            shell.handle.popen.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.log.error("the shell {} did not die within {:.1f}s of SIGKILL", shell.handle.pid, REAP_TIMEOUT_S)
        shell.reader.stopping.set()
        shell.reader.join(timeout=JOIN_TIMEOUT_S)
        self._close_master(shell)

    # ---- dispatch ------------------------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._commands.push(message)
            case TerminalInput():
                return self._handle_terminal_input(message)
            case PtyOutput():
                return self._handle_pty_output(message)
            case PtyClosed():
                return self._handle_pty_closed(message)
            case ProcessExited():
                return self._handle_process_exited(message)
            case ShellRespawnDue():
                return self._handle_shell_respawn_due(message)
            case TerminalInputFlushDue():
                return self._handle_terminal_input_flush_due()
            case GitGraphDone():
                return self._commands.git_graph_done(message)
            case TermInputReceiverDied():
                return self._handle_term_input_receiver_died(message)
            case _:
                return super().handle(message)

    # ---- the pty and the sockets ---------------------------------------------------------------------------------
    def _publish(self, data: bytes) -> None:
        if self._pub is None:
            return
        try:
            self._pub.send(data, zmq.NOBLOCK)
        except zmq.Again:
            debug(self.log, "terminal output dropped ({} bytes): PUB queue full", len(data))
        except zmq.ZMQError as exc:
            self.log.warning("terminal output dropped ({} bytes): {}", len(data), exc)

    def _handle_pty_output(self, message: PtyOutput) -> None:
        try:
            self._publish(message.data)
        finally:
            self._output_credits.give()

    def _handle_terminal_input(self, message: TerminalInput) -> None:
        try:
            if not self.accepting_input:
                # docs/protocol.md §8.3: input is taken only while a shell is accepting it (not while restarting).
                debug(self.log, "terminal input dropped ({} bytes): no shell is running", len(message.data))
                return
            if len(self._pending_input) + len(message.data) > PENDING_INPUT_LIMIT:
                self.log.warning("terminal input dropped ({} bytes): the shell is not reading", len(message.data))
                return
            self._pending_input.extend(message.data)
            self._flush_input()
        finally:
            self._input_credits.give()

    def _flush_input(self) -> None:
        shell = self._shell
        if shell is None or shell.master_fd is None:
            self._pending_input.clear()
            return
        while self._pending_input:
            try:
                written = os.write(shell.master_fd, self._pending_input)
            except BlockingIOError:
                self._schedule_input_flush()
                return
            except OSError as exc:
                self.log.warning("writing {} bytes to the pty failed: {}", len(self._pending_input), exc)
                self._pending_input.clear()
                return
            del self._pending_input[:written]
        self._input_flush_attempt = 0

    def _schedule_input_flush(self) -> None:
        if self._input_flush_scheduled:
            return
        self._input_flush_scheduled = True
        delay = INPUT_RETRY_S[min(self._input_flush_attempt, len(INPUT_RETRY_S) - 1)]
        self._input_flush_attempt += 1
        self.schedule(delay, TerminalInputFlushDue())

    def _handle_term_input_receiver_died(self, message: TermInputReceiverDied) -> None:
        """Without its receiver the terminal takes no input: this incarnation ends, and the supervisor decides."""
        if self.phase in (Phase.STOPPING, Phase.ENDED):
            return
        self.log.error("the terminal input receiver died ({}); ending this incarnation", message.error)
        self._end_life(Crashed(error=f"terminal input receiver died: {message.error}"), "input receiver died")

    def _handle_terminal_input_flush_due(self) -> None:
        self._input_flush_scheduled = False
        self._flush_input()

    def _close_master(self, shell: _Shell) -> None:
        if shell.master_fd is not None:
            os.close(shell.master_fd)
            shell.master_fd = None

    # ---- shell exits and restarts ------------------------------------------------------------------------------
    def _handle_process_exited(self, message: ProcessExited) -> None:
        shell = self._shell
        if shell is None or message.pid != shell.handle.pid:
            debug(self.log, "stale exit of pid {}", message.pid)
            return
        shell.exited = message
        code, sig = describe_returncode(message.returncode)
        self.log.bind(pid=message.pid).info(
            "exited code={} signal={} after {:.1f}s", code, sig, message.at - shell.started_at
        )
        if self.phase is Phase.STOPPING:
            self._end_life(ShutdownExit(), "the shell exited")  # STOPPING -> ENDED
            return
        if self.phase is Phase.SHELL_RUNNING:
            self.to_phase(Phase.SHELL_ENDING, "the shell exited")  # SHELL_RUNNING -> SHELL_ENDING
        # Hang up what the shell left in its own process group, as a terminal hangup would.
        shell.handle.signal_group(signal.SIGHUP)
        shell.reader.drain()
        if shell.pty_closed:
            self._shell_gone(shell)

    def _handle_pty_closed(self, message: PtyClosed) -> None:
        shell = self._shell
        if shell is None or message.shell_id != shell.shell_id:
            return
        shell.pty_closed = True
        if shell.exited is not None:
            self._shell_gone(shell)
        elif self.phase is Phase.SHELL_RUNNING:
            # Nobody reads this pty any more, so the terminal is useless: end the shell; its exit restarts it.
            self.to_phase(Phase.SHELL_ENDING, "the pty closed")  # SHELL_RUNNING -> SHELL_ENDING
            self.log.warning("the pty closed while the shell {} runs; killing it so it restarts", shell.handle.pid)
            shell.handle.kill_tree()

    def _shell_gone(self, shell: _Shell) -> None:
        """Both the exit and the end of the pty output are in: publish the banner and schedule the next shell."""
        assert shell.exited is not None
        self._shell = None
        self._close_master(shell)
        self._pending_input.clear()
        lived = shell.exited.at - shell.started_at
        self._quick_exits = self._quick_exits + 1 if lived < QUICK_EXIT_S else 0
        if self._quick_exits >= self._max_quick_exits:
            code, sig = describe_returncode(shell.exited.returncode)
            self.log.error(
                "the shell exited within {:.0f}s of starting {} times in a row; leaving it to the supervisor",
                QUICK_EXIT_S,
                self._quick_exits,
            )
            self._end_life(ProcessDied(code=code, signal=sig), "the shell keeps dying")  # SHELL_ENDING -> ENDED
            return
        delay = self._shell_backoff.delay(self._quick_exits, self._rng)
        self.to_phase(Phase.RESPAWN_WAIT, f"next shell in {delay:.2f}s")  # SHELL_ENDING -> RESPAWN_WAIT
        self._publish(RESTARTING_BANNER)
        self.log.warning("shell exited; restart-scheduled in {:.2f}s", delay)
        self._report_info()
        self.schedule(delay, ShellRespawnDue(after_shell_id=shell.shell_id))

    def _handle_shell_respawn_due(self, message: ShellRespawnDue) -> None:
        if self.phase is not Phase.RESPAWN_WAIT or message.after_shell_id != self._shell_seq:
            return
        try:
            shell = self._spawn_shell()
        except (OSError, ValueError) as exc:
            self.log.error("cannot restart the shell: {!r}", exc)
            self._end_life(StartFailed(error=repr(exc)), "cannot restart the shell")  # RESPAWN_WAIT -> ENDED
            return
        self._shell_restarts += 1
        self.to_phase(Phase.SHELL_RUNNING, f"shell {shell.handle.pid} spawned")  # RESPAWN_WAIT -> SHELL_RUNNING
        self._report_info()

    def _report_info(self) -> None:
        shell = self._shell
        self.update_info(
            {
                "term_in_port": self._ports.term_in,
                "term_out_port": self._ports.term_out,
                "shell_pid": shell.handle.pid if shell is not None else None,
                "shell_state": "restarting" if self.phase is Phase.RESPAWN_WAIT else "running",
                "shell_restarts": self._shell_restarts,
                "rows": self._size[0],
                "cols": self._size[1],
            }
        )

    # ---- code ops: `%` commands (CommandRunner) ------------------------------------------------------------------
    def _resize_pty(self, rows: int, cols: int) -> None:
        # The size is kept: it also applies to shells started later (upstream: a no-op without a pty).
        self._size = (rows, cols)
        shell = self._shell
        if shell is not None and shell.master_fd is not None:
            set_winsize(shell.master_fd, rows, cols)
        self.log.info("resized to {}x{}", rows, cols)
        self._report_info()

    def _shell_cwd(self) -> Path:
        shell = self._shell
        if shell is not None:
            try:
                return Path(os.readlink(f"/proc/{shell.handle.pid}/cwd"))
            except OSError:
                pass
        return self._runner.config.work_dir


__all__ = [
    "LIFECYCLE",
    "Phase",
    "TerminalActor",
    "TerminalPorts",
    "TerminalSettings",
    "default_shell_argv",
]
