"""Stand-in Backend.AI agents: one class driven by a table of what each agent generation sends and how it reads.

Each row of `GENERATIONS` was read from the agent's code at one release tag (docs/protocol.md §3 says what the
23.03 agent does; the later ones differ only in the traits below). A `StandInAgent` builds that release's payloads
(model definitions after its schema's defaults, start-service, complete, event), waits for each reply as long as
that agent does, pairs replies with requests by their position in a per-type queue, as the agent's reader does (a
late reply is taken by the next request of its type), and turns what it reads into that agent's outcome: a model
start, a route's health, a destroyed kernel, a completion list or the error its `.get("suggestions")` raises.

Its reader is a thread, like the agent's reader task: every message is stamped when it arrives, so a reply counts
as in time only if it came before the agent would have given up, whatever the test was doing meanwhile.
"""

from __future__ import annotations

import enum
import json
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import msgpack

from kernel_runner.client import AgentClient, Reply, ReplyTimeout


class ModelReply(enum.Enum):
    """What the agent does with a `model-service-result` (only `status == "failed"` is ever looked at)."""

    IGNORED = "awaited during kernel creation, content ignored"
    VERDICT = "failed: route unhealthy; anything else: route healthy"
    FAILED_MEANS_HEALTHY = "failed: a HEALTHY route event (the 23.09.1-23.09.6 bug); otherwise the messages decide"
    FAILED_MEANS_UNHEALTHY = "failed: an UNHEALTHY route event; otherwise the messages decide"
    DESTROYS = "failed or no reply in time: the kernel is destroyed"


class StatusHandling(enum.Enum):
    """What the agent's reader does with a `model-service-status` message."""

    UNKNOWN_TYPE = "an unknown type: into the current run's output (strict UTF-8), dropped when no run is attached"
    ROUTE_HEALTH = "JSON with model_name and is_healthy: sets the route's health; a bad message ends the reader"
    IGNORED = "matched and ignored (health is probed elsewhere)"


class Command(enum.Enum):
    """How the schema treats `service.start_command`."""

    LIST = "a list of strings only"
    LIST_OR_STRING = "a list or a string, passed on as given"
    LIST_WRAPPING_STRINGS = "always a list: a string becomes [shell, -c, string], or [string] with an empty shell"
    STRING = "always a string: lists are shell-joined; shell may be null or empty"


@attrs.frozen(kw_only=True)
class Schema:
    """The model-definition schema of one release: which keys exist and their defaults."""

    command: Command
    extra_keys_kept: bool  # pydantic (26.4.4+) keeps unknown keys; the older schema rejects the definition
    metadata: bool  # top-level `metadata` key (24.03.0+)
    shell: bool  # `service.shell`, default /bin/bash (24.09.5, 24.12.0+)
    interval: bool  # `health_check.interval`, default 10 (24.12.0+)
    max_wait_time_default: float  # 5 before 24.12.0, then 15
    initial_delay: bool  # `health_check.initial_delay`, default 60 (25.18.0+)
    enable: bool  # `health_check.enable`, default false (26.4.4+)
    path_default: str | None  # None: `health_check.path` is required

    def knows(self, key: str) -> bool:
        return {"metadata": self.metadata, "shell": self.shell, "interval": self.interval,
                "initial_delay": self.initial_delay, "enable": self.enable}.get(key, True)


@attrs.frozen(kw_only=True)
class Generation:
    release: str  # the tag whose agent code these traits were read from
    row: str  # the runner's row (the agent-generation setting) that holds `release`
    contract: str  # what the runner owes this agent for model services: "verdict" or "spawned"
    model_reply: ModelReply
    status_handling: StatusHandling
    # The model-service-result wait is max_retries × max_wait_time + 10 s when the model has a health check (from
    # 26.4.7 only when health_check.enable is true), else 10 s.
    reply_wait_needs_enable: bool
    service_wait_s: float  # how long the agent waits for a service-result
    schema: Schema
    completion_reads_suggestions: bool  # 25.10.0+: `.get("suggestions", [])` on the completion JSON
    sends_events: bool  # the `event` op (23.03.8+)


