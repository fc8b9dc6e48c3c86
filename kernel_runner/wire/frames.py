"""The agent protocol edge: two-frame messages decoded into typed requests and typed replies encoded into frames."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cattrs
import msgpack
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.v import format_exception as cattrs_format_exception

from kernel_runner.excerpts import excerpt
from kernel_runner.generations import GenerationChoice, model_payload_floor
from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    HEALTH_CHECK_BOUNDS,
    PORT_BOUNDS,
    SERVICE_PORT_BOUNDS,
    AgentEvent,
    AgentRequest,
    AppsResult,
    BadFrame,
    Bounds,
    CompleteCode,
    CompletionResult,
    FeedInput,
    Finished,
    GetApps,
    HealthCheck,
    Html,
    InterruptRun,
    LogRecord,
    Media,
    ModelInfo,
    ModelServiceResult,
    ModelServiceSpec,
    ModelServiceStatus,
    Output,
    PrestartActionSpec,
    RunBatch,
    RunCode,
    ServiceInfo,
    ServiceOptions,
    ServiceResult,
    ShutdownService,
    StartModelService,
    StartService,
    StatusRequest,
    ToAgent,
    WaitingInput,
)
from kernel_runner.supervision.spec import ChildInfo
from kernel_runner.wire.answers import bad_request_answer

Frames = list[bytes]


MiB = 1024 * 1024
# docs/protocol.md §2.7. ZeroMQ drops a peer that sends a bigger frame (ZMQ_MAXMSGSIZE), so memory stays bounded; it is
# far above any real cell or command, and the only limit on `clean`, `build`, `exec`, `code` and `input`.
MAX_FRAME_BYTES = 64 * MiB
MAX_OP_BYTES = 32  # the longest op name is 19 bytes
# Payloads parsed as JSON or naming a service: checked right after the receive, before any decoding.
MAX_CONTROL_PAYLOAD_BYTES = 1 * MiB
MAX_COMPLETE_PAYLOAD_BYTES = 16 * MiB  # `complete` carries the whole cell
MAX_JSON_DEPTH = 32  # the deepest real payload (a model's pre_start_actions) nests 6 levels
MAX_NAME_CHARS = 256
MAX_URL_PATH_CHARS = 2048  # a health check's path: it is put in a URL and in log lines
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
MAX_PORTS = 64
_MAX_ERROR_LINES = 8
_MAX_ERROR_LINE_CHARS = 300


class PayloadError(ValueError):
    """A payload that cannot become a typed request; the text names the bad field."""


def _text(value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, got {_kind(value)}")
    if "\0" in value:
        # It would reach an argv, an environment or a file name, where the spawn or open fails with a bare ValueError.
        raise ValueError("a NUL character is not allowed")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _build_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)

    def structure_command(value: Any, _type: Any) -> tuple[str, ...] | str:
        # Later upstream accepts a string, run by `shell` or split into words, as well as an argv list (§7.1).
        if isinstance(value, str):
            return _text(value)
        if isinstance(value, list):
            if not value:
                raise ValueError("start_command must not be empty")
            return tuple(_text(item, "a list of strings") for item in value)
        raise ValueError("start_command must be a list of strings or a string")

    conv.register_structure_hook(tuple[str, ...] | str, structure_command)

    def structure_argument(value: Any, _type: Any) -> str | list[str] | None:
        # docs/protocol.md §6.1: an argument's value is a string, a list of strings, or null.
        if value is None or isinstance(value, str):
            return value if value is None else _text(value)
        if isinstance(value, list):
            return [_text(item, "a list of strings") for item in value]
        raise ValueError(f"expected a string, a list of strings or null, got {_kind(value)}")

    conv.register_structure_hook(str | list[str] | None, structure_argument)

    def structure_strict_int(value: Any, _type: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)}")
        return value

    def structure_strict_float(value: Any, _type: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_kind(value)}")
        return float(value)

    def structure_strict_bool(value: Any, _type: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_kind(value)}")
        return value

    conv.register_structure_hook(bool, structure_strict_bool)
    conv.register_structure_hook(int, structure_strict_int)
    conv.register_structure_hook(float, structure_strict_float)
    conv.register_structure_hook(str, lambda value, _type: _text(value))
    return conv


converter = _build_converter()


def _format_exception(exc: BaseException, tp: type | None) -> str:
    # Our hooks' own texts say what was expected; they never quote the value (it may be a megabyte long).
    if isinstance(exc, ValueError) and not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    return cattrs_format_exception(exc, tp)


def _errors_text(exc: Exception) -> str:
    if isinstance(exc, (ClassValidationError, ForbiddenExtraKeysError)):
        lines = cattrs.transform_error(exc, path="$", format_exception=_format_exception)
    else:
        lines = [str(exc)]
    # A path quotes the wire's own mapping keys: each line is kept short, and so is their number.
    shown = [excerpt(line, _MAX_ERROR_LINE_CHARS, quote=False) for line in lines[:_MAX_ERROR_LINES]]
    if len(lines) > _MAX_ERROR_LINES:
        shown.append(f"and {len(lines) - _MAX_ERROR_LINES} more")
    return "; ".join(shown)


def _structure_or_raise(data: Any, cls: type[Any]) -> Any:
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, ForbiddenExtraKeysError, ValueError, TypeError, KeyError) as exc:
        raise PayloadError(_errors_text(exc)) from exc


# A JSON string (skipped whole, escapes included) or one bracket: enough to measure nesting without parsing.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def _nests_deeper_than(text: str, limit: int) -> bool:
    """Measured before parsing: the parser recurses once per level, and 100 000 `[` once ended in RecursionError."""
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in {"[", "{"}:
            depth += 1
            if depth > limit:
                return True
        elif token in {"]", "}"}:
            depth -= 1
    return False


def _json_value(text: str, *, expected: str = "valid JSON") -> Any:
    if _nests_deeper_than(text, MAX_JSON_DEPTH):
        raise PayloadError(f"payload nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        # NaN and Infinity are taken, as the agent's encoder may write them; the range checks refuse them by field name.
        return json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"payload is not {expected}: {excerpt(str(exc), quote=False)}") from exc


def _json_object(text: str) -> dict[str, Any]:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(value).__name__}")
    return value


def _name_problem(name: str) -> str | None:
    """Why a service or model name from the wire is refused, or None: names end up in child ids and log lines."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters, got {len(name)}"
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        return "must not contain control characters"
    return None


