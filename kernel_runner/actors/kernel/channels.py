"""KernelStarter and KernelChannels: the threads that start one Jupyter kernel and carry its traffic for KernelActor.

Threads and what they own:

* ``KernelStarter`` (one per incarnation): looks the kernelspec up, writes the connection file, spawns the kernel in
  its own session and tells the actor ``KernelLaunched``. It never touches a socket.
* ``KernelChannels`` (the IOPub pump): creates, uses and closes every ZeroMQ socket to the kernel (shell, iopub,
  stdin, control, hb: its KernelConnection, connection.py). It waits for readiness (``KernelReady``), sends what the
  actor asks for through a command queue woken by a pipe, and maps IOPub/stdin traffic to agent messages. Outputs go
  straight to the router (credited, split into records of at most 1 MiB); the run's end goes to the actor as
  ``KernelRunEnded`` *after* its outputs, so the actor's single ``Finished`` always comes last. It also pings the
  kernel's heartbeat channel and tells the actor ``KernelHeartbeatLost`` when the kernel stops echoing
  (heartbeat.py; docs/protocol.md §4.7).

A message that makes a handler fail is logged (with a bounded prefix) and skipped; the thread goes on. If the thread
ends anyway, whatever the cause, the actor hears ``KernelChannelsClosed`` (or the start failure) and ends its
incarnation, so the supervisor restarts the kernel.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pykka
import zmq

from kernel_runner.actors.kernel.connection import KernelConnection
from kernel_runner.actors.kernel.heartbeat import KernelHeartbeat
from kernel_runner.actors.kernel.jupyter import (
    HEARTBEAT_IDLE_INTERVAL_S,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TIMEOUT_S,
    NO_KERNEL_EXIT,
    KernelSpecError,
    exit_code_from_reply,
    fill_template,
    find_kernelspec,
    iter_records,
    kernel_argv,
    map_display,
)
from kernel_runner.excerpts import excerpt
from kernel_runner.ids import RunId
from kernel_runner.messages import (
    KernelChannelsClosed,
    KernelCompletion,
    KernelInputRequested,
    KernelLaunched,
    KernelReady,
    KernelRunEnded,
    KernelStartFailed,
    StreamName,
)
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.process import ProcessHandle
from kernel_runner.procs.wakeup import WakeupPipe
from kernel_runner.supervision.refs import tell_if_alive
from kernel_runner.wire.outbox import RouterLink

# ---- knobs (docs/architecture.md §4; docs/protocol.md §4) -----------------------------------------------------------
READY_TIMEOUT_S = 30.0  # upstream waits 10 s; a cold ipykernel on a loaded machine can need more
KERNEL_INFO_RETRY_S = 0.25
# After execute_reply, how long IOPub may lag before the run ends without its idle status (and vice versa).
END_GRACE_S = 2.0
MAX_MESSAGES_PER_WAKE = 256
IDLE_POLL_MS = 60_000  # nothing to time while idle but the heartbeat, which sets its own (shorter) deadline


@attrs.frozen(kw_only=True)
class KernelHeartbeatLost:
    """The kernel left a heartbeat ping unanswered for `silent_s` (docs/protocol.md §4.7): it is stopped or hung."""

    silent_s: float


# ======================================================================================================================
# Commands the actor queues for the channel thread
# ======================================================================================================================


@attrs.frozen(kw_only=True)
class ExecuteCommand:
    run_id: RunId
    code: str
    # A stderr line the run starts with (the kernel was restarted since the last run: docs/protocol.md §4.2).
    notice: str | None = None


@attrs.frozen(kw_only=True)
class SendInputCommand:
    run_id: RunId
    value: str


@attrs.frozen(kw_only=True)
class SendInterruptCommand:
    pass


@attrs.frozen(kw_only=True)
class CompleteCommand:
    request_id: int
    code: str
    cursor_pos: int


@attrs.frozen(kw_only=True)
class RequestShutdownCommand:
    pass


@attrs.frozen(kw_only=True)
class EndRunCommand:
    """The kernel died: flush what IOPub still holds for the run, add `note` on stderr, then report the end."""

    run_id: RunId
    exit_code: int
    note: str


_Command = ExecuteCommand | SendInputCommand | SendInterruptCommand | CompleteCommand | RequestShutdownCommand | EndRunCommand


# ======================================================================================================================
# KernelStarter: kernelspec → connection file → process
# ======================================================================================================================


class LaunchBox:
    """What the starter thread and the actor share: the process handle, guarded so cleanup never misses a spawn."""

    def __init__(self, directory: Path) -> None:
        self.lock = threading.Lock()
        self.directory = directory
        self.closing = False
        self.handle: ProcessHandle | None = None
        self.connection: dict[str, Any] | None = None
        self.connection_file: Path | None = None


class KernelStarter(threading.Thread):
    """Finds the kernelspec and spawns the kernel in its own session; the actor thread never waits for it."""

    def __init__(
        self,
        *,
        kernel_name: str,
        box: LaunchBox,
        env: Mapping[str, str],
        cwd: Path | None,
        owner: pykka.ActorRef[Any],
    ) -> None:
        super().__init__(name=f"KernelStarter-{kernel_name}", daemon=True)
        self._kernel_name = kernel_name
        self._box = box
        self._env = env
        self._cwd = cwd
        self._owner = owner

    def run(self) -> None:
        # Whatever ends this thread, the actor hears how the start went (it would wait in LAUNCHING for ever).
        message: object = KernelStartFailed(error=f"the {self._kernel_name} kernel starter thread ended unexpectedly")
        try:
            message = self._launch()
        except KernelSpecError as exc:
            message = KernelStartFailed(error=str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message, never a dead thread
            message = KernelStartFailed(error=f"the {self._kernel_name} kernel could not be started: {exc!r}")
        finally:
            if message is not None:
                tell_if_alive(self._owner, message)

    def _launch(self) -> KernelLaunched | None:
        from jupyter_client.connect import write_connection_file

        spec = find_kernelspec(self._kernel_name)
        box = self._box
        with box.lock:
            if box.closing:
                return None
            # ipc sockets live in our private 0700 directory: no TCP port races, nothing reachable from outside.
            connection_file = box.directory / "kernel.json"
            _, info = write_connection_file(
                str(connection_file),
                ip=str(box.directory / "kernel"),
                transport="ipc",
                key=uuid.uuid4().hex.encode("ascii"),
                signature_scheme="hmac-sha256",
                kernel_name=spec.name,
            )
            env = dict(self._env)
            env.update({k: fill_template(v, {"resource_dir": spec.resource_dir}) for k, v in spec.env.items()})
            # ipykernel exits by itself when this pid goes away, so even a crashed runner leaves no kernel behind.
            env["JPY_PARENT_PID"] = str(os.getpid())
            handle = ProcessHandle.spawn(
                kernel_argv(spec, str(connection_file)),
                env=env,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            box.handle = handle
            box.connection = dict(info)
            box.connection_file = connection_file
        return KernelLaunched(
            pid=handle.pid,
            kernel_name=spec.name,
            connection_file=str(connection_file),
            interrupt_mode=spec.interrupt_mode,
        )


# ======================================================================================================================
# KernelChannels: every socket to the kernel, and the IOPub → agent mapping
# ======================================================================================================================


@attrs.define(kw_only=True)
class _Execution:
    run_id: RunId
    msg_id: str
    reply: dict[str, Any] | None = None
    idle: bool = False
    half_done_at: float | None = None


class KernelChannels(threading.Thread):
    """Owns the kernel's sockets from creation to close; the actor talks to it only through `submit`/`close`."""

    def __init__(
        self,
        *,
        connection: Mapping[str, Any],
        owner: pykka.ActorRef[Any],
        router: RouterLink,
        run_done: Callable[[RunId, int], None],
        pid: int,
        ready_timeout_s: float = READY_TIMEOUT_S,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        heartbeat_idle_interval_s: float = HEARTBEAT_IDLE_INTERVAL_S,
        log: Any,
    ) -> None:
        super().__init__(name=f"KernelChannels-{pid}", daemon=True)
        self._owner = owner
        self._router = router
        self._run_done = run_done
        self._ready_timeout_s = ready_timeout_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeat_idle_interval_s = heartbeat_idle_interval_s
        self._heartbeat: KernelHeartbeat | None = None  # None: not watched (before ready, or once lost)
        self._log = log
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._wakeup = WakeupPipe()
        self._conn = KernelConnection(connection, log)
        self._execution: _Execution | None = None
        self._input_parent: dict[str, Any] | None = None
        self._completions: dict[str, int] = {}

    # ---- called from the actor thread ----------------------------------------------------------------
    def submit(self, command: _Command) -> None:
        self._commands.put(command)
        self._wakeup.wake()

    def close(self) -> None:
        self._stopping.set()
        self._wakeup.wake()

    # ---- the thread ------------------------------------------------------------------------------------
    def run(self) -> None:
        ended_as_planned = False
        try:
            self._conn.open()
            if self._handshake():
                self._loop()
            ended_as_planned = True  # stopping, or the handshake told the actor why it failed
        except Exception as exc:  # noqa: BLE001 - tell the owner; it decides (restart) and cleans up
            self._log.opt(exception=exc).error("kernel channels failed: {!r}", exc)
            self._tell(KernelChannelsClosed(error=repr(exc)))
            ended_as_planned = True
        finally:
            if not ended_as_planned:  # something no handler could catch: the actor must still hear of it
                self._log.error("the kernel channel thread ended unexpectedly")
                self._tell(KernelChannelsClosed(error="the channel thread ended unexpectedly"))
            self._conn.close()
            self._wakeup.close()

    def _tell(self, message: object) -> None:
        tell_if_alive(self._owner, message)

    def _run_ended(self, run_id: RunId, exit_code: int) -> None:
        """After the run's last output: the language runner hears it first (it sends the one Finished, one hop
        sooner than through the actor), then the actor, which moves on to the next cell."""
        self._run_done(run_id, exit_code)
        self._tell(KernelRunEnded(run_id=run_id, exit_code=exit_code))

    def _handshake(self) -> bool:
        """Ready = a kernel_info_reply on shell and any message on IOPub (so no early output is lost)."""
        deadline = time.monotonic() + self._ready_timeout_s
        got_reply: dict[str, Any] | None = None
        got_iopub = False
        monitor = self._conn.stdin_monitor
        got_stdin = monitor is None
        last_sent = float("-inf")
        poller = zmq.Poller()
        poller.register(self._conn.sockets["shell"], zmq.POLLIN)
        poller.register(self._conn.sockets["iopub"], zmq.POLLIN)
        poller.register(self._wakeup.fd, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        while not self._stopping.is_set():
            if got_reply is not None and got_iopub and got_stdin:
                self._conn.close_stdin_monitor()
                self._heartbeat = KernelHeartbeat(
                    self._conn.sockets["hb"], implementation=str(got_reply.get("implementation", "")),
                    interval_s=self._heartbeat_interval_s, timeout_s=self._heartbeat_timeout_s,
                    idle_interval_s=self._heartbeat_idle_interval_s, log=self._log)
                language = got_reply.get("language_info", {}).get("name", "")
                self._tell(
                    KernelReady(
                        implementation=str(got_reply.get("implementation", "")),
                        protocol_version=str(got_reply.get("protocol_version", "")),
                        language=str(language),
                    )
                )
                return True
            now = time.monotonic()
            if now >= deadline:
                self._tell(KernelStartFailed(error=f"the kernel did not become ready within {self._ready_timeout_s:g} s"))
                return False
            if now - last_sent >= KERNEL_INFO_RETRY_S:
                self._conn.send("shell", "kernel_info_request", {})
                last_sent = now
            events = dict(poller.poll(int(min(KERNEL_INFO_RETRY_S, deadline - now) * 1000) + 1))
            if self._wakeup.fd in events:
                self._wakeup.drain()
            while (msg := self._conn.recv("shell")) is not None:
                if msg.get("msg_type") == "kernel_info_reply":
                    got_reply = dict(msg.get("content", {}))
            while (msg := self._conn.recv("iopub")) is not None:
                got_iopub = True
            if monitor is not None and monitor in events:
                got_stdin = self._conn.stdin_handshake_seen() or got_stdin
        return False

    def _loop(self) -> None:
        poller = zmq.Poller()
        for channel in ("iopub", "shell", "stdin", "control", "hb"):
            poller.register(self._conn.sockets[channel], zmq.POLLIN)
        poller.register(self._wakeup.fd, zmq.POLLIN)
        handlers: tuple[tuple[str, Callable[[dict[str, Any]], None]], ...] = (
            # IOPub first: outputs of a run come before its end, which needs both reply and idle.
            ("iopub", self._on_iopub), ("shell", self._on_shell), ("stdin", self._on_stdin), ("control", _ignore),
        )
        while not self._stopping.is_set():
            events = dict(poller.poll(self._poll_timeout_ms()))
            if self._wakeup.fd in events:
                self._wakeup.drain()
            self._run_commands()
            for channel, handler in handlers:
                if self._conn.sockets[channel] in events:  # a socket with nothing to read costs a raised zmq.Again
                    self._drain(channel, handler)
            self._check_run_end()
            self._beat()

    def _poll_timeout_ms(self) -> int:
        deadlines = []
        execution = self._execution
        if execution is not None and execution.half_done_at is not None:
            deadlines.append(execution.half_done_at + END_GRACE_S)
        heartbeat = self._heartbeat
        if heartbeat is not None and not heartbeat.paused(busy=execution is not None):
            deadlines.append(heartbeat.next_due())
        if not deadlines:
            return IDLE_POLL_MS
        return max(1, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _drain(self, channel: str, handler: Callable[[dict[str, Any]], None]) -> None:
        for _ in range(MAX_MESSAGES_PER_WAKE):
            msg = self._conn.recv(channel)
            if msg is None:
                return
            if msg:
                self._handle_message(channel, handler, msg)

    def _handle_message(self, channel: str, handler: Callable[[dict[str, Any]], None], msg: dict[str, Any]) -> None:
        """One message; a handler that fails on it costs that message only (logged), never the channel thread."""
        try:
            handler(msg)
        except Exception as exc:  # noqa: BLE001 - logged with a bounded prefix, and the thread goes on
            self._log.opt(exception=exc).error(
                "a {} {} message could not be handled: {!r}; skipped; its content starts {}",
                channel, msg.get("msg_type"), exc, excerpt(repr(msg.get("content"))),
            )

    # ---- the heartbeat (docs/protocol.md §4.7) -------------------------------------------------------------
    def _beat(self) -> None:
        heartbeat = self._heartbeat
        if heartbeat is None:
            return
        silent_s = heartbeat.beat(busy=self._execution is not None)
        if silent_s is not None:
            self._heartbeat = None  # told once; the actor kills the kernel
            debug(self._log, "no heartbeat echo for {:.1f} s; telling the actor", silent_s)
            self._tell(KernelHeartbeatLost(silent_s=silent_s))

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            match command:
                case ExecuteCommand():
                    self._execute(command)
                case SendInputCommand():
                    self._send_input(command)
                case SendInterruptCommand():
                    self._conn.send("control", "interrupt_request", {})
                    self._log.info("interrupt: sent interrupt_request (kernelspec interrupt_mode=message)")
                case CompleteCommand():
                    msg_id = self._conn.send("shell", "complete_request",
                                             {"code": command.code, "cursor_pos": command.cursor_pos})
                    self._completions[msg_id] = command.request_id
                case RequestShutdownCommand():
                    self._conn.send("control", "shutdown_request", {"restart": False})
                case EndRunCommand():
                    self._end_dead_run(command)

    def _execute(self, command: ExecuteCommand) -> None:
        if self._execution is not None:
            self._log.error("run {} asked to start while run {} runs; refused", command.run_id, self._execution.run_id)
            self._run_ended(command.run_id, NO_KERNEL_EXIT)
            return
        content = {
            "code": command.code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": True,
            "stop_on_error": True,
        }
        msg_id = self._conn.send("shell", "execute_request", content)
        self._execution = _Execution(run_id=command.run_id, msg_id=msg_id)
        if command.notice:
            self._emit("stderr", command.notice)
        if self._heartbeat is not None:
            self._heartbeat.run_started()
        self._input_parent = None

    def _send_input(self, command: SendInputCommand) -> None:
        execution = self._execution
        if execution is None or execution.run_id != command.run_id or self._input_parent is None:
            self._log.info("input for run {} dropped: the kernel is not waiting for it", command.run_id)
            return
        self._conn.send("stdin", "input_reply", {"value": command.value}, parent=self._input_parent)
        self._input_parent = None

    # ---- inbound ------------------------------------------------------------------------------------------
    def _is_current(self, msg: Mapping[str, Any]) -> bool:
        execution = self._execution
        return execution is not None and msg.get("parent_header", {}).get("msg_id") == execution.msg_id

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        if not self._is_current(msg):
            return
        assert self._execution is not None
        msg_type = msg.get("msg_type")
        content = msg.get("content", {})
        match msg_type:
            case "stream":
                stream: StreamName = "stderr" if content.get("name") == "stderr" else "stdout"
                self._emit(stream, str(content.get("text", "")))
            case "error":
                # docs/protocol.md §4.3: the traceback lines joined by newlines, ANSI colours kept, no trailing newline.
                self._emit("stderr", "\n".join(str(line) for line in content.get("traceback", [])))
            case "execute_result" | "display_data":
                self._emit_display(content.get("data") or {})
            case "status" if content.get("execution_state") == "idle":
                self._execution.idle = True
                self._mark_half_done()
            case _:
                pass  # execute_input, busy, clear_output, update_display_data: nothing for the agent

    def _on_shell(self, msg: dict[str, Any]) -> None:
        msg_type = msg.get("msg_type")
        parent_id = msg.get("parent_header", {}).get("msg_id")
        if msg_type == "complete_reply":
            request_id = self._completions.pop(str(parent_id), None)
            if request_id is None:
                return
            content = msg.get("content", {})
            matches = content.get("matches", []) if content.get("status") == "ok" else []
            self._tell(KernelCompletion(request_id=request_id, matches=tuple(str(m) for m in matches)))
            return
        if msg_type == "execute_reply" and self._is_current(msg):
            assert self._execution is not None
            self._execution.reply = dict(msg.get("content", {}))
            self._mark_half_done()

    def _on_stdin(self, msg: dict[str, Any]) -> None:
        if msg.get("msg_type") != "input_request":
            return
        content = msg.get("content", {})
        if not self._is_current(msg):
            # Nobody can answer it; an empty reply keeps the kernel from waiting for ever.
            self._log.warning("input_request outside the current run answered with an empty line")
            self._conn.send("stdin", "input_reply", {"value": ""}, parent=msg)
            return
        assert self._execution is not None
        prompt = str(content.get("prompt", ""))
        if prompt:
            self._emit("stdout", prompt)
        self._input_parent = msg
        self._tell(KernelInputRequested(run_id=self._execution.run_id, is_password=bool(content.get("password"))))

    def _mark_half_done(self) -> None:
        execution = self._execution
        if execution is not None and execution.half_done_at is None:
            execution.half_done_at = time.monotonic()

    def _check_run_end(self) -> None:
        execution = self._execution
        if execution is None or execution.half_done_at is None:
            return
        if execution.reply is not None and execution.idle:
            self._finish_execution(exit_code_from_reply(execution.reply))
            return
        if time.monotonic() - execution.half_done_at >= END_GRACE_S:
            missing = "idle status" if execution.reply is not None else "execute_reply"
            self._log.warning("run {}: no {} within {:g} s; ending the run", execution.run_id, missing, END_GRACE_S)
            self._finish_execution(exit_code_from_reply(execution.reply))

    def _finish_execution(self, exit_code: int) -> None:
        execution = self._execution
        if execution is None:
            return
        self._execution = None
        self._input_parent = None
        self._run_ended(execution.run_id, exit_code)

    def _end_dead_run(self, command: EndRunCommand) -> None:
        execution = self._execution
        if execution is None or execution.run_id != command.run_id:
            self._run_ended(command.run_id, command.exit_code)
            return
        self._drain("iopub", self._on_iopub)
        if command.note:
            self._emit("stderr", command.note)
        self._execution = None
        self._input_parent = None
        self._run_ended(command.run_id, command.exit_code)

    # ---- outbound to the agent ----------------------------------------------------------------------------
    def _emit(self, stream: StreamName, text: str) -> None:
        for record in iter_records(text):
            self._router.send_output(stream, record)

    def _emit_display(self, data: Mapping[str, Any]) -> None:
        mapped = map_display(data)
        if mapped is None:
            return
        if isinstance(mapped, str):
            self._emit("stdout", mapped)
        else:
            self._router.tell(mapped)


def _ignore(_msg: dict[str, Any]) -> None:
    """Control replies (shutdown, interrupt) carry nothing the runner acts on."""


__all__ = [
    "KernelChannels",
    "KernelHeartbeatLost",
    "KernelStarter",
    "LaunchBox",
]