_TRAFARET_2303 = Schema(command=Command.LIST, extra_keys_kept=False, metadata=False, shell=False, interval=False,
                        max_wait_time_default=5.0, initial_delay=False, enable=False, path_default=None)
_TRAFARET_2412 = attrs.evolve(_TRAFARET_2303, command=Command.LIST_OR_STRING, metadata=True, shell=True,
                              interval=True, max_wait_time_default=15.0)
_PYDANTIC_2644 = Schema(command=Command.LIST_WRAPPING_STRINGS, extra_keys_kept=True, metadata=True, shell=True,
                        interval=True, max_wait_time_default=15.0, initial_delay=True, enable=True,
                        path_default="/health")

_OLD = Generation(release="23.03.5", row="23.03", contract="verdict", model_reply=ModelReply.IGNORED,
                  status_handling=StatusHandling.UNKNOWN_TYPE, reply_wait_needs_enable=False, service_wait_s=10.0,
                  schema=_TRAFARET_2303, completion_reads_suggestions=False, sends_events=False)
_DESTROYING = attrs.evolve(_OLD, release="26.4.4", row="26.4.4", contract="spawned", model_reply=ModelReply.DESTROYS,
                           status_handling=StatusHandling.IGNORED, schema=_PYDANTIC_2644,
                           completion_reads_suggestions=True, sends_events=True)

# One entry per distinct agent behaviour, keyed by the release it was read from. `row` follows the runner's current
# row table; changing a row is one edit here.
GENERATIONS: dict[str, Generation] = {g.release: g for g in (
    _OLD,
    attrs.evolve(_OLD, release="23.03.11", row="23.03.11", model_reply=ModelReply.VERDICT, sends_events=True),
    attrs.evolve(_OLD, release="23.09.1", row="23.09.1", contract="spawned",
                 model_reply=ModelReply.FAILED_MEANS_HEALTHY, status_handling=StatusHandling.ROUTE_HEALTH,
                 sends_events=True),
    attrs.evolve(_OLD, release="24.12.0", row="24.12", contract="spawned",
                 model_reply=ModelReply.FAILED_MEANS_UNHEALTHY, status_handling=StatusHandling.ROUTE_HEALTH,
                 schema=_TRAFARET_2412, sends_events=True),
    attrs.evolve(_OLD, release="25.12.0", row="25.12", contract="spawned",
                 model_reply=ModelReply.FAILED_MEANS_UNHEALTHY, status_handling=StatusHandling.IGNORED,
                 schema=_TRAFARET_2412, completion_reads_suggestions=True, sends_events=True),
    attrs.evolve(_OLD, release="25.18.0", row="25.12", contract="spawned",
                 model_reply=ModelReply.FAILED_MEANS_UNHEALTHY, status_handling=StatusHandling.IGNORED,
                 schema=attrs.evolve(_TRAFARET_2412, initial_delay=True), completion_reads_suggestions=True,
                 sends_events=True),
    _DESTROYING,
    attrs.evolve(_DESTROYING, release="26.4.7", reply_wait_needs_enable=True),
    attrs.evolve(_DESTROYING, release="26.4.10", row="26.4.10", reply_wait_needs_enable=True, service_wait_s=35.0),
    # 26.7.0 and 26.8.x still wait 10 s for a service-result (the 35 s wait is in 26.4.10 and in main after 26.8.1).
    attrs.evolve(_DESTROYING, release="26.7.0", row="26.7", reply_wait_needs_enable=True),
    attrs.evolve(_DESTROYING, release="26.8.1", row="26.8", reply_wait_needs_enable=True,
                 schema=attrs.evolve(_PYDANTIC_2644, command=Command.STRING)),
)}

# The stand-ins the per-row scenarios drive: the first release of each of the runner's rows, and 26.4.7, the first
# agent that waits only 10 s for the reply about a model whose health check is off.
ROW_REPRESENTATIVES: tuple[str, ...] = ("23.03.5", "23.03.11", "23.09.1", "24.12.0", "25.12.0", "26.4.4", "26.4.7",
                                        "26.4.10", "26.7.0", "26.8.1")