def _check_name(name: str, path: str) -> None:
    problem = _name_problem(name)
    if problem is not None:
        raise PayloadError(f"name {problem} @ {path}")


def _check_bound(value: Any, bounds: Bounds, field: str, path: str) -> None:
    problem = bounds.problem(value)
    if problem is not None:
        raise PayloadError(f"{field} {problem} @ {path}")


def parse_service_info(text: str) -> ServiceInfo:
    raw = _json_object(text)
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise PayloadError("options must be an object @ $.options")
    ports = raw.get("ports")
    if ports is None:
        ports = []
    elif not isinstance(ports, list):
        raise PayloadError(f"ports must be a list of integers, got {_kind(ports)} @ $.ports")
    elif len(ports) > MAX_PORTS:
        raise PayloadError(f"ports must hold at most {MAX_PORTS} ports, got {len(ports)} @ $.ports")
    normalized = {
        "name": raw.get("name"),
        "port": raw.get("port"),
        "ports": tuple(ports),
        "protocol": raw.get("protocol") or "tcp",
        "options": {"arguments": options.get("arguments"), "envs": options.get("envs")},
    }
    info: ServiceInfo = _structure_or_raise(normalized, ServiceInfo)
    _check_name(info.name, "$.name")
    if info.port is not None:
        _check_bound(info.port, SERVICE_PORT_BOUNDS, "port", "$.port")
    for index, port in enumerate(info.ports):
        _check_bound(port, SERVICE_PORT_BOUNDS, "port", f"$.ports[{index}]")
    return info


