"""KernelActor: one Jupyter kernel process as a supervised child, and the threads that talk to it (spec §4).

Threads and what they own:

* ``KernelStarter`` (one per incarnation): looks the kernelspec up, writes the connection file, spawns the kernel in
  its own session and tells the actor ``KernelLaunched``. It never touches a socket.
* ``KernelChannels`` (the IOPub pump): creates, uses and closes every ZeroMQ socket to the kernel (shell, iopub,
  stdin, control). It waits for readiness (``KernelReady``), sends what the actor asks for through a command queue
  woken by a pipe, and maps IOPub/stdin traffic to agent messages. Outputs go straight to the router (credited,
  split into records of at most 1 MiB); the run's end goes to the actor as ``KernelRunEnded`` *after* its outputs,
  so the actor's single ``Finished`` always comes last.
* ``ExitWatcher`` and ``PipePump`` from procs.py: the kernel's exit, and its own log lines (into our log).

The actor itself never blocks: it decides, signals the process group, and queues commands.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import pykka
import zmq
from zmq.utils.monitor import recv_monitor_message

from kernel_runner.actors.base import ChildContext, RouterLink, SupervisedActor
from kernel_runner.config import RunnerConfig
from kernel_runner.drawing import DRAWING_MIME
from kernel_runner.ids import KERNEL_CHILD, LANG_CHILD, RunId
from kernel_runner.messages import (
    ChildState,
    CompleteCode,
    CompletionResult,
    Crashed,
    ExitReason,
    FeedInput,
    Finished,
    ForwardToChild,
    Html,
    InterruptRun,
    KernelChannelsClosed,
    KernelCompletion,
    KernelInputRequested,
    KernelLaunched,
    KernelReady,
    KernelRunEnded,
    KernelStartFailed,
    Media,
    Output,
    PipeClosed,
    ProcessDied,
    ProcessExited,
    RunDone,
    RunTask,
    ShutdownExit,
    StartFailed,
    StopRequested,
    StreamName,
    ToAgent,
    WaitingInput,
)
from kernel_runner.policy import Backoff, IntensityLimit
from kernel_runner.procs import ExitWatcher, PipePump, ProcessHandle, describe_returncode
from kernel_runner.supervisor import ChildSpec

# ---- knobs (anchors §8 "Jupyter kernel restart"; spec §4) -----------------------------------------------------------
READY_TIMEOUT_S = 30.0  # upstream waits 10 s; a cold ipykernel on a loaded machine can need more
KERNEL_INFO_RETRY_S = 0.25
# The agent waits for `completion` without a limit (spec §3.5); a cold jedi cache makes the first one take ~3 s.
COMPLETE_TIMEOUT_S = 5.0
# After execute_reply, how long IOPub may lag before the run ends without its idle status (and vice versa).
END_GRACE_S = 2.0
# An interrupt that does not end the run in this time kills the kernel, so an interrupt always ends the run.
INTERRUPT_KILL_AFTER_S = 10.0
# How long the channel thread may take to flush a dead kernel's last outputs before the actor ends the run itself.
END_RUN_TIMEOUT_S = 2.0
KERNEL_SHUTDOWN_S = 3.0
KERNEL_STABLE_AFTER_S = 10.0
MAX_RECORD_BYTES = 1 << 20
MAX_MESSAGES_PER_WAKE = 256
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports an interrupted command
NO_KERNEL_EXIT = 127  # spec §4.2: query mode disabled
DISPLAY_PREFERENCE = ("image/png", "image/jpeg", "image/svg+xml", "text/html", DRAWING_MIME)

InterruptMode = Literal["signal", "message"]


# ======================================================================================================================
# Pure pieces: kernelspec lookup, output mapping, exit codes
# ======================================================================================================================


class KernelSpecError(Exception):
    """No usable kernelspec: the message says which name was asked for and which names exist."""


@attrs.frozen(kw_only=True)
class KernelLaunchSpec:
    """What we take from a kernelspec (kernel.json) to start it ourselves."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    resource_dir: str
    interrupt_mode: InterruptMode
    language: str


def kernelspec_names() -> list[str]:
    """Installed kernelspec names (for a caller that maps a language's kspec name to an exact one)."""
    from jupyter_client.kernelspec import KernelSpecManager

    return sorted(KernelSpecManager().find_kernel_specs())


def find_kernelspec(name: str) -> KernelLaunchSpec:
    """The kernelspec called exactly `name`; an empty name matches nothing (spec §10.2 items 14)."""
    if not name:
        raise KernelSpecError("no kernelspec name is configured for this language")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    specs: dict[str, str] = manager.find_kernel_specs()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise KernelSpecError(f"no Jupyter kernelspec named {name!r} (installed: {known})")
    try:
        spec = manager.get_kernel_spec(name)
    except NoSuchKernel as exc:  # pragma: no cover - removed between the two calls
        raise KernelSpecError(f"no Jupyter kernelspec named {name!r}: {exc}") from exc
    except Exception as exc:  # a broken kernel.json is a start failure, not a crash
        raise KernelSpecError(f"kernelspec {name!r} cannot be read: {exc}") from exc
    argv = tuple(str(part) for part in spec.argv)
    if not argv:
        raise KernelSpecError(f"kernelspec {name!r} has an empty argv")
    mode: InterruptMode = "message" if getattr(spec, "interrupt_mode", "signal") == "message" else "signal"
    return KernelLaunchSpec(
        name=name,
        argv=argv,
        env={str(k): str(v) for k, v in (spec.env or {}).items()},
        resource_dir=str(spec.resource_dir),
        interrupt_mode=mode,
        language=str(spec.language or ""),
    )