# Outcomes of a request, as the agent sees them.
STARTED = "started"
RUNNING = "running"
FAILED = "failed"
TIMEOUT = "timeout"
KERNEL_DESTROYED = "kernel destroyed"

# No limit in the agent (status, completion); a test still needs one.
UNBOUNDED_WAIT_S = 30.0
_REPLY_TYPES = ("status", "completion", "service-result", "model-service-result", "apps-result")


class DefinitionRejected(ValueError):
    """The agent's schema refuses the model definition: the agent fails the kernel's creation."""


class ReaderEnded(AssertionError):
    """The agent's reader stopped for good on a message it could not take; every later wait would time out."""


@attrs.frozen(kw_only=True)
class ModelStart:
    name: str
    payload: Mapping[str, Any]
    reply: Mapping[str, Any]  # what the agent's request helper returned (its own dict on a timeout)
    outcome: str  # STARTED (started or running), FAILED, TIMEOUT or KERNEL_DESTROYED
    wait_s: float
    took_s: float


@attrs.frozen(kw_only=True)
class ServiceStart:
    name: str
    reply: Mapping[str, Any]
    outcome: str  # the reply's status, or TIMEOUT
    took_s: float


@attrs.frozen(kw_only=True)
class Completion:
    raw: Any  # the reply's JSON
    suggestions: list[Any] | None  # what a 25.10+ agent hands on; None for older agents (they pass `raw` on)
    error: str | None  # the error the agent's `.get("suggestions")` raises on a reply that is not an object


@attrs.frozen
class _Arrival:
    at: float
    payload: bytes


@attrs.frozen
class _Pending:
    reply_type: str
    sent_at: float
    deadline: float | None  # None: the agent waits without a limit


