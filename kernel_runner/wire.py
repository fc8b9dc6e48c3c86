"""The agent protocol edge: two-frame messages decoded into typed requests and typed replies encoded into frames."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from typing import Any

import cattrs
import msgpack
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    AgentRequest,
    AppsResult,
    BadFrame,
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
from kernel_runner.supervision import ChildInfo

Frames = list[bytes]


class PayloadError(ValueError):
    """A payload that cannot become a typed request; the text names the bad field."""


def _build_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)

    def structure_command(value: Any, _type: Any) -> tuple[str, ...] | str:
        # Later upstream accepts a string run through the shell as well as an argv list (docs/protocol.md §7.5).
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            if not value:
                raise ValueError("start_command must not be empty")
            return tuple(value)
        raise ValueError("start_command must be a list of strings or a string")

    conv.register_structure_hook(tuple[str, ...] | str, structure_command)

    def structure_argument(value: Any, _type: Any) -> str | list[str] | None:
        # docs/protocol.md §6.1: an argument's value is a string, a list of strings, or null.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ValueError(f"expected a string, a list of strings or null, got {value!r}")

    conv.register_structure_hook(str | list[str] | None, structure_argument)

    def structure_strict_int(value: Any, _type: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def structure_strict_float(value: Any, _type: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)

    def structure_strict_str(value: Any, _type: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    conv.register_structure_hook(int, structure_strict_int)
    conv.register_structure_hook(float, structure_strict_float)
    conv.register_structure_hook(str, structure_strict_str)
    return conv


converter = _build_converter()


def _errors_text(exc: Exception) -> str:
    if isinstance(exc, (ClassValidationError, ForbiddenExtraKeysError)):
        return "; ".join(cattrs.transform_error(exc, path="$"))
    return str(exc)


def _structure_or_raise(data: Any, cls: type[Any]) -> Any:
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, ForbiddenExtraKeysError, ValueError, TypeError, KeyError) as exc:
        raise PayloadError(_errors_text(exc)) from exc


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(value).__name__}")
    return value


def parse_service_info(text: str) -> ServiceInfo:
    raw = _json_object(text)
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise PayloadError("options must be an object @ $.options")
    normalized = {
        "name": raw.get("name"),
        "port": raw.get("port"),
        "ports": tuple(raw.get("ports") or ()),
        "protocol": raw.get("protocol") or "tcp",
        "options": {"arguments": options.get("arguments"), "envs": options.get("envs")},
    }
    info: ServiceInfo = _structure_or_raise(normalized, ServiceInfo)
    return info


def parse_model_info(text: str) -> ModelInfo:
    raw = _json_object(text)
    service = raw.get("service")
    if isinstance(service, dict):
        actions = service.get("pre_start_actions")
        if actions is None:
            service = {**service, "pre_start_actions": []}
        health = service.get("health_check")
        if isinstance(health, dict):
            # The agent's schema turns missing optional numbers into null; null means "the default" (docs/protocol.md §7.1).
            service = {**service, "health_check": {k: v for k, v in health.items() if v is not None}}
        raw = {**raw, "service": service}
    model: ModelInfo = _structure_or_raise(raw, ModelInfo)
    _check_model_ranges(model)
    return model


def _check_model_ranges(model: ModelInfo) -> None:
    if not model.name:
        raise PayloadError("name must not be empty @ $.name")
    if model.service is None:
        return
    if not 0 < model.service.port < 65536:
        raise PayloadError(f"port must be 1..65535, got {model.service.port} @ $.service.port")
    check = model.service.health_check
    if check is None:
        return
    if check.max_retries < 1:
        raise PayloadError("max_retries must be >= 1 @ $.service.health_check.max_retries")
    if check.max_wait_time < 0:
        raise PayloadError("max_wait_time must be >= 0 @ $.service.health_check.max_wait_time")
    if check.expected_status_code < 100:
        raise PayloadError("expected_status_code must be >= 100 @ $.service.health_check.expected_status_code")
    if check.interval is not None and check.interval <= 0:
        raise PayloadError("interval must be > 0 @ $.service.health_check.interval")
    if check.initial_delay is not None and check.initial_delay < 0:
        raise PayloadError("initial_delay must be >= 0 @ $.service.health_check.initial_delay")


def _parse_shutdown_name(text: str) -> str:
    # docs/protocol.md §2.4: the payload is a JSON string such as "\"jupyter\"".
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise PayloadError(f"payload is not a JSON string: {exc}") from exc
    if not isinstance(value, str) or not value:
        raise PayloadError(f"payload must be a non-empty JSON string, got {value!r}")
    return value


def _parse_complete(text: str) -> CompleteCode:
    raw = _json_object(text)
    code = raw.get("code", "")
    if not isinstance(code, str):
        raise PayloadError("code must be a string @ $.code")
    return CompleteCode(code=code, options={k: v for k, v in raw.items() if k != "code"})


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
    "shutdown-service": lambda text: ShutdownService(name=_parse_shutdown_name(text)),
    "get-apps": lambda text: GetApps(name=text or None),
}

OPS = frozenset(_PARSERS)
_LOSSLESS_TEXT_OPS = frozenset({"clean", "build", "exec", "code", "input"})


def _failure_reply(op: str, error: str) -> ToAgent | None:
    """Ops whose protocol has a reply get a `failed` one, so the agent never waits for nothing (docs/protocol.md §3.6)."""
    if op == "start-service":
        return ServiceResult(status="failed", error=error)
    if op == "start-model-service":
        return ModelServiceResult(status="failed", error=error)
    if op == "complete":
        return CompletionResult(items=())
    if op == "get-apps":
        return AppsResult(apps=())
    return None


def decode(frames: Sequence[bytes]) -> AgentRequest | BadFrame:
    """Never raises: anything malformed becomes a BadFrame with its reason (docs/protocol.md §2.2)."""
    if len(frames) != 2:
        return BadFrame(reason=f"expected 2 frames, got {len(frames)}", frame_count=len(frames), op=None)
    try:
        op = frames[0].decode("ascii")
    except UnicodeDecodeError:
        return BadFrame(reason="op frame is not ASCII", frame_count=2, op=None)
    parser = _PARSERS.get(op)
    if parser is None:
        return BadFrame(reason=f"unknown op {op!r}", frame_count=2, op=op)
    # Commands, code and input keep undecodable bytes (surrogateescape) rather than being dropped as upstream does.
    errors = "surrogateescape" if op in _LOSSLESS_TEXT_OPS else "strict"
    try:
        text = frames[1].decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        reason = f"payload is not UTF-8: {exc}"
        return BadFrame(reason=reason, frame_count=2, op=op, reply=_failure_reply(op, reason))
    try:
        return parser(text)
    except PayloadError as exc:
        reason = f"invalid {op} payload: {exc}"
    except Exception as exc:  # noqa: BLE001 - a parser slip (a wrong type, nesting too deep) must not escape either
        reason = f"invalid {op} payload: {type(exc).__name__}: {str(exc)[:200]}"
    return BadFrame(reason=reason, frame_count=2, op=op, reply=_failure_reply(op, reason))


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
        self._last: tuple[Sequence[ChildInfo], bool, int, Frames] | None = None

    def encode(self, *, started_at: float, ready: bool, children: Sequence[ChildInfo], now: float) -> Frames:
        """Uptimes are given to the 10 ms; within one such tick an unchanged tree is answered with the same bytes."""
        tick = int(now * UPTIME_TICKS_PER_S)
        last = self._last
        if last is not None and last[0] is children and last[1] == ready and last[2] == tick:
            return last[3]
        frames = self._encode(started_at, ready, children, tick / UPTIME_TICKS_PER_S)
        self._last = (children, ready, tick, frames)
        return frames

    def _encode(self, started_at: float, ready: bool, children: Sequence[ChildInfo], now: float) -> Frames:
        parts = [
            msgpack.packb({"started_at": started_at, "kernel_runner": {"ready": ready, "children": None}})[:-1]
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
            return [b"completion", _json(list(message.items))]
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