def kernel_argv(spec: KernelLaunchSpec, connection_file: str) -> list[str]:
    """kernel.json argv with its placeholders filled; a bare `python` means our interpreter, as jupyter_client does."""
    values = {"connection_file": connection_file, "resource_dir": spec.resource_dir, "prefix": sys.prefix}
    argv = [_fill(part, values) for part in spec.argv]
    major, minor = sys.version_info[:2]
    if argv[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
        argv[0] = sys.executable
    return argv


def _fill(template: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def split_records(data: bytes, limit: int = MAX_RECORD_BYTES) -> list[bytes]:
    """Cut `data` into records of at most `limit` bytes, never inside a UTF-8 sequence."""
    if len(data) <= limit:
        return [data] if data else []
    records: list[bytes] = []
    start, size = 0, len(data)
    while start < size:
        end = min(start + limit, size)
        if end < size:
            cut = end
            while cut > start and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            if cut > start:
                end = cut
        records.append(data[start:end])
        start = end
    return records


def iter_records(text: str, limit: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """UTF-8 records of at most `limit` bytes, encoded one record at a time (large outputs are mostly ASCII, and
    encoding per record reuses memory instead of allocating the whole output twice)."""
    if text.isascii():
        for start in range(0, len(text), limit):
            yield text[start : start + limit].encode("ascii")
        return
    yield from split_records(text.encode("utf-8", errors="replace"), limit)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return json.dumps(value)


def map_display(data: Mapping[str, Any]) -> Media | Html | str | None:
    """One agent message for an execute_result/display_data bundle (spec §4.3, §10.1 items 2-3).

    Preference: PNG, JPEG (data URI), SVG (raw), HTML (`html`, never a non-JSON `media`), the drawing type of
    spec §8.4; then `text/plain` as stdout; a bundle with none of these forwards its first entry as `media`
    instead of dropping it. A `str` result means stdout text.
    """
    for mime in DISPLAY_PREFERENCE:
        value = data.get(mime)
        if value is None:
            continue
        if mime in ("image/png", "image/jpeg"):
            encoded = "".join(_text(value).split())
            return Media(mime=mime, data=f"data:{mime};base64,{encoded}")
        if mime == "text/html":
            return Html(html=_text(value))
        return Media(mime=mime, data=_text(value))
    if "text/plain" in data:
        return _text(data["text/plain"])
    for mime, value in data.items():
        return Media(mime=str(mime), data=_text(value))
    return None


def exit_code_from_reply(content: Mapping[str, Any] | None) -> int:
    """Derive the exit code from execute_reply (spec §10.1 item 4; upstream always sent 0).

    ok → 0; SystemExit(n) → n like a process (no argument or None → 0, other text → 1); KeyboardInterrupt → 130;
    any other error or an aborted request → 1.
    """
    if content is None:
        return 1
    status = content.get("status")
    if status == "ok":
        return 0
    if status != "error":
        return 1
    ename = content.get("ename")
    if ename == "SystemExit":
        value = str(content.get("evalue", "")).strip()
        if value in ("", "None"):
            return 0
        try:
            return int(value) & 0xFF
        except ValueError:
            return 1
    if ename == "KeyboardInterrupt":
        return INTERRUPTED_EXIT
    return 1


def death_exit_code(returncode: int) -> int:
    """A run whose kernel died ends non-zero: 128+N for a signal, the kernel's code, or 1 for a clean exit."""
    code, _ = describe_returncode(returncode)
    return code if code != 0 else 1


# ======================================================================================================================
# Commands the actor queues for the channel thread
# ======================================================================================================================


@attrs.frozen(kw_only=True)
class _Execute:
    run_id: RunId
    code: str


@attrs.frozen(kw_only=True)
class _SendInput:
    run_id: RunId
    value: str


@attrs.frozen(kw_only=True)
class _SendInterrupt:
    pass


@attrs.frozen(kw_only=True)
class _Complete:
    request_id: int
    code: str
    cursor_pos: int


@attrs.frozen(kw_only=True)
class _RequestShutdown:
    pass


@attrs.frozen(kw_only=True)
class _EndRun:
    """The kernel died: flush what IOPub still holds for the run, add `note` on stderr, then report the end."""

    run_id: RunId
    exit_code: int
    note: str


_Command = _Execute | _SendInput | _SendInterrupt | _Complete | _RequestShutdown | _EndRun


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
        try:
            message: object = self._launch()
        except KernelSpecError as exc:
            message = KernelStartFailed(error=str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message, never a dead thread
            message = KernelStartFailed(error=f"the {self._kernel_name} kernel could not be started: {exc!r}")
        if message is None:
            return
        try:
            self._owner.tell(message)
        except pykka.ActorDeadError:
            pass

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
            env.update({k: _fill(v, {"resource_dir": spec.resource_dir}) for k, v in spec.env.items()})
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
        pid: int,
        ready_timeout_s: float = READY_TIMEOUT_S,
        log: Any,
    ) -> None:
        super().__init__(name=f"KernelChannels-{pid}", daemon=True)
        self._connection = dict(connection)
        self._owner = owner
        self._router = router
        self._ready_timeout_s = ready_timeout_s
        self._log = log
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._fd_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._fds_open = True
        self._session: Any = None
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._stdin_monitor: zmq.Socket[bytes] | None = None
        self._execution: _Execution | None = None
        self._input_parent: dict[str, Any] | None = None
        self._completions: dict[str, int] = {}

    # ---- called from the actor thread ----------------------------------------------------------------
    def submit(self, command: _Command) -> None:
        self._commands.put(command)
        self._wake()

    def close(self) -> None:
        self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        with self._fd_lock:
            if not self._fds_open:
                return
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    # ---- the thread ------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._open()
            if self._handshake():
                self._loop()
        except Exception as exc:  # noqa: BLE001 - tell the owner; it decides (restart) and cleans up
            self._log.opt(exception=exc).error("kernel channels failed: {!r}", exc)
            self._tell(KernelChannelsClosed(error=repr(exc)))
        finally:
            if "stdin" in self._sockets:
                self._close_stdin_monitor()
            for sock in self._sockets.values():
                sock.close(linger=0)
            self._sockets.clear()
            with self._fd_lock:
                self._fds_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _tell(self, message: object) -> None:
        try:
            self._owner.tell(message)
        except pykka.ActorDeadError:
            pass

    def _url(self, channel: str) -> str:
        info = self._connection
        port = info[f"{channel}_port"]
        if info.get("transport", "tcp") == "ipc":
            return f"ipc://{info['ip']}-{port}"
        return f"{info.get('transport', 'tcp')}://{info['ip']}:{port}"

    def _open(self) -> None:
        from jupyter_client.session import Session

        info = self._connection
        self._session = Session(
            key=str(info["key"]).encode("ascii"),
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            username="kernel-runner",
        )
        context: zmq.Context[Any] = zmq.Context.instance()
        identity: bytes = self._session.bsession
        for channel, kind in (("shell", zmq.DEALER), ("control", zmq.DEALER), ("stdin", zmq.DEALER), ("iopub", zmq.SUB)):
            sock: zmq.Socket[bytes] = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if channel in ("shell", "stdin"):
                # The kernel routes input_request to the stdin socket that shares the shell socket's identity.
                sock.setsockopt(zmq.IDENTITY, identity)
            if kind == zmq.SUB:
                # PUB drops at the high-water mark; never lose an idle status or output while the agent is slow.
                sock.setsockopt(zmq.RCVHWM, 0)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            if channel == "stdin":
                # The kernel's stdin ROUTER drops an input_request for a peer whose connection is not complete yet,
                # and nothing else travels that way before the first input(): readiness waits for this handshake.
                self._stdin_monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            sock.connect(self._url(channel))
            self._sockets[channel] = sock

    def _recv(self, channel: str) -> dict[str, Any] | None:
        try:
            _, msg = self._session.recv(self._sockets[channel], mode=zmq.NOBLOCK, copy=False)
        except ValueError as exc:  # a bad signature or a malformed message: drop it, keep the channel
            self._log.warning("dropped an unreadable {} message: {}", channel, exc)
            return {}
        return msg  # type: ignore[no-any-return]

    def _send(self, channel: str, msg_type: str, content: dict[str, Any], parent: Any = None) -> str:
        msg = self._session.send(self._sockets[channel], msg_type, content=content, parent=parent)
        return str(msg["header"]["msg_id"])

    def _handshake(self) -> bool:
        """Ready = a kernel_info_reply on shell and any message on IOPub (so no early output is lost)."""
        deadline = time.monotonic() + self._ready_timeout_s
        got_reply: dict[str, Any] | None = None
        got_iopub = False
        monitor = self._stdin_monitor
        got_stdin = monitor is None
        last_sent = float("-inf")
        poller = zmq.Poller()
        poller.register(self._sockets["shell"], zmq.POLLIN)
        poller.register(self._sockets["iopub"], zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        while not self._stopping.is_set():
            if got_reply is not None and got_iopub and got_stdin:
                self._close_stdin_monitor()
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
                self._send("shell", "kernel_info_request", {})
                last_sent = now
            events = dict(poller.poll(int(min(KERNEL_INFO_RETRY_S, deadline - now) * 1000) + 1))
            if self._wake_r in events:
                self._drain_wake()
            while (msg := self._recv("shell")) is not None:
                if msg.get("msg_type") == "kernel_info_reply":
                    got_reply = dict(msg.get("content", {}))
            while (msg := self._recv("iopub")) is not None:
                got_iopub = True
            if monitor is not None and monitor in events:
                got_stdin = self._stdin_handshake_seen(monitor) or got_stdin
        return False

    def _stdin_handshake_seen(self, monitor: zmq.Socket[bytes]) -> bool:
        seen = False
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return seen
            seen = seen or event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED

    def _close_stdin_monitor(self) -> None:
        if self._stdin_monitor is None:
            return
        self._sockets["stdin"].disable_monitor()
        self._stdin_monitor.close(linger=0)
        self._stdin_monitor = None

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _loop(self) -> None:
        poller = zmq.Poller()
        for channel in ("iopub", "shell", "stdin", "control"):
            poller.register(self._sockets[channel], zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stopping.is_set():
            events = dict(poller.poll(self._poll_timeout_ms()))
            if self._wake_r in events:
                self._drain_wake()
            self._run_commands()
            # IOPub first: outputs of a run come before its end, which needs both reply and idle.
            self._drain("iopub", self._on_iopub)
            self._drain("shell", self._on_shell)
            self._drain("stdin", self._on_stdin)
            self._drain("control", lambda msg: None)
            self._check_run_end()

    def _poll_timeout_ms(self) -> int:
        execution = self._execution
        if execution is not None and execution.half_done_at is not None:
            left = execution.half_done_at + END_GRACE_S - time.monotonic()
            return max(1, int(left * 1000) + 1)
        return 1000

    def _drain(self, channel: str, handler: Callable[[dict[str, Any]], None]) -> None:
        for _ in range(MAX_MESSAGES_PER_WAKE):
            msg = self._recv(channel)
            if msg is None:
                return
            if msg:
                handler(msg)

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            match command:
                case _Execute():
                    self._execute(command)
                case _SendInput():
                    self._send_input(command)
                case _SendInterrupt():
                    self._send("control", "interrupt_request", {})
                    self._log.info("interrupt: sent interrupt_request (kernelspec interrupt_mode=message)")
                case _Complete():
                    msg_id = self._send("shell", "complete_request", {"code": command.code, "cursor_pos": command.cursor_pos})
                    self._completions[msg_id] = command.request_id
                case _RequestShutdown():
                    self._send("control", "shutdown_request", {"restart": False})
                case _EndRun():
                    self._end_dead_run(command)

    def _execute(self, command: _Execute) -> None:
        if self._execution is not None:
            self._log.error("run {} asked to start while run {} runs; refused", command.run_id, self._execution.run_id)
            self._tell(KernelRunEnded(run_id=command.run_id, exit_code=NO_KERNEL_EXIT))
            return
        content = {
            "code": command.code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": True,
            "stop_on_error": True,
        }
        msg_id = self._send("shell", "execute_request", content)
        self._execution = _Execution(run_id=command.run_id, msg_id=msg_id)
        self._input_parent = None

    def _send_input(self, command: _SendInput) -> None:
        execution = self._execution
        if execution is None or execution.run_id != command.run_id or self._input_parent is None:
            self._log.info("input for run {} dropped: the kernel is not waiting for it", command.run_id)
            return
        self._send("stdin", "input_reply", {"value": command.value}, parent=self._input_parent)
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
                # spec §4.3: the traceback lines joined by newlines, ANSI colours kept, no trailing newline.
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
            self._send("stdin", "input_reply", {"value": ""}, parent=msg)
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
        self._tell(KernelRunEnded(run_id=execution.run_id, exit_code=exit_code))

    def _end_dead_run(self, command: _EndRun) -> None:
        execution = self._execution
        if execution is None or execution.run_id != command.run_id:
            self._tell(KernelRunEnded(run_id=command.run_id, exit_code=command.exit_code))
            return
        self._drain("iopub", self._on_iopub)
        if command.note:
            self._emit("stderr", command.note)
        self._execution = None
        self._input_parent = None
        self._tell(KernelRunEnded(run_id=command.run_id, exit_code=command.exit_code))

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


# ======================================================================================================================
# KernelActor
# ======================================================================================================================


@attrs.frozen(kw_only=True)
class _InterruptDeadline:
    run_id: RunId


@attrs.frozen(kw_only=True)
class _CompletionDeadline:
    request_id: int


@attrs.frozen(kw_only=True)
class _EndRunDeadline:
    run_id: RunId


@attrs.frozen(kw_only=True)
class _StopStep:
    step: Literal["term", "kill"]


@attrs.frozen(kw_only=True)
class _Retire:
    pass


@attrs.define(kw_only=True)
class _Run:
    task: RunTask
    started: bool = False
    waiting_input: bool = False
    interrupted: bool = False


class KernelActor(SupervisedActor):
    """One kernel incarnation: queues code until the kernel is ready, runs one cell at a time, ends each run once.

    When the kernel process dies, the running cell ends non-zero with a stderr line, queued cells go back to the
    supervisor (which hands them to the next incarnation), and the actor exits with ProcessDied so the supervisor
    restarts the kernel with backoff and gives up after too many restarts.
    """

    def __init__(
        self,
        *,
        ctx: ChildContext,
        kernel_name: str,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        complete_timeout_s: float = COMPLETE_TIMEOUT_S,
        interrupt_kill_after_s: float = INTERRUPT_KILL_AFTER_S,
    ) -> None:
        super().__init__(ctx=ctx)
        self.kernel_name = kernel_name
        self._env_override = env
        self._ready_timeout_s = ready_timeout_s
        self._interrupt_kill_after_s = interrupt_kill_after_s
        self._complete_timeout_s = complete_timeout_s
        self._box: LaunchBox | None = None
        self._starter: KernelStarter | None = None
        self._channels: KernelChannels | None = None
        self._watcher: ExitWatcher | None = None
        self._launched: KernelLaunched | None = None
        self._ready = False
        self._queue: collections.deque[RunTask] = collections.deque()
        self._current: _Run | None = None
        self._completions: set[int] = set()
        self._completion_ids = itertools.count(1)
        self._stopping = False
        self._dying: ExitReason | None = None
        self._start_error: str | None = None
        self._retire_sent = False
        self._killed_for_interrupt = False

    # ---- life ------------------------------------------------------------------------------------------------
    def start_child(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="kernel-runner-"))
        self._box = LaunchBox(directory)
        env = self._kernel_env()
        work_dir = self.ctx.config.work_dir
        cwd = work_dir if work_dir.is_dir() else None
        self._starter = KernelStarter(kernel_name=self.kernel_name, box=self._box, env=env, cwd=cwd, owner=self.actor_ref)
        self._starter.start()
        self.set_state(ChildState.STARTING)
        self.update_info({"kernel": self.kernel_name, "ready": False})

    def _kernel_env(self) -> dict[str, str]:
        # spec §4.1: upstream gives the kernel the runner's own environment (plus environ.txt here), not child_env.
        if self._env_override is not None:
            return dict(self._env_override)
        if self.ctx.runner_env:
            return dict(self.ctx.runner_env)
        return dict(os.environ)

    def cleanup(self) -> None:
        box = self._box
        handle: ProcessHandle | None = None
        if box is not None:
            with box.lock:
                box.closing = True
                handle = box.handle
        if self._channels is not None:
            self._channels.close()
            self._channels.join(timeout=1.0)
        if handle is not None:
            handle.kill_tree()
            if self._watcher is not None:
                self._watcher.join(timeout=1.0)
        if box is not None:
            shutil.rmtree(box.directory, ignore_errors=True)
        self._abandon_work("the runner is stopping" if self._stopping else "the Jupyter kernel actor ended")

    def request_stop(self, message: StopRequested) -> None:
        self._stopping = True
        handle = self._box.handle if self._box is not None else None
        if handle is None or handle.poll() is not None:
            self.finish(ShutdownExit())
            return
        self.set_state(ChildState.STOPPING, pid=handle.pid)
        if self._channels is not None and self._ready:
            self._channels.submit(_RequestShutdown())
        else:
            handle.signal_group(signal.SIGTERM)
        self.schedule(message.grace_s * 0.5, _StopStep(step="term"))
        self.schedule(message.grace_s * 0.9, _StopStep(step="kill"))

    # ---- dispatch --------------------------------------------------------------------------------------------
    def handle(self, message: object) -> object:
        match message:
            case RunTask():
                return self._handle_run_task(message)
            case FeedInput():
                return self._handle_feed_input(message)
            case InterruptRun():
                return self._handle_interrupt_run(message)
            case CompleteCode():
                return self._handle_complete_code(message)
            case KernelLaunched():
                return self._handle_kernel_launched(message)
            case KernelReady():
                return self._handle_kernel_ready(message)
            case KernelStartFailed():
                return self._handle_kernel_start_failed(message)
            case KernelChannelsClosed():
                return self._handle_kernel_channels_closed(message)
            case KernelRunEnded():
                return self._handle_kernel_run_ended(message)
            case KernelInputRequested():
                return self._handle_kernel_input_requested(message)
            case KernelCompletion():
                return self._handle_kernel_completion(message)
            case ProcessExited():
                return self._handle_process_exited(message)
            case PipeClosed():
                return None
            case _InterruptDeadline():
                return self._handle_interrupt_deadline(message)
            case _CompletionDeadline():
                return self._handle_completion_deadline(message)
            case _EndRunDeadline():
                return self._handle_end_run_deadline(message)
            case _StopStep():
                return self._handle_stop_step(message)
            case _Retire():
                return self._handle_retire()
            case _:
                return super().handle(message)

    # ---- kernel start ----------------------------------------------------------------------------------------
    def _handle_kernel_launched(self, message: KernelLaunched) -> None:
        box = self._box
        assert box is not None and box.handle is not None and box.connection is not None
        handle = box.handle
        self._launched = message
        self.log = self.log.bind(pid=handle.pid)
        self.log.info("spawned kernel {} argv={} cwd={}", message.kernel_name, handle.argv, handle.cwd)
        self.set_state(ChildState.STARTING, pid=handle.pid)
        self.update_info(
            {"kernel_pid": handle.pid, "connection_file": message.connection_file, "interrupt_mode": message.interrupt_mode}
        )
        stdout = handle.popen.stdout
        if stdout is not None:
            kernel_log = self.log.bind(stream="kernel")

            def log_kernel_output(_stream: StreamName, data: bytes) -> None:
                for line in data.decode("utf-8", errors="replace").splitlines():
                    if line.strip():
                        kernel_log.info("kernel says: {}", line)

            PipePump(stdout, name="stdout", pid=handle.pid, sink=log_kernel_output, owner=self.actor_ref).start()
        self._watcher = ExitWatcher(handle, self.actor_ref, clock=self.ctx.clock)
        self._watcher.start()
        self._channels = KernelChannels(
            connection=box.connection,
            owner=self.actor_ref,
            router=self.ctx.router,
            pid=handle.pid,
            ready_timeout_s=self._ready_timeout_s,
            log=self.log,
        )
        self._channels.start()

    def _handle_kernel_ready(self, message: KernelReady) -> None:
        if self._dying is not None or self._stopping:
            return
        self._ready = True
        pid = self._launched.pid if self._launched is not None else None
        self.log.info("healthy: kernel {} ({} {}, protocol {})", self.kernel_name, message.implementation,
                      message.language, message.protocol_version)
        self.set_state(ChildState.RUNNING, pid=pid)
        self.update_info({"ready": True})
        self._start_next()

    def _handle_kernel_start_failed(self, message: KernelStartFailed) -> None:
        if self._stopping:
            self.finish(ShutdownExit())
            return
        self.log.error("the {} kernel failed to start: {}", self.kernel_name, message.error)
        self._start_error = message.error
        self._die(StartFailed(error=message.error))

    def _handle_kernel_channels_closed(self, message: KernelChannelsClosed) -> None:
        if self._stopping:
            return
        self._die(Crashed(error=f"kernel channels failed: {message.error}"))

    # ---- runs ---------------------------------------------------------------------------------------------------
    def _handle_run_task(self, task: RunTask) -> None:
        if self._dying is not None:
            self._handback(task)
            return
        if task.kind != "code":
            self.log.error("run {}: a {} request reached the Jupyter kernel; only code runs here", task.run_id, task.kind)
            self._answer_without_kernel(task, f"kernel-runner: {task.kind} requests do not run in the Jupyter kernel\n")
            return
        self._queue.append(task)
        self._start_next()

    def _start_next(self) -> None:
        if self._current is not None or not self._ready or self._dying is not None or self._stopping:
            return
        if not self._queue or self._channels is None:
            return
        task = self._queue.popleft()
        self._current = _Run(task=task, started=True)
        self.log.debug("run {}: executing {} bytes", task.run_id, len(task.text))
        self._channels.submit(_Execute(run_id=task.run_id, code=task.text))

    def _handle_kernel_run_ended(self, message: KernelRunEnded) -> None:
        run = self._current
        if run is None or run.task.run_id != message.run_id:
            self.log.debug("late end of run {} ignored", message.run_id)
            return
        self._end_current(message.exit_code)

    def _end_current(self, exit_code: int, note: str | None = None) -> None:
        run = self._current
        if run is None:
            return
        self._current = None
        if note:
            self.ctx.router.tell(Output(stream="stderr", data=note.encode()))
        self.ctx.router.tell(Finished(kind="code", exit_code=exit_code))
        self._tell_run_done(run.task.run_id, exit_code)
        self.log.debug("run {} finished with exit code {}", run.task.run_id, exit_code)
        if self._dying is not None:
            self._retire()
        else:
            self._start_next()

    def _tell_run_done(self, run_id: RunId, exit_code: int) -> None:
        try:
            self.ctx.supervisor.tell(ForwardToChild(child_id=LANG_CHILD, message=RunDone(run_id=run_id, exit_code=exit_code)))
        except pykka.ActorDeadError:
            pass

    def _answer_without_kernel(self, task: RunTask, text: str) -> None:
        self.ctx.router.tell(Output(stream="stderr", data=text.encode()))
        self.ctx.router.tell(Finished(kind=task.kind, exit_code=NO_KERNEL_EXIT))
        self._tell_run_done(task.run_id, NO_KERNEL_EXIT)

    def _handback(self, task: RunTask) -> None:
        """A run this incarnation will not start: the supervisor keeps it for the next one (or rejects it)."""
        if self._start_error is not None:
            # A failed start: answer now with the reason instead of waiting through the restart backoff.
            self._answer_without_kernel(task, f"kernel-runner: query mode is unavailable: {self._start_error}\n")
            return
        try:
            self.ctx.supervisor.tell(ForwardToChild(child_id=self.child_id, message=task))
        except pykka.ActorDeadError:
            pass

    # ---- input, interrupt, completion ---------------------------------------------------------------------------
    def _handle_feed_input(self, message: FeedInput) -> None:
        run = self._current
        if run is None or not run.waiting_input or self._channels is None:
            self.log.info("input dropped: nothing is waiting for input")
            return
        run.waiting_input = False
        self._channels.submit(_SendInput(run_id=run.task.run_id, value=message.text))

    def _handle_kernel_input_requested(self, message: KernelInputRequested) -> None:
        run = self._current
        if run is None or run.task.run_id != message.run_id:
            return
        run.waiting_input = True
        self.ctx.router.tell(WaitingInput(is_password=message.is_password))

    def _handle_interrupt_run(self, message: InterruptRun) -> None:
        run = self._current
        if run is None:
            if self._queue and not self._ready and self._dying is None:
                # Code waiting for the kernel to come up: the interrupt cancels it (exactly one Finished).
                task = self._queue.popleft()
                self.log.info("interrupt: run {} cancelled before the kernel was ready", task.run_id)
                self.ctx.router.tell(Output(stream="stderr", data=b"KeyboardInterrupt (the kernel was not ready yet)\n"))
                self.ctx.router.tell(Finished(kind="code", exit_code=INTERRUPTED_EXIT))
                self._tell_run_done(task.run_id, INTERRUPTED_EXIT)
                return
            self.log.info("interrupt: nothing is running")
            return
        run.waiting_input = False
        launched = self._launched
        handle = self._box.handle if self._box is not None else None
        if launched is not None and launched.interrupt_mode == "message" and self._channels is not None:
            self._channels.submit(_SendInterrupt())
        elif handle is not None:
            # Like jupyter_client's provisioner: SIGINT to the kernel's process group.
            handle.signal_group(signal.SIGINT)
            self.log.info("interrupt: SIGINT to the kernel's process group")
        if not run.interrupted:
            run.interrupted = True
            self.schedule(self._interrupt_kill_after_s, _InterruptDeadline(run_id=run.task.run_id))

    def _handle_interrupt_deadline(self, message: _InterruptDeadline) -> None:
        run = self._current
        if run is None or run.task.run_id != message.run_id or self._dying is not None:
            return
        handle = self._box.handle if self._box is not None else None
        self.log.warning(
            "the kernel ignored the interrupt for {:g} s; killing it so the run ends", self._interrupt_kill_after_s
        )
        if handle is not None:
            self._killed_for_interrupt = True
            handle.kill_tree()

    def _handle_complete_code(self, message: CompleteCode) -> None:
        if not self._ready or self._channels is None or self._dying is not None or self._stopping:
            self.ctx.router.tell(CompletionResult(items=()))
            return
        request_id = next(self._completion_ids)
        self._completions.add(request_id)
        cursor = message.options.get("cursor_pos") if isinstance(message.options, Mapping) else None
        cursor_pos = cursor if isinstance(cursor, int) and 0 <= cursor <= len(message.code) else len(message.code)
        self._channels.submit(_Complete(request_id=request_id, code=message.code, cursor_pos=cursor_pos))
        self.schedule(self._complete_timeout_s, _CompletionDeadline(request_id=request_id))

    def _handle_kernel_completion(self, message: KernelCompletion) -> None:
        if message.request_id in self._completions:
            self._completions.discard(message.request_id)
            self.ctx.router.tell(CompletionResult(items=message.matches))

    def _handle_completion_deadline(self, message: _CompletionDeadline) -> None:
        if message.request_id in self._completions:
            self._completions.discard(message.request_id)
            self.log.warning("completion got no reply within {:g} s; answered with no matches", self._complete_timeout_s)
            self.ctx.router.tell(CompletionResult(items=()))

    # ---- death, restart hand-off and stop -----------------------------------------------------------------------
    def _handle_process_exited(self, message: ProcessExited) -> None:
        code, sig = describe_returncode(message.returncode)
        if self._stopping:
            self.log.info("exited: kernel stopped (code {})", code)
            self.finish(ShutdownExit())
            return
        how = f"killed by signal {sig}" if sig is not None else f"exit code {code}"
        self.log.warning("exited: the {} kernel died ({})", self.kernel_name, how)
        if not self._ready and self._start_error is None:
            self._start_error = f"the {self.kernel_name} kernel exited during start ({how})"
        self._die(ProcessDied(code=message.returncode, signal=sig), note_how=how, returncode=message.returncode)

    def _die(self, reason: ExitReason, *, note_how: str | None = None, returncode: int = 1) -> None:
        if self._dying is not None:
            return
        self._dying = reason
        # Tell the supervisor first, so code it forwards from now on waits for the next incarnation, not for us.
        self.set_state(ChildState.BACKOFF, detail=reason.describe())
        self.update_info({"ready": False})
        run = self._current
        if run is None:
            self._retire()
            return
        if self._killed_for_interrupt:
            exit_code = INTERRUPTED_EXIT
            note = (
                f"kernel-runner: the Jupyter kernel ({self.kernel_name}) did not respond to the interrupt within "
                f"{self._interrupt_kill_after_s:g} s, so it was killed; it is being restarted\n"
            )
        else:
            exit_code = death_exit_code(returncode)
            note = (
                f"kernel-runner: the Jupyter kernel ({self.kernel_name}) died ({note_how or reason.describe()}) "
                "while this code ran; it is being restarted\n"
            )
        channels = self._channels
        if channels is not None and channels.is_alive():
            channels.submit(_EndRun(run_id=run.task.run_id, exit_code=exit_code, note=note))
            self.schedule(END_RUN_TIMEOUT_S, _EndRunDeadline(run_id=run.task.run_id))
        else:
            self._end_current(exit_code, note)

    def _handle_end_run_deadline(self, message: _EndRunDeadline) -> None:
        run = self._current
        if run is not None and run.task.run_id == message.run_id:
            self.log.warning("run {}: the channel thread did not flush in time; ending it", message.run_id)
            self._end_current(1, "kernel-runner: the Jupyter kernel died while this code ran\n")

    def _retire(self) -> None:
        """Hand queued work back, then exit once messages already in our inbox have been handed back too."""
        if self._retire_sent:
            return
        self._retire_sent = True
        while self._queue:
            self._handback(self._queue.popleft())
        for _ in range(len(self._completions)):
            self.ctx.router.tell(CompletionResult(items=()))
        self._completions.clear()
        self.actor_ref.tell(_Retire())

    def _handle_retire(self) -> None:
        assert self._dying is not None
        self.finish(self._dying)

    def _handle_stop_step(self, message: _StopStep) -> None:
        handle = self._box.handle if self._box is not None else None
        if handle is None:
            self.finish(ShutdownExit())
            return
        if message.step == "term":
            if handle.poll() is None:
                self.log.info("kernel still running after the shutdown request; SIGTERM to its group")
                handle.signal_group(signal.SIGTERM)
            return
        if handle.poll() is None:
            self.log.warning("kernel ignored SIGTERM; SIGKILL to its tree")
        handle.kill_tree()
        self.finish(ShutdownExit())

    def _abandon_work(self, why: str) -> None:
        """Every accepted run still ends exactly once, whatever way this actor ends."""
        if self._current is not None:
            run, self._current = self._current, None
            self.ctx.router.tell(Output(stream="stderr", data=f"kernel-runner: the run was stopped: {why}\n".encode()))
            self.ctx.router.tell(Finished(kind="code", exit_code=1))
            self._tell_run_done(run.task.run_id, 1)
        while self._queue:
            self._handback(self._queue.popleft())
        for _ in range(len(self._completions)):
            self.ctx.router.tell(CompletionResult(items=()))
        self._completions.clear()


# ======================================================================================================================
# Supervision
# ======================================================================================================================


def reject_kernel_message(message: object) -> list[ToAgent | ForwardToChild]:
    """Answers for work no kernel incarnation can take (gave up, or shutting down): no caller waits for ever."""
    if isinstance(message, RunTask):
        text = "kernel-runner: query mode is unavailable: the Jupyter kernel is not running\n"
        return [
            Output(stream="stderr", data=text.encode()),
            Finished(kind=message.kind, exit_code=NO_KERNEL_EXIT),
            ForwardToChild(child_id=LANG_CHILD, message=RunDone(run_id=message.run_id, exit_code=NO_KERNEL_EXIT)),
        ]
    if isinstance(message, CompleteCode):
        return [CompletionResult(items=())]
    return []


def kernel_child_spec(
    config: RunnerConfig,
    *,
    kernel_name: str,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    complete_timeout_s: float = COMPLETE_TIMEOUT_S,
    interrupt_kill_after_s: float = INTERRUPT_KILL_AFTER_S,
) -> ChildSpec:
    """The Jupyter kernel as a permanent child: restarted with backoff, FATAL after too many restarts (anchors §8).

    `kernel_name` is matched exactly (python: `python3`, the kernelspec ipykernel installs); `env` is the kernel's
    environment (default: the runner environment from the context, as upstream gives the kernel os.environ).
    """
    restart = config.restart

    def factory(ctx: ChildContext) -> pykka.ActorRef[Any]:
        return KernelActor.start(
            ctx=ctx,
            kernel_name=kernel_name,
            env=env,
            ready_timeout_s=ready_timeout_s,
            complete_timeout_s=complete_timeout_s,
            interrupt_kill_after_s=interrupt_kill_after_s,
        )

    return ChildSpec(
        child_id=KERNEL_CHILD,
        factory=factory,
        restart="permanent",
        shutdown_s=KERNEL_SHUTDOWN_S,
        backoff=Backoff(
            initial_s=restart.backoff_initial_s,
            factor=restart.backoff_factor,
            cap_s=restart.backoff_cap_s,
            jitter=restart.backoff_jitter,
        ),
        intensity=IntensityLimit(max_restarts=restart.intensity_max_restarts, period_s=restart.intensity_period_s),
        stable_after_s=KERNEL_STABLE_AFTER_S,
        tier=1,
        reject=reject_kernel_message,
    )


__all__ = [
    "DRAWING_MIME",
    "KernelActor",
    "KernelChannels",
    "KernelSpecError",
    "KernelStarter",
    "exit_code_from_reply",
    "find_kernelspec",
    "iter_records",
    "kernel_child_spec",
    "kernelspec_names",
    "map_display",
    "reject_kernel_message",
    "split_records",
]