class StandInAgent:
    """One kernel as one agent generation drives it, over an AgentClient (whose sockets it then owns)."""

    def __init__(self, generation: Generation, client: AgentClient) -> None:
        self.generation = generation
        self.client = client
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Arrival]] = {kind: deque() for kind in _REPLY_TYPES}
        self.run_output: list[Reply] = []  # what the agent files into a run's output (dropped with no run attached)
        self.status_messages: list[Mapping[str, Any]] = []  # every model-service-status, read or not by the agent
        self.routes: dict[str, bool] = {}  # route health as this agent reports it to the manager
        self.destroyed: list[str] = []  # why the agent destroyed the kernel
        self.reader_error: str | None = None
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"stand-in agent {generation.release}",
                                        daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self.client.close()

    def __enter__(self) -> StandInAgent:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- the reader ---------------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._stop.is_set() and self.reader_error is None:
            try:
                reply = self.client.recv(timeout=0.1)
            except ReplyTimeout:
                continue
            except ValueError as exc:  # not two frames
                self._end_reader(f"unreadable message: {exc}")
                continue
            self._file(reply, time.monotonic())

    def _file(self, reply: Reply, at: float) -> None:
        with self._cond:
            if reply.type in self._queues:
                self._queues[reply.type].append(_Arrival(at, reply.payload))
            elif reply.type == "model-service-status":
                self._take_status(reply)
            else:
                self._to_run_output(reply)
            self._cond.notify_all()

    def _take_status(self, reply: Reply) -> None:
        try:
            body = json.loads(reply.payload)
        except ValueError:
            body = {"unparsable": reply.text}
        self.status_messages.append(body)
        handling = self.generation.status_handling
        if handling is StatusHandling.UNKNOWN_TYPE:
            self._to_run_output(reply)
        elif handling is StatusHandling.ROUTE_HEALTH:
            try:
                name, healthy = body["model_name"], body["is_healthy"]
            except (KeyError, TypeError):
                self._end_reader(f"model-service-status without model_name/is_healthy: {reply.payload!r}")
                return
            self.routes[str(name)] = bool(healthy)

    def _to_run_output(self, reply: Reply) -> None:
        if reply.type not in ("stdout", "stderr"):
            try:
                reply.payload.decode("utf-8")  # the agent decodes these strictly
            except UnicodeDecodeError:
                self._end_reader(f"{reply.type} is not UTF-8: {reply.payload!r}")
                return
        self.run_output.append(reply)

    def _end_reader(self, why: str) -> None:
        with self._cond:
            self.reader_error = why
            self._cond.notify_all()

    # ---- requests -----------------------------------------------------------------------------------------------
    def _send(self, op: str, payload: bytes, reply_type: str, wait_s: float | None) -> _Pending:
        sent_at = time.monotonic()
        self.client.send(op, payload)
        return _Pending(reply_type, sent_at, None if wait_s is None else sent_at + wait_s)

    def _await(self, pending: _Pending, *, bound_s: float = UNBOUNDED_WAIT_S) -> tuple[bytes | None, float]:
        """The reply, or None when the agent's wait ran out first (the reply then stays for the next request)."""
        queue = self._queues[pending.reply_type]
        limit = pending.deadline if pending.deadline is not None else pending.sent_at + bound_s
        with self._cond:
            while True:
                if queue and (pending.deadline is None or queue[0].at <= pending.deadline):
                    arrival = queue.popleft()
                    return arrival.payload, arrival.at - pending.sent_at
                if self.reader_error is not None:
                    raise ReaderEnded(f"the agent's reader has ended ({self.reader_error})")
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    if pending.deadline is None:
                        raise AssertionError(f"no {pending.reply_type} within {bound_s:g}s: "
                                             "the agent would still be waiting")
                    return None, time.monotonic() - pending.sent_at
                self._cond.wait(remaining)

    @staticmethod
    def _json(payload: bytes, what: str) -> Any:
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise AssertionError(f"the agent's json.loads fails on the {what}: {payload!r}") from exc

    def status(self) -> dict[str, Any]:
        pending = self._send("status", b"", "status", None)
        payload, _ = self._await(pending)
        assert payload is not None
        body: dict[str, Any] = msgpack.unpackb(payload, raw=False)
        return body

    def runner_generation(self) -> dict[str, Any]:
        """The row the runner chose, from its status reply."""
        chosen: dict[str, Any] = self.status()["kernel_runner"]["agent_generation"]
        return chosen

    def create_kernel(self) -> list[str]:
        """The creation handshake: `status`, then `get-apps` (10 s); the app names the agent merges."""
        self.status()
        pending = self._send("get-apps", b"", "apps-result", 10.0)
        payload, _ = self._await(pending)
        if payload is None:
            return []
        result = self._json(payload, "apps-result")
        if result.get("status") == "failed":
            return []
        return [str(app["name"]) for app in result["data"]]

    # ---- model services -----------------------------------------------------------------------------------------
    def begin_model(self, definition: Mapping[str, Any]) -> tuple[_Pending, Mapping[str, Any]]:
        """Send one model of model-definition.yml, shaped by this agent's schema; `finish_model` reads the reply."""
        return self.begin_model_payload(model_payload(self.generation, definition))

    def begin_model_payload(self, payload: Mapping[str, Any]) -> tuple[_Pending, Mapping[str, Any]]:
        """Send a payload as built (another generation's shape, say), waiting and reading as this agent does."""
        pending = self._send("start-model-service", json.dumps(payload).encode(), "model-service-result",
                             model_reply_wait_s(self.generation, payload))
        return pending, payload

    def finish_model(self, started: tuple[_Pending, Mapping[str, Any]]) -> ModelStart:
        pending, payload = started
        raw, took = self._await(pending)
        reply = {"status": "failed", "error": "timeout"} if raw is None else self._json(raw, "model-service-result")
        failed = reply.get("status") == "failed"
        outcome = TIMEOUT if raw is None else (FAILED if failed else STARTED)
        name = str(payload["name"])
        with self._cond:
            match self.generation.model_reply:
                case ModelReply.VERDICT:
                    self.routes[name] = not failed
                case ModelReply.FAILED_MEANS_HEALTHY if failed:
                    self.routes[name] = True
                case ModelReply.FAILED_MEANS_UNHEALTHY if failed:
                    self.routes[name] = False
                case ModelReply.DESTROYS if failed:
                    self.destroyed.append(f"model {name}: {reply}")
                    outcome = KERNEL_DESTROYED
        assert pending.deadline is not None
        return ModelStart(name=name, payload=payload, reply=reply, outcome=outcome,
                          wait_s=pending.deadline - pending.sent_at, took_s=took)

    def start_model(self, definition: Mapping[str, Any]) -> ModelStart:
        return self.finish_model(self.begin_model(definition))

    def start_model_payload(self, payload: Mapping[str, Any]) -> ModelStart:
        return self.finish_model(self.begin_model_payload(payload))

    def wait_for(self, condition: Callable[[StandInAgent], bool], *, timeout: float, what: str) -> None:
        """Until `condition(self)` holds, re-checked at every message the reader files."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; routes {self.routes}, "
                                         f"status messages {self.status_messages}, reader {self.reader_error}")
                self._cond.wait(remaining)

    def wait_route(self, name: str, healthy: bool, *, timeout: float) -> None:
        self.wait_for(lambda agent: agent.routes.get(name) is healthy, timeout=timeout,
                      what=f"route {name} {'healthy' if healthy else 'unhealthy'}")

    def wait_status_message(self, name: str, healthy: bool, *, timeout: float) -> None:
        """A model-service-status for `name` was sent, whether or not this agent reads it."""
        wanted = {"model_name": name, "is_healthy": healthy}
        self.wait_for(lambda agent: wanted in agent.status_messages, timeout=timeout, what=f"status message {wanted}")

    # ---- service ports ------------------------------------------------------------------------------------------
    def begin_service(self, name: str, port: int, *, protocol: str = "http",
                      options: Mapping[str, Any] | None = None) -> _Pending:
        info = {"name": name, "port": port, "ports": [port], "protocol": protocol, "options": dict(options or {})}
        return self._send("start-service", json.dumps(info).encode(), "service-result", self.generation.service_wait_s)

    def finish_service(self, name: str, pending: _Pending) -> ServiceStart:
        raw, took = self._await(pending)
        if raw is None:
            return ServiceStart(name=name, reply={"status": "failed", "error": "timeout"}, outcome=TIMEOUT, took_s=took)
        reply = self._json(raw, "service-result")
        return ServiceStart(name=name, reply=reply, outcome=str(reply.get("status")), took_s=took)

    def start_service(self, name: str, port: int, **kwargs: Any) -> ServiceStart:
        return self.finish_service(name, self.begin_service(name, port, **kwargs))

    # ---- completion and events ----------------------------------------------------------------------------------
    def complete(self, code: str, options: Mapping[str, Any] | None = None) -> Completion:
        pending = self._send("complete", json.dumps({"code": code, **(options or {})}).encode(), "completion", None)
        payload, _ = self._await(pending)
        assert payload is not None
        raw = self._json(payload, "completion")
        if not self.generation.completion_reads_suggestions:
            return Completion(raw=raw, suggestions=None, error=None)
        if not isinstance(raw, dict):
            return Completion(raw=raw, suggestions=None,
                              error=f"AttributeError: {type(raw).__name__!r} object has no attribute 'get'")
        return Completion(raw=raw, suggestions=list(raw.get("suggestions", [])), error=None)

    def notify_oom(self) -> None:
        """What the agent sends when Docker reports an OOM kill in the container; no reply is awaited."""
        if not self.generation.sends_events:
            raise AssertionError(f"the {self.generation.release} agent has no event op")
        self.client.send("event", json.dumps({"type": "oom", "data": {}}))


def model_payload(generation: Generation, definition: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of model-definition.yml as `generation`'s agent sends it, after its schema's defaults."""
    schema = generation.schema
    known = {"name", "model_path", "service"} | ({"metadata"} if schema.metadata else set())
    _refuse_unknown(definition, known, "the model", schema)
    payload: dict[str, Any] = {**definition, "name": str(definition["name"]),
                               "model_path": str(definition["model_path"])}
    service = definition.get("service")
    payload["service"] = None if service is None else _service(generation, service)
    if schema.metadata:
        payload["metadata"] = definition.get("metadata")
    return payload