def parse_model_info(text: str) -> ModelInfo:
    raw = _json_object(text)
    evidence = model_payload_floor(raw)
    service = raw.get("service")
    if isinstance(service, dict):
        actions = service.get("pre_start_actions")
        if actions is None:
            service = {**service, "pre_start_actions": []}
        health = service.get("health_check")
        if isinstance(health, dict):
            # The agent's schema turns missing optional numbers into null; null means "the default" (docs/protocol.md §7.1).
            health = {k: v for k, v in health.items() if v is not None}
            _check_health_numbers(health)
            service = {**service, "health_check": health}
        raw = {**raw, "service": service}
    model: ModelInfo = _structure_or_raise({k: v for k, v in raw.items() if k != "evidence"}, ModelInfo)
    model = ModelInfo(name=model.name, model_path=model.model_path, service=model.service, evidence=evidence)
    _check_name(model.name, "$.name")
    if model.service is not None:
        _check_bound(model.service.port, PORT_BOUNDS, "port", "$.service.port")
        check = model.service.health_check
        if check is not None and (len(check.path) > MAX_URL_PATH_CHARS or _URL_UNSAFE.search(check.path)):
            raise PayloadError(f"path must be at most {MAX_URL_PATH_CHARS} characters without spaces or control "
                               "characters @ $.service.health_check.path")
    return model


def _check_health_numbers(health: dict[str, Any]) -> None:
    """docs/protocol.md §7.1: every number is checked before it can become a timer; HealthCheck refuses them too,
    but only here does the reply name the exact field."""
    for field, bounds in HEALTH_CHECK_BOUNDS.items():
        value = health.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_bound(value, bounds, field, f"$.service.health_check.{field}")


def _parse_name(text: str) -> str:
    # docs/protocol.md §2.4: the payload is a JSON string such as "\"jupyter\"".
    value = _json_value(text, expected="a JSON string")
    if not isinstance(value, str) or not value:
        raise PayloadError(f"payload must be a non-empty JSON string, got {_kind(value) if value else repr(value)}")
    _check_name(value, "$")
    return value


def _parse_get_apps(text: str) -> GetApps:
    if not text:
        return GetApps(name=None)
    _check_name(text, "the payload")
    return GetApps(name=text)


def _parse_complete(text: str) -> CompleteCode:
    raw = _json_object(text)
    code = raw.get("code", "")
    if not isinstance(code, str):
        raise PayloadError("code must be a string @ $.code")
    return CompleteCode(code=code, options={k: v for k, v in raw.items() if k != "code"})


def _parse_event(text: str) -> AgentEvent:
    """docs/protocol.md §9.4: `{"type": "oom", "data": {}}`; a type this runner does not know is still an event."""
    raw = _json_object(text)
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise PayloadError(f"type must be a string, got {_kind(kind)} @ $.type")
    problem = _name_problem(kind)
    if problem is not None:
        raise PayloadError(f"type {problem} @ $.type")
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        raise PayloadError(f"data must be an object, got {_kind(data)} @ $.data")
    return AgentEvent(type=kind, data=data or {})


def _batch(kind: str) -> Callable[[str], AgentRequest]:
    def parse(text: str) -> AgentRequest:
        return RunBatch(kind=kind, command=text)  # type: ignore[arg-type]

    return parse


_PARSERS: dict[str, Callable[[str], AgentRequest]] = {
    "clean": _batch("clean"),
    "build": _batch("build"),
    "exec": _batch("exec"),
    "code": lambda text: RunCode(source=text),
    "input": lambda text: FeedInput(text=text),
    "complete": _parse_complete,
    "interrupt": lambda _text: InterruptRun(),
    "status": lambda _text: StatusRequest(),
    "start-service": lambda text: StartService(info=parse_service_info(text)),
    "start-model-service": lambda text: StartModelService(model=parse_model_info(text)),
    "shutdown-service": lambda text: ShutdownService(name=_parse_name(text)),
    "get-apps": _parse_get_apps,
    "event": _parse_event,
}

OPS = frozenset(_PARSERS)
_LOSSLESS_TEXT_OPS = frozenset({"clean", "build", "exec", "code", "input"})
# The agent sends these empty; whatever they carry is never decoded, so `status` is answered whatever comes with it.
_IGNORED_PAYLOAD_OPS = frozenset({"status", "interrupt"})
PAYLOAD_LIMITS: Mapping[str, int] = {
    **{op: MAX_FRAME_BYTES for op in _LOSSLESS_TEXT_OPS | _IGNORED_PAYLOAD_OPS},
    "complete": MAX_COMPLETE_PAYLOAD_BYTES,
    "start-service": MAX_CONTROL_PAYLOAD_BYTES,
    "start-model-service": MAX_CONTROL_PAYLOAD_BYTES,
    "shutdown-service": MAX_CONTROL_PAYLOAD_BYTES,
    "get-apps": MAX_CONTROL_PAYLOAD_BYTES,
    "event": MAX_CONTROL_PAYLOAD_BYTES,
}


