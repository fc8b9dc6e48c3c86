"""The service-definition JSON schema (docs/protocol.md §6.3, §6.5) as frozen attrs classes, parsed by one cattrs converter."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, ClassVar, Literal, NewType, NoReturn, Union, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn
from cattrs.v import format_exception as cattrs_format_exception

from kernel_runner.excerpts import excerpt
from kernel_runner.messages import Bounds
from kernel_runner.servicedefs.errors import DefinitionError, InvalidServiceDefinition
from kernel_runner.servicedefs.template import split_problem, template_problem

_MAX_PROBLEMS = 20
_MAX_PROBLEM_CHARS = 400
# Template variables every start request provides (docs/protocol.md §6.4); prestart refs and catalog variables add to these.
BASE_VARIABLES: tuple[str, ...] = ("ports", "runtime_path")

RestartPolicyName = Literal["permanent", "transient", "temporary"]
# A run_command piece: upstream converts each piece to text before interpolating it (docs/protocol.md §6.5).
CommandPiece = NewType("CommandPiece", str)
# An octal permission string such as "644"; upstream raised TypeError on a JSON number (docs/protocol.md §6.5).
FileMode = NewType("FileMode", str)
# default_arguments values (docs/protocol.md §6.6 step 2.3): text, a list of texts, or None for a bare flag.
ArgValue = Union[str, tuple[str, ...], None]
# docs/protocol.md §6.3 `command`: an argument list, or (since 24.12) one string run by `shell` or split into words.
Command = Union[str, tuple[str, ...]]
# The definition's default `shell` (upstream's, found on the service's PATH); a model's default is /bin/bash (§7.1).
DEFAULT_SHELL = "bash"


# docs/protocol.md §6.3 `restart`: each becomes a timer or a count of the supervisor's, so each has a ceiling too.
RESTART_BOUNDS: Mapping[str, Bounds] = {
    "max_restarts": Bounds(low=0, high=1000),
    "period_s": Bounds(low=0, high=86400, low_open=True, unit="s"),
    "backoff_initial_s": Bounds(low=0, high=3600, unit="s"),
    "backoff_cap_s": Bounds(low=0, high=3600, unit="s"),
}


# docs/protocol.md §6.14: a probe's numbers; each becomes a timer or a count. A period below 50 ms (the probe floor)
# would only burn CPU.
PROBE_BOUNDS: Mapping[str, Bounds] = {
    "period_s": Bounds(low=0.05, high=3600, unit="s"),
    "timeout_s": Bounds(low=0, high=600, low_open=True, unit="s"),
    "failure_threshold": Bounds(low=1, high=1000),
    "success_threshold": Bounds(low=1, high=1000),
    "initial_delay_s": Bounds(low=0, high=86400, unit="s"),
}
PROBE_PORT_BOUNDS = Bounds(low=1, high=65535)
HTTP_STATUS_BOUNDS = Bounds(low=100, high=599)
MAX_PROBE_PATH_CHARS = 2048  # put in a URL and in log lines
_URL_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def _quoted(value: object) -> str:
    # A model's pre_start_actions come over the wire (docs/protocol.md §2.8): a value may be a megabyte long.
    return excerpt(value) if isinstance(value, str) else excerpt(repr(value), quote=False)


class SchemaError(ValueError):
    """A value the schema rejects; its text is shown to the image author as is."""


class UnknownAction(SchemaError):
    """A prestart action outside the five whitelisted ones (docs/protocol.md §6.5, §10.4 item 32)."""

    def __init__(self, action: object) -> None:
        super().__init__(f"unknown action {_quoted(action)}; known actions: {', '.join(ACTION_NAMES)}")
        self.action = action


# --------------------------------------------------------------------------------------------
# Prestart actions (docs/protocol.md §6.5): {"action": <name>, "args": {...}, "ref": <name>?}
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WriteFileArgs:
    filename: str
    body: tuple[str, ...]
    mode: FileMode = FileMode("644")  # the code's default; upstream docs wrongly say "755" (docs/protocol.md §6.5)
    append: bool = False


@attrs.frozen(kw_only=True)
class WriteTempfileArgs:
    body: tuple[str, ...]
    mode: FileMode = FileMode("644")


@attrs.frozen(kw_only=True)
class RunCommandArgs:
    command: tuple[CommandPiece, ...]


@attrs.frozen(kw_only=True)
class MkdirArgs:
    path: str


@attrs.frozen(kw_only=True)
class LogArgs:
    message: str  # upstream docs call it `body`; the code reads `message` (docs/protocol.md §6.5)
    debug: bool = False


@attrs.frozen(kw_only=True)
class WriteFile:
    ACTION: ClassVar[str] = "write_file"
    args: WriteFileArgs
    ref: str | None = None


@attrs.frozen(kw_only=True)
class WriteTempfile:
    ACTION: ClassVar[str] = "write_tempfile"
    args: WriteTempfileArgs
    ref: str | None = None


@attrs.frozen(kw_only=True)
class RunCommand:
    ACTION: ClassVar[str] = "run_command"
    args: RunCommandArgs
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Mkdir:
    ACTION: ClassVar[str] = "mkdir"
    args: MkdirArgs
    ref: str | None = None


@attrs.frozen(kw_only=True)
class Log:
    ACTION: ClassVar[str] = "log"
    args: LogArgs
    ref: str | None = None


PrestartAction = Union[WriteFile, WriteTempfile, RunCommand, Mkdir, Log]
_ACTION_CLASSES: dict[str, type[WriteFile | WriteTempfile | RunCommand | Mkdir | Log]] = {
    cls.ACTION: cls for cls in (WriteFile, WriteTempfile, RunCommand, Mkdir, Log)
}
ACTION_NAMES: tuple[str, ...] = tuple(_ACTION_CLASSES)


# --------------------------------------------------------------------------------------------
# The definition itself (docs/protocol.md §6.3) plus the kernel-runner-only `restart` key
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RestartOverride:
    """Optional per-service supervision knobs; absent fields fall back to RunnerConfig.restart (docs/architecture.md §4)."""

    policy: RestartPolicyName | None = None
    max_restarts: int | None = None
    period_s: float | None = None
    backoff_initial_s: float | None = None
    backoff_cap_s: float | None = None


@attrs.frozen(kw_only=True)
class HttpCheck:
    """A probe's `http`: GET 127.0.0.1:<port><path>; passes on `expected_status`, or on any 2xx/3xx without one."""

    path: str = "/"
    port: int | None = None  # None: the service's port
    expected_status: int | None = None