def _service(generation: Generation, service: Mapping[str, Any]) -> dict[str, Any]:
    schema = generation.schema
    known = {"pre_start_actions", "start_command", "port", "health_check"} | ({"shell"} if schema.shell else set())
    _refuse_unknown(service, known, "service", schema)
    out: dict[str, Any] = dict(service)
    out["pre_start_actions"] = service.get("pre_start_actions", [])
    if schema.shell:
        out["shell"] = service.get("shell", "/bin/bash")
        # null or "" means "no shell" only from 26.8; pydantic (26.4.4+) takes "", the older schema neither.
        if (out["shell"] is None and schema.command is not Command.STRING) or (
                out["shell"] == "" and not schema.extra_keys_kept):
            raise DefinitionRejected(f"service.shell {out['shell']!r} is refused by this schema")
    out["start_command"] = _command(generation, service["start_command"], out.get("shell"))
    out["port"] = int(service["port"])
    check = service.get("health_check")
    out["health_check"] = None if check is None else _health_check(generation, check)
    return out


def _command(generation: Generation, command: str | Sequence[str], shell: str | None) -> str | list[str]:
    kind = generation.schema.command
    if isinstance(command, str):
        if kind is Command.LIST:
            raise DefinitionRejected("service.start_command must be a list")
        if kind is Command.LIST_WRAPPING_STRINGS:
            return [shell, "-c", command] if shell else [command]
        return command
    argv = [str(arg) for arg in command]
    return shlex.join(argv) if kind is Command.STRING else argv