def size_text(size: int) -> str:
    return f"{size // MiB} MiB" if size >= MiB and size % MiB == 0 else f"{size} bytes"


def decode(frames: Sequence[bytes]) -> AgentRequest | BadFrame:
    """Never raises: anything malformed becomes a BadFrame with its reason (docs/protocol.md §2.2).

    Sizes are checked before anything is decoded, and JSON nesting before it is parsed (docs/protocol.md §2.7).
    """
    if len(frames) != 2:
        return BadFrame(reason=f"expected 2 frames, got {len(frames)}", frame_count=len(frames), op=None)
    op_frame, payload = frames
    if len(op_frame) > MAX_OP_BYTES:
        return BadFrame(reason=f"unknown op {excerpt(op_frame, MAX_OP_BYTES)}", frame_count=2, op=None)
    try:
        op = op_frame.decode("ascii")
    except UnicodeDecodeError:
        return BadFrame(reason=f"op frame is not ASCII: {excerpt(op_frame)}", frame_count=2, op=None)
    parser = _PARSERS.get(op)
    if parser is None:
        # The op is logged as is: a control character in it could forge a log line, so such an op is only quoted.
        return BadFrame(reason=f"unknown op {op!r}", frame_count=2, op=op if op.isprintable() else None)
    if len(payload) > PAYLOAD_LIMITS[op]:
        reason = f"payload of {len(payload)} bytes is over the {size_text(PAYLOAD_LIMITS[op])} limit for {op}"
        return BadFrame(reason=reason, frame_count=2, op=op, reply=bad_request_answer(op, reason))
    if op in _IGNORED_PAYLOAD_OPS:
        return parser("")
    # Commands, code and input keep undecodable bytes (surrogateescape) rather than being dropped as upstream does.
    errors = "surrogateescape" if op in _LOSSLESS_TEXT_OPS else "strict"
    try:
        text = payload.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        reason = f"payload is not UTF-8: {exc}"
        return BadFrame(reason=reason, frame_count=2, op=op, reply=bad_request_answer(op, reason))
    try:
        return parser(text)
    except PayloadError as exc:
        reason = f"invalid {op} payload: {exc}"
    except Exception as exc:  # noqa: BLE001 - a parser slip (a wrong type, nesting too deep) must not escape either
        reason = f"invalid {op} payload: {type(exc).__name__}: {excerpt(str(exc), quote=False)}"
    return BadFrame(reason=reason, frame_count=2, op=op, reply=bad_request_answer(op, reason))


def _json(value: Any) -> bytes:
    # Python's default encoder settings, as upstream (docs/protocol.md §2.5); ensure_ascii keeps payloads valid UTF-8.
    return json.dumps(value).encode("utf-8")


def _result(status: str, error: str | None) -> dict[str, Any]:
    return {"status": status} if error is None else {"status": status, "error": error}


def child_info_to_dict(info: ChildInfo, now: float) -> dict[str, Any]:
    return {
        "id": info.child_id,
        "state": info.state.value,
        "pid": info.pid,
        "restarts": info.restarts,
        "generation": info.generation,
        "last_exit": info.last_exit,
        "uptime_s": info.uptime_s(now),
        **({"extra": dict(info.extra)} if info.extra else {}),
    }


_UPTIME_KEY = msgpack.packb("uptime_s")
UPTIME_TICKS_PER_S = 100