@attrs.frozen(kw_only=True)
class TcpCheck:
    """A probe's `tcp`: passes when 127.0.0.1:<port> accepts a connection."""

    port: int | None = None  # None: the service's port


@attrs.frozen(kw_only=True)
class ExecCheck:
    """A probe's `exec`: passes when the command exits 0; each element is a template of the start's variables."""

    command: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ProbeDefinition:
    """One probe (docs/protocol.md §6.14): exactly one of http, tcp, exec, and Kubernetes' numbers and defaults."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    exec: ExecCheck | None = None
    period_s: float = 10.0
    timeout_s: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay_s: float = 0.0


@attrs.frozen(kw_only=True)
class ProbeDefinitions:
    """A definition's `probes`; a probe that is absent or null is off."""

    startup: ProbeDefinition | None = None
    liveness: ProbeDefinition | None = None
    readiness: ProbeDefinition | None = None


@attrs.frozen(kw_only=True)
class ServiceDefinition:
    """One `/etc/backend.ai/service-defs/<name>.json`; the name is the file stem and not stored here."""

    command: Command
    # Runs a string command as `[shell, "-c", command]`; null or "" splits it into words instead (docs/protocol.md §6.3).
    shell: str | None = DEFAULT_SHELL
    noop: bool = False
    url_template: str = ""
    prestart_actions: tuple[PrestartAction, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    allowed_envs: tuple[str, ...] = ()
    allowed_arguments: tuple[str, ...] = ()
    default_arguments: Mapping[str, ArgValue] = attrs.field(factory=dict)
    restart: RestartOverride | None = None
    probes: ProbeDefinitions | None = None

    def refs(self) -> tuple[str, ...]:
        """Names the prestart actions define, in order (docs/protocol.md §6.5 `ref`)."""
        return tuple(action.ref for action in self.prestart_actions if action.ref is not None)


# --------------------------------------------------------------------------------------------
# The converter: strict scalars, no string-as-sequence, whitelisted actions, readable messages
# --------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _structure_str(value: object, _type: object) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"expected a string, got {_kind(value)}")
    return value


def _structure_bool(value: object, _type: object) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(f"expected true or false, got {_kind(value)}")
    return value


def _structure_int(value: object, _type: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"expected an integer, got {_kind(value)}")
    return value


def _structure_float(value: object, _type: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"expected a finite number, got {_kind(value)}")
    return float(value)


def _structure_command_piece(value: object, _type: object) -> CommandPiece:
    # docs/protocol.md §6.5: run_command converts each piece to text; containers and null are surely mistakes.
    if value is None or isinstance(value, list | dict):
        raise SchemaError(f"expected a string or number, got {_kind(value)}")
    return CommandPiece(value if isinstance(value, str) else str(value))


_OCTAL_MODE = re.compile(r"^[0-7]{3,4}$")


def _structure_file_mode(value: object, _type: object) -> FileMode:
    if not isinstance(value, str) or not _OCTAL_MODE.match(value):
        raise SchemaError(f'mode must be an octal string such as "644", got {_quoted(value)}')
    return FileMode(value)


def _structure_arg_value(value: object, _type: object) -> ArgValue:
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise SchemaError("a list argument value must hold only strings")
        return tuple(value)
    if isinstance(value, bool | int | float):
        # docs/protocol.md §6.6 step 2.3: any other value gives a bare flag; kept for compatibility with upstream files.
        return None
    raise SchemaError(f"expected a string, a list of strings or null, got {_kind(value)}")


def _structure_optional_str(value: object, _type: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SchemaError(f"expected a string or null, got {_kind(value)}")
    return value


def _is_homogeneous_tuple(tp: Any) -> bool:
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _strict_tuple_factory(tp: Any, converter: cattrs.Converter) -> Callable[[object, Any], tuple[Any, ...]]:
    inner = homogenous_tuple_structure_factory(tp, converter)

    def structure(value: object, cl: Any) -> tuple[Any, ...]:
        # cattrs would turn "abc" into ("a", "b", "c"), the same trap as docs/protocol.md §10.5 item 43.
        if not isinstance(value, list):
            raise SchemaError(f"expected a list, got {_kind(value)}")
        return cast(tuple[Any, ...], inner(value, cl))

    return structure


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _literal_factory(tp: Any, _converter: cattrs.Converter) -> Callable[[object, Any], object]:
    choices = get_args(tp)

    def structure(value: object, _cl: Any) -> object:
        if value not in choices or isinstance(value, bool):
            raise SchemaError(f"expected one of {', '.join(repr(c) for c in choices)}, got {_quoted(value)}")
        return value

    return structure


def _object(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"expected an object, got {_kind(value)}")
    return value


def _restart_hook(converter: cattrs.Converter) -> Callable[[object, Any], RestartOverride]:
    generated = make_dict_structure_fn(RestartOverride, converter)

    def structure(value: object, cl: Any) -> RestartOverride:
        result = generated(_object(value), cl)
        for field, bounds in RESTART_BOUNDS.items():
            number = getattr(result, field)
            problem = None if number is None else bounds.problem(number)
            if problem is not None:
                raise SchemaError(f"{field} {problem}")
        initial, cap = result.backoff_initial_s, result.backoff_cap_s
        if initial is not None and cap is not None and cap < initial:
            raise SchemaError("backoff_cap_s must not be smaller than backoff_initial_s")
        return result

    return structure


def _probe_hook(converter: cattrs.Converter) -> Callable[[object, Any], ProbeDefinition]:
    generated = make_dict_structure_fn(ProbeDefinition, converter)

    def structure(value: object, cl: Any) -> ProbeDefinition:
        result = generated(_object(value), cl)
        kinds = [kind for kind in ("http", "tcp", "exec") if getattr(result, kind) is not None]
        if len(kinds) != 1:
            given = f"got {' and '.join(kinds)}" if kinds else "got none"
            raise SchemaError(f"a probe needs exactly one of http, tcp or exec, {given}")
        for field, bounds in PROBE_BOUNDS.items():
            problem = bounds.problem(getattr(result, field))
            if problem is not None:
                raise SchemaError(f"{field} {problem}")
        return result

    return structure


def _http_check_hook(converter: cattrs.Converter) -> Callable[[object, Any], HttpCheck]:
    generated = make_dict_structure_fn(HttpCheck, converter)

    def structure(value: object, cl: Any) -> HttpCheck:
        result = generated(_object(value), cl)
        path = result.path
        if not path.startswith("/") or len(path) > MAX_PROBE_PATH_CHARS or _URL_UNSAFE.search(path):
            raise SchemaError(f"path must start with / and be at most {MAX_PROBE_PATH_CHARS} characters without spaces "
                              f"or control characters, got {_quoted(path)}")
        _check_probe_port(result.port)
        status = result.expected_status
        problem = None if status is None else HTTP_STATUS_BOUNDS.problem(status)
        if problem is not None:
            raise SchemaError(f"expected_status {problem}")
        return result

    return structure


def _tcp_check_hook(converter: cattrs.Converter) -> Callable[[object, Any], TcpCheck]:
    generated = make_dict_structure_fn(TcpCheck, converter)

    def structure(value: object, cl: Any) -> TcpCheck:
        result = generated(_object(value), cl)
        _check_probe_port(result.port)
        return result

    return structure


def _exec_check_hook(converter: cattrs.Converter) -> Callable[[object, Any], ExecCheck]:
    generated = make_dict_structure_fn(ExecCheck, converter)

    def structure(value: object, cl: Any) -> ExecCheck:
        result = generated(_object(value), cl)
        if not result.command:
            raise SchemaError("command must name a program: an empty list runs nothing")
        return result

    return structure


def _check_probe_port(port: int | None) -> None:
    problem = None if port is None else PROBE_PORT_BOUNDS.problem(port)
    if problem is not None:
        raise SchemaError(f"port {problem}")


def _probes_hook(converter: cattrs.Converter) -> Callable[[object, Any], ProbeDefinitions]:
    generated = make_dict_structure_fn(ProbeDefinitions, converter)

    def structure(value: object, cl: Any) -> ProbeDefinitions:
        result = generated(_object(value), cl)
        for name in ("startup", "liveness"):
            probe: ProbeDefinition | None = getattr(result, name)
            if probe is not None and probe.success_threshold != 1:
                # Kubernetes' rule: one pass ends a startup probe, and a live service needs no streak to stay alive.
                raise SchemaError(f"{name}.success_threshold must be 1 (only a readiness probe may ask for more "
                                  f"passes in a row), got {probe.success_threshold}")
        return result

    return structure


def _definition_hook(converter: cattrs.Converter) -> Callable[[object, Any], ServiceDefinition]:
    generated = make_dict_structure_fn(ServiceDefinition, converter)

    def structure(value: object, cl: Any) -> ServiceDefinition:
        if not isinstance(value, Mapping):
            raise SchemaError(f"a service definition must be a JSON object, got {_kind(value)}")
        if "prestart" in value:
            if "prestart_actions" in value:
                raise SchemaError('both "prestart" and "prestart_actions" are given; they are aliases (docs/protocol.md §6.3)')
            # docs/protocol.md §6.3: `prestart` is renamed to `prestart_actions`.
            value = {("prestart_actions" if key == "prestart" else key): item for key, item in value.items()}
        result = generated(value, cl)
        empty = not result.command.strip() if isinstance(result.command, str) else not result.command
        if empty and not result.noop:
            # Upstream tried to spawn an empty argv (docs/protocol.md §6.7); say so instead of failing at every start.
            raise SchemaError('"command" is empty; set "noop": true for a service with nothing to run')
        return result

    return structure


def make_converter() -> cattrs.Converter:
    """The one converter for service definitions (design R6): unknown keys are errors, as upstream's TypeError."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(CommandPiece, _structure_command_piece)
    converter.register_structure_hook(FileMode, _structure_file_mode)
    converter.register_structure_hook_func(lambda tp: tp == ArgValue, _structure_arg_value)
    converter.register_structure_hook_func(lambda tp: tp == (str | None), _structure_optional_str)
    converter.register_structure_hook_factory(_is_homogeneous_tuple, _strict_tuple_factory)
    converter.register_structure_hook_factory(_is_literal, _literal_factory)

    def structure_action(value: object, _type: object) -> PrestartAction:
        # A tagged union on "action" (docs/protocol.md §6.5); unlike upstream's getattr lookup only the five names exist.
        if not isinstance(value, Mapping):
            raise SchemaError(f"a prestart action must be an object, got {_kind(value)}")
        if "action" not in value:
            raise SchemaError(f'missing "action" (one of {", ".join(ACTION_NAMES)})')
        name = value["action"]
        cls = _ACTION_CLASSES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise UnknownAction(name)
        rest = {key: item for key, item in value.items() if key != "action"}
        return converter.structure(rest, cls)

    converter.register_structure_hook_func(lambda tp: tp == PrestartAction, structure_action)

    def structure_command(value: object, _type: object) -> Command:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return converter.structure(value, tuple[str, ...])  # each element's own path on error
        raise SchemaError(f"expected a string or a list of strings, got {_kind(value)}")

    converter.register_structure_hook_func(lambda tp: tp == Command, structure_command)
    converter.register_structure_hook(RestartOverride, _restart_hook(converter))
    converter.register_structure_hook(HttpCheck, _http_check_hook(converter))
    converter.register_structure_hook(TcpCheck, _tcp_check_hook(converter))
    converter.register_structure_hook(ExecCheck, _exec_check_hook(converter))
    converter.register_structure_hook(ProbeDefinition, _probe_hook(converter))
    converter.register_structure_hook(ProbeDefinitions, _probes_hook(converter))
    converter.register_structure_hook(ServiceDefinition, _definition_hook(converter))
    return converter


CONVERTER = make_converter()


def _format_exception(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, SchemaError):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        extra = ", ".join(repr(key) for key in sorted(exc.extra_fields))
        allowed = ", ".join(field.name for field in attrs.fields(exc.cl)) if attrs.has(exc.cl) else "?"
        return f"unknown key {extra} (allowed: {allowed})"
    if isinstance(exc, KeyError):
        return "required key missing"
    return cattrs_format_exception(exc, tp)


def _walk(exc: BaseException) -> Iterator[BaseException]:
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _walk(inner)


def parse_definition(
    raw: object,
    *,
    name: str,
    source: str,
    known_variables: Collection[str] = BASE_VARIABLES,
    path_aliases: Mapping[str, str] | None = None,
) -> ServiceDefinition:
    """Structure and check one definition; every problem becomes `<source>: <message> @ $.path`.

    Raises:
        DefinitionError: with all problems found and the reply a start request for `name` should get.
    """
    aliases = dict(path_aliases or {})
    if isinstance(raw, Mapping) and "prestart" in raw:
        # The converter renames `prestart` (docs/protocol.md §6.3); errors keep naming the key the file used.
        aliases.setdefault("$.prestart_actions", "$.prestart")
    try:
        definition = CONVERTER.structure(raw, ServiceDefinition)
    except Exception as exc:  # noqa: BLE001 - every structuring failure is reported, none escapes
        lines = validation_lines(exc)
        unknown = [inner.action for inner in _walk(exc) if isinstance(inner, UnknownAction)]
        _fail(name, source, [_alias(line, aliases) for line in lines], unknown_action=unknown[0] if unknown else None)
    problems = [_alias(line, aliases) for line in template_problems(definition, known_variables)]
    if problems:
        _fail(name, source, problems)
    return definition


def template_problems(definition: ServiceDefinition, known_variables: Collection[str]) -> list[str]:
    """Templates that would fail at every start (docs/protocol.md §6.4): bad syntax or a name nothing defines.

    Each action sees the variables plus the refs of the actions before it; command and env see all refs.
    """
    known = set(known_variables)
    problems: list[str] = []

    def check(template: str, path: str) -> None:
        problem = template_problem(template, known)
        if problem is not None:
            problems.append(f"{problem} @ {path}")

    for index, action in enumerate(definition.prestart_actions):
        for template, path in _action_templates(action):
            check(template, f"$.prestart_actions[{index}].args{path}")
        if action.ref is not None:
            known.add(action.ref)
    if isinstance(definition.command, str):
        # docs/protocol.md §6.3: run by the shell, or split into words when there is none.
        problem = (template_problem if definition.shell else split_problem)(definition.command, known)
        if problem is not None:
            problems.append(f"{problem} @ $.command")
    else:
        for index, part in enumerate(definition.command):
            check(part, f"$.command[{index}]")
    for key, value in definition.env.items():
        check(key, f"$.env[{key!r}]")
        check(value, f"$.env[{key!r}]")
    # An exec probe is rendered when the start is planned, before any prestart action: no refs (docs/protocol.md §6.14).
    for name, template, path in probe_templates(definition.probes):
        problem = template_problem(template, set(known_variables))
        if problem is not None:
            problems.append(f"{problem} (a probe sees no prestart refs) @ $.probes.{name}{path}")
    return problems


def probe_templates(probes: ProbeDefinitions | None) -> Iterator[tuple[str, str, str]]:
    """(probe name, template, path below the probe) of every exec probe's command element."""
    if probes is None:
        return
    for name in ("startup", "liveness", "readiness"):
        probe: ProbeDefinition | None = getattr(probes, name)
        if probe is not None and probe.exec is not None:
            yield from ((name, part, f".exec.command[{i}]") for i, part in enumerate(probe.exec.command))


def _action_templates(action: PrestartAction) -> Iterator[tuple[str, str]]:
    # docs/protocol.md §6.4 "Interpolated": which action arguments are templates.
    match action:
        case WriteFile(args=args):
            yield args.filename, ".filename"
            yield from ((line, f".body[{i}]") for i, line in enumerate(args.body))
        case WriteTempfile(args=args):
            yield from ((line, f".body[{i}]") for i, line in enumerate(args.body))
        case RunCommand(args=args):
            yield from ((piece, f".command[{i}]") for i, piece in enumerate(args.command))
        case Mkdir(args=args):
            yield args.path, ".path"
        case Log(args=args):
            yield args.message, ".message"


def validation_lines(exc: BaseException, *, path: str = "$") -> list[str]:
    """`<message> @ <json path>` for every problem a structuring attempt hit (design R6)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return cattrs.transform_error(exc, path=path, format_exception=_format_exception)
    return [f"{_format_exception(exc, None)} @ {path}"]


def _alias(line: str, aliases: Mapping[str, str]) -> str:
    message, sep, path = line.rpartition(" @ ")
    if not sep:
        return line
    for old in sorted(aliases, key=len, reverse=True):
        if path == old or path.startswith((old + ".", old + "[")):
            return f"{message} @ {aliases[old]}{path[len(old) :]}"
    return line


def _fail(name: str, source: str, lines: list[str], *, unknown_action: object = None) -> NoReturn:
    # Each line is kept short and so is their number: a model's definition comes over the wire (a JSON path quotes
    # its keys), and each problem becomes a log line.
    shown = [excerpt(line, _MAX_PROBLEM_CHARS, quote=False) for line in lines[:_MAX_PROBLEMS]]
    if len(lines) > _MAX_PROBLEMS:
        shown.append(f"and {len(lines) - _MAX_PROBLEMS} more problem(s)")
    problems = tuple(f"{source}: {line}" for line in shown)
    if unknown_action is not None:
        # docs/protocol.md §6.2 step 11: upstream's exact reply for a non-whitelisted action.
        action = excerpt(str(unknown_action), quote=False)
        reply = repr(InvalidServiceDefinition(f"Service-def for {name} used invalid action: {action}"))
    else:
        reply = repr(InvalidServiceDefinition(f"Service-def for {name} is invalid: {shown[0]}"))
    raise DefinitionError(problems, reply=reply)