def _health_check(generation: Generation, check: Mapping[str, Any]) -> dict[str, Any]:
    schema = generation.schema
    known = {"path", "max_retries", "max_wait_time", "expected_status_code"}
    known |= {key for key in ("interval", "initial_delay", "enable") if schema.knows(key)}
    _refuse_unknown(check, known, "health_check", schema)
    if schema.path_default is None and "path" not in check:
        raise DefinitionRejected("health_check.path is required")
    out: dict[str, Any] = dict(check)
    out["path"] = check.get("path", schema.path_default)
    out["max_retries"] = _number(check.get("max_retries", 10), int)
    out["max_wait_time"] = _number(check.get("max_wait_time", schema.max_wait_time_default), float)
    out["expected_status_code"] = _number(check.get("expected_status_code", 200), int)
    if schema.interval:
        out["interval"] = _number(check.get("interval", 10.0), float)
    if schema.initial_delay:
        out["initial_delay"] = _number(check.get("initial_delay", 60.0), float)
    if schema.enable:
        out["enable"] = bool(check.get("enable", False))
    return out


def _refuse_unknown(section: Mapping[str, Any], known: set[str], where: str, schema: Schema) -> None:
    unknown = sorted(set(section) - known)
    if unknown and not schema.extra_keys_kept:
        raise DefinitionRejected(f"{where}: keys this schema does not know: {unknown}")


def model_reply_wait_s(generation: Generation, payload: Mapping[str, Any]) -> float:
    """How long `generation`'s agent waits for the model-service-result."""
    service = payload.get("service")
    if service is None:  # the agent's own lookup fails after sending (docs/protocol.md §7.4)
        raise AssertionError("this agent fails on a model without a service right after sending it")
    check = service.get("health_check")
    if check and (check.get("enable") or not generation.reply_wait_needs_enable):
        return float(check["max_retries"] * check["max_wait_time"] + 10)
    return 10.0


def _number(value: Any, kind: Callable[[Any], Any]) -> Any:
    """The schema converts numbers (and lets null through)."""
    return None if value is None else kind(value)