class StatusEncoder:
    """`status` frames (docs/protocol.md §9.1): a msgpack map with `started_at`, plus the supervision tree under an
    extra `kernel_runner` key that old agents ignore.

    Each child's fixed fields are packed once per change of that child (ChildInfo values are immutable and replaced
    on every change); a request only packs the uptimes, so the reply costs little more with 100 children than with 2.
    """

    def __init__(self) -> None:
        self._packed: dict[ChildId, tuple[ChildInfo, bytes]] = {}
        self._last: tuple[Sequence[ChildInfo], bool, int, Frames, GenerationChoice | None] | None = None

    def encode(self, *, started_at: float, ready: bool, children: Sequence[ChildInfo], now: float,
               generation: GenerationChoice | None = None) -> Frames:
        """Uptimes are given to the 10 ms; within one such tick an unchanged tree is answered with the same bytes."""
        tick = int(now * UPTIME_TICKS_PER_S)
        last = self._last
        if (last is not None and last[0] is children and last[1] == ready and last[2] == tick
                and last[4] is generation):
            return last[3]
        frames = self._encode(started_at, ready, children, tick / UPTIME_TICKS_PER_S, generation)
        self._last = (children, ready, tick, frames, generation)
        return frames

    def _encode(self, started_at: float, ready: bool, children: Sequence[ChildInfo], now: float,
                generation: GenerationChoice | None) -> Frames:
        runner: dict[str, Any] = {"ready": ready}
        if generation is not None:
            runner["agent_generation"] = generation.as_status()  # docs/protocol.md §12.1
        runner["children"] = None
        parts = [
            msgpack.packb({"started_at": started_at, "kernel_runner": runner})[:-1]
        ]  # the body up to the children's placeholder (nil, the last byte), then the array itself
        parts.append(_array_header(len(children)))
        for child in children:
            parts.append(self._fixed_part(child))
            parts.append(_UPTIME_KEY)
            uptime = child.uptime_s(now)
            parts.append(b"\xc0" if uptime is None else struct.pack(">Bd", 0xCB, round(uptime, 2)))
        if len(self._packed) > 2 * len(children) + 16:
            alive = {child.child_id for child in children}
            self._packed = {key: value for key, value in self._packed.items() if key in alive}
        return [b"status", b"".join(parts)]

    def _fixed_part(self, child: ChildInfo) -> bytes:
        cached = self._packed.get(child.child_id)
        if cached is not None and cached[0] is child:
            return cached[1]
        fields = child_info_to_dict(child, 0.0)
        del fields["uptime_s"]
        packer = msgpack.Packer(use_bin_type=True)
        packed = packer.pack_map_header(len(fields) + 1) + b"".join(
            packer.pack(key) + packer.pack(value) for key, value in fields.items()
        )
        self._packed[child.child_id] = (child, packed)
        return packed


def _array_header(length: int) -> bytes:
    header: bytes = msgpack.Packer().pack_array_header(length)
    return header


def encode(message: ToAgent) -> Frames:
    match message:
        case Output():
            return [message.stream.encode("ascii"), message.data]
        case Finished():
            kind = "finished" if message.kind in ("exec", "code") else f"{message.kind}-finished"
            return [kind.encode("ascii"), _json({"exitCode": message.exit_code})]
        case Media():
            return [b"media", _json({"type": message.mime, "data": message.data})]
        case Html():
            return [b"html", message.html.encode("utf-8", errors="replace")]
        case WaitingInput():
            # Always JSON, also in batch mode (docs/protocol.md §10.1 item 7): clients learn is_password either way.
            return [b"waiting-input", _json({"is_password": message.is_password})]
        case ServiceResult():
            return [b"service-result", _json(_result(message.status, message.error))]
        case ModelServiceResult():
            return [b"model-service-result", _json(_result(message.status, message.error))]
        case ModelServiceStatus():
            return [
                b"model-service-status",
                _json({"model_name": message.model_name, "is_healthy": message.is_healthy}),
            ]
        case AppsResult():
            return [b"apps-result", _json({"status": "done", "data": [dict(app) for app in message.apps]})]
        case CompletionResult():
            # 25.10+ agents read `.get("suggestions")`; no older agent depended on another shape (docs/protocol.md §4.6).
            return [b"completion", _json({"suggestions": list(message.items)})]
        case LogRecord():
            return [b"log", message.text.encode("utf-8", errors="replace")]
    raise TypeError(f"not an outgoing message: {message!r}")


__all__ = [
    "OPS",
    "HealthCheck",
    "ModelServiceSpec",
    "PayloadError",
    "PrestartActionSpec",
    "ServiceOptions",
    "StatusEncoder",
    "converter",
    "decode",
    "encode",
    "parse_model_info",
    "parse_service_info",
]
