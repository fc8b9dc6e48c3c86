"""The service catalog: loads definitions, answers get-apps, and turns a start request into a launch plan.

See docs/protocol.md §6.2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from kernel_runner.excerpts import excerpt
from kernel_runner.messages import ModelInfo, ServiceInfo, ServiceOptions
from kernel_runner.procs.childenv import strip_runner_libraries
from kernel_runner.servicedefs.errors import (
    DefinitionError,
    DisallowedArgument,
    DisallowedEnvironment,
    InvalidServiceDefinition,
    ServiceStartError,
)
from kernel_runner.servicedefs.intrinsic import IntrinsicLauncher
from kernel_runner.servicedefs.legacy import LegacyRow, LegacyTable, bundled_legacy
from kernel_runner.servicedefs.prestart import DEFAULT_COMMAND_TIMEOUT_S, PrestartLog, run_prestart
from kernel_runner.servicedefs.schema import (
    BASE_VARIABLES,
    Command,
    ExecCheck,
    PrestartAction,
    ProbeDefinitions,
    RestartOverride,
    ServiceDefinition,
    parse_definition,
)
from kernel_runner.servicedefs.template import interpolate, interpolate_argument, split_template

# docs/protocol.md §6.2 step 8: the krunner's private libraries would break the image's own binaries.

# "model": a definition that came over the wire (start-model-service), so its prestart actions are confined
# (docs/protocol.md §2.8); the others come from the image.
LaunchOrigin = Literal["intrinsic", "definition", "legacy", "model"]
UNSUPPORTED = "unsupported service"  # upstream's text for a name nothing defines (docs/protocol.md §6.2 step 7)


@attrs.frozen
class Refusal:
    """A start the catalog turns down: `reason` is what the start's `failed` answer says (upstream's text where it has
    one, docs/protocol.md §6.2 step 11)."""

    reason: str


@attrs.frozen
class Preopened:
    """protocol `preopen` (docs/protocol.md §6.2 step 1): the user or the image runs the process, so nothing starts and
    the start is answered `started` at once."""


@attrs.frozen(kw_only=True)
class ServiceCommand:
    """What to spawn: argv (no shell), the full environment and the working directory (docs/protocol.md §6.2 step 9)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path


@attrs.frozen
class DefaultArgument:
    """A flag or value from a definition's default_arguments: a template in argument mode (docs/protocol.md §6.4).

    User flags and values stay plain strings, never templates (docs/protocol.md §2.8).
    """

    template: str


@attrs.frozen(kw_only=True)
class ServiceLaunch:
    """A start request that passed every check; what is left needs I/O: prestart actions, then spawning.

    The argv cannot be final yet, because templates may use refs that only the prestart actions produce
    (docs/protocol.md §6.4, e.g. `--config {jupyter_config}`). Call `prepare()` (prestart + render) or `render(refs)`.
    """

    name: str
    origin: LaunchOrigin
    cwd: Path
    # Where prestart actions resolve relative paths and are confined (docs/protocol.md §2.8, §6.5); None: `cwd`. A
    # model server runs in its model folder while its actions stay in the work dir.
    prestart_dir: Path | None = None
    # The port to wait for (docs/protocol.md §6.2 step 10); None means the program listens on none, so do not wait.
    port: int | None
    # docs/protocol.md §6.7 fix: reply started, spawn nothing, run no prestart actions.
    noop: bool = False
    prestart: tuple[PrestartAction, ...] = ()
    # Template variables before prestart refs are added: ports, runtime_path and the catalog's own.
    variables: Mapping[str, Any] = attrs.field(factory=dict)
    restart: RestartOverride | None = None
    # Templates (docs/protocol.md §6.4): an argument list, or one string for `shell` (docs/protocol.md §6.3).
    command: Command = ()
    # None or "": a string command is split into words and run without a shell.
    shell: str | None = None
    # Appended after the command: default arguments render as templates, plain strings (user values, an intrinsic's
    # argv) as they are (docs/protocol.md §6.4 "Not interpolated").
    arguments: tuple[str | DefaultArgument, ...] = ()
    # The definition's env; keys and values are templates.
    env_templates: Mapping[str, str] = attrs.field(factory=dict)
    # User-supplied values, already checked against allowed_envs and the frozen names (docs/protocol.md §6.6 step 3).
    user_env: Mapping[str, str] = attrs.field(factory=dict)
    # child_env (docs/protocol.md §1.4), under everything else.
    base_env: Mapping[str, str] = attrs.field(factory=dict)
    # Health probes (docs/protocol.md §6.14), exec commands already rendered; None: nothing is probed.
    probes: ProbeDefinitions | None = None

    @property
    def prestart_env(self) -> Mapping[str, str]:
        """The environment for run_command (upstream used the runner's own os.environ, docs/protocol.md §10.4 item 34)."""
        return strip_runner_libraries(self.base_env)

    def render(self, refs: Mapping[str, Any] | None = None) -> ServiceCommand:
        """Interpolate with the variables plus the prestart refs.

        Raises:
            TemplateError: a template failed at render time (an index out of range, a missing item).
        """
        scope = {**self.variables, **(refs or {})}
        argv = _command_argv(self.command, self.shell, scope) + tuple(
            interpolate_argument(part.template, scope) if isinstance(part, DefaultArgument) else part
            for part in self.arguments
        )
        env = dict(self.base_env)
        env.update({interpolate(key, scope): interpolate(value, scope) for key, value in self.env_templates.items()})
        env.update(self.user_env)  # user values win over the definition's (docs/protocol.md §6.6 step 3.2)
        return ServiceCommand(argv=argv, env=strip_runner_libraries(env), cwd=self.cwd)

    def prepare(self, *, log: PrestartLog, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> ServiceCommand:
        """Run the prestart actions (blocking, each command bounded) and render; noop gives an empty argv.

        Raises:
            ServiceStartError: reply `{"status": "failed", "error": exc.reply_text}`.
        """
        if self.noop:
            return ServiceCommand(argv=(), env=strip_runner_libraries(self.base_env), cwd=self.cwd)
        refs = run_prestart(
            self.prestart, env=self.prestart_env, work_dir=self.prestart_dir or self.cwd, variables=self.variables, log=log,
            timeout_s=timeout_s, confined=self.origin == "model",
        )
        return self.render(refs)


@attrs.frozen(kw_only=True)
class BrokenDefinition:
    """A file that failed to load: skipped, but a start request for its name says why (upstream aborted)."""

    name: str
    problems: tuple[str, ...]
    reply: str


@attrs.frozen(kw_only=True)
class ServiceCatalog:
    """Every way a service name can be started, in upstream's precedence (docs/protocol.md §6.2 step 5-7).

    Immutable: `with_definition`/`with_model_service` return a new catalog, so one actor can own the current
    value and hand copies to others without locks.
    """

    # Insertion order is the get-apps order: files, then model services as they are added (docs/protocol.md §6.8).
    definitions: Mapping[str, ServiceDefinition] = attrs.field(factory=dict)
    broken: Mapping[str, BrokenDefinition] = attrs.field(factory=dict)
    # Upstream had a parser only if the service-defs folder existed; without it get-apps data is [] (docs/protocol.md §6.8).
    has_parser: bool = False
    # Extra template variables for every definition (upstream's parser variables besides ports/runtime_path).
    variables: Mapping[str, Any] = attrs.field(factory=dict)
    legacy: LegacyTable = attrs.field(factory=bundled_legacy)
    # Names registered by start-model-service: their definitions came over the wire (docs/protocol.md §2.8).
    model_services: frozenset[str] = frozenset()

    def known_variables(self) -> tuple[str, ...]:
        return (*BASE_VARIABLES, *self.variables)

    def apps(self, name: str | None) -> list[dict[str, Any]]:
        """The get-apps data (docs/protocol.md §6.8): name, then url_template/allowed_arguments/allowed_envs when non-empty."""
        if not self.has_parser:
            return []
        if name:
            selected = [(name, self.definitions[name])] if name in self.definitions else []
        else:
            selected = list(self.definitions.items())
        apps: list[dict[str, Any]] = []
        for app_name, definition in selected:
            app: dict[str, Any] = {"name": app_name}
            if definition.url_template:
                app["url_template"] = definition.url_template
            if definition.allowed_arguments:
                app["allowed_arguments"] = list(definition.allowed_arguments)
            if definition.allowed_envs:
                app["allowed_envs"] = list(definition.allowed_envs)
            apps.append(app)  # noop and command are never exposed
        return apps

    def with_definition(self, name: str, definition: ServiceDefinition) -> ServiceCatalog:
        """Add or replace one definition (an image's); a replaced name keeps its get-apps position, as a dict assignment."""
        definitions = dict(self.definitions)
        definitions[name] = definition
        broken = {key: value for key, value in self.broken.items() if key != name}
        return attrs.evolve(self, definitions=definitions, broken=broken, has_parser=True,
                            model_services=self.model_services - {name})

    def with_model_service(self, model: ModelInfo) -> tuple[ServiceCatalog, ServiceInfo]:
        """Register `<name>-<port>` (docs/protocol.md §7.2 step 2) and return the fixed request to resolve it with (step 3).

        Unlike 23.3.5, a catalog without a service-defs folder accepts it (its missing parser lost the reply).

        Raises:
            DefinitionError: no `service`, an empty command, an unknown action or a template that cannot work.
        """
        name, definition = model_service_definition(model, known_variables=self.known_variables())
        service = model.service
        assert service is not None  # model_service_definition raised otherwise
        info = ServiceInfo(name=name, port=service.port, ports=(service.port,), protocol="http", options=ServiceOptions())
        catalog = self.with_definition(name, definition)
        return attrs.evolve(catalog, model_services=catalog.model_services | {name}), info

    def resolve(
        self,
        info: ServiceInfo,
        *,
        lang: str,
        runtime_path: str | None,
        child_env: Mapping[str, str],
        work_dir: Path,
        sshd: IntrinsicLauncher | None = None,
        ttyd: IntrinsicLauncher | None = None,
        intrinsic_probes: ProbeDefinitions | None = None,
    ) -> ServiceLaunch | Refusal | Preopened:
        """docs/protocol.md §6.2 steps 1 and 3-8, without I/O: a launch plan, or why there is nothing to launch.

        The caller checks "already running" (step 2) first, except for protocol preopen, which wins even over
        a running service. `sshd`/`ttyd` None means that intrinsic is unavailable, so the name is looked up
        like any other (an image may define its own). An `unsupported service` refusal should be logged as
        `The service <name> is not supported.` (step 7). `intrinsic_probes`: what sshd and ttyd are probed with
        (docs/protocol.md §6.14).
        """
        if info.protocol == "preopen":
            return Preopened()  # step 1: the user or the image runs the process
        if info.protocol == "pty":
            return Refusal("not implemented yet")  # step 3
        port = info.port if info.port is not None else (info.ports[0] if info.ports else None)
        variables = {**self.variables, "ports": list(info.ports) if info.ports else _listed(port), "runtime_path": runtime_path}
        intrinsic = {"ttyd": ttyd, "sshd": sshd}.get(info.name)
        if intrinsic is not None:
            return _intrinsic_launch(info.name, intrinsic, port=port, child_env=child_env, work_dir=work_dir,
                                     probes=intrinsic_probes)
        if info.name in self.broken:
            return Refusal(self.broken[info.name].reply)
        definition = self.definitions.get(info.name)
        if definition is not None:
            origin: LaunchOrigin = "model" if info.name in self.model_services else "definition"
            try:
                return _definition_launch(
                    info, definition, variables=variables, port=port, child_env=child_env, work_dir=work_dir,
                    origin=origin,
                )
            except ServiceStartError as exc:
                return Refusal(exc.reply_text)
        row = self.legacy.find(lang, info.name)
        if row is not None:  # step 6: only when no definition matched
            return _legacy_launch(info.name, row, variables=variables, port=port, child_env=child_env, work_dir=work_dir)
        return Refusal(UNSUPPORTED)  # step 7


def model_service_definition(
    model: ModelInfo, *, known_variables: Sequence[str] = BASE_VARIABLES
) -> tuple[str, ServiceDefinition]:
    """docs/protocol.md §7.2 step 2: command = start_command, prestart = pre_start_actions, no env or argument rules.

    Raises:
        DefinitionError: see ServiceCatalog.with_model_service.
    """
    source = f"model {model.name}"
    service = model.service
    if service is None:
        # docs/protocol.md §7.2 step 1's intended text (23.3.5 overwrote it with "service unhealthy").
        raise DefinitionError((f"{source}: service info not provided @ $.service",), reply="service info not provided")
    name = f"{model.name}-{service.port}"
    command = service.start_command
    if not (command.strip() if isinstance(command, str) else command):
        raise DefinitionError(
            (f"{source}: start_command is empty @ $.service.start_command",),
            reply=repr(InvalidServiceDefinition(f"Service-def for {name} is invalid: start_command is empty")),
        )
    raw = {
        # A string runs as [shell, "-c", string], or split into words without a shell (docs/protocol.md §7.1).
        "command": command if isinstance(command, str) else list(command),
        "shell": service.shell,
        "prestart_actions": [
            {"action": spec.action, "args": dict(spec.args), **({"ref": spec.ref} if spec.ref is not None else {})}
            for spec in service.pre_start_actions
        ],
    }
    # The same converter and template checks as definition files, with paths in the model definition's terms.
    aliases = {"$.command": "$.service.start_command", "$.shell": "$.service.shell",
               "$.prestart_actions": "$.service.pre_start_actions"}
    definition = parse_definition(raw, name=name, source=source, known_variables=known_variables, path_aliases=aliases)
    return name, definition


def load_service_definitions(
    directory: Path, *, variables: Mapping[str, Any] | None = None, legacy: LegacyTable | None = None
) -> tuple[ServiceCatalog, list[str]]:
    """Load every `*.json` in `directory`; a broken file is reported and skipped, the others still load.

    Upstream aborted the whole runner on the first bad file (docs/protocol.md §6.3). Files load in name order (upstream:
    directory-listing order, which is arbitrary), and that order is the get-apps order. A missing folder gives
    an empty catalog without a parser (docs/protocol.md §6.8).
    """
    extra = dict(variables or {})
    table = legacy if legacy is not None else bundled_legacy()
    if not directory.is_dir():
        return ServiceCatalog(has_parser=False, variables=extra, legacy=table), []
    known = (*BASE_VARIABLES, *extra)
    definitions: dict[str, ServiceDefinition] = {}
    broken: dict[str, BrokenDefinition] = {}
    problems: list[str] = []
    try:
        paths = sorted(path for path in directory.iterdir() if path.suffix == ".json")
    except OSError as exc:
        problems.append(f"{directory}: cannot list the service-defs folder: {exc}")
        paths = []
    for path in paths:
        if not path.is_file():
            continue
        name = path.stem
        try:
            definitions[name] = _load_file(path, name=name, known=known)
        except DefinitionError as exc:
            problems += exc.problems
            # The reply names the file and the JSON path, so the user can fix it; upstream's exact text is kept
            # only for an unknown action (docs/protocol.md §6.2 step 11).
            reply = exc.reply if "used invalid action" in exc.reply else _invalid(name, exc.problems[0])
            broken[name] = BrokenDefinition(name=name, problems=exc.problems, reply=reply)
    return ServiceCatalog(definitions=definitions, broken=broken, has_parser=True, variables=extra, legacy=table), problems


def _load_file(path: Path, *, name: str, known: Sequence[str]) -> ServiceDefinition:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        message = f"could not read the service-def file: {path} ({exc})"  # docs/protocol.md §6.3 wording, plus the reason
        raise DefinitionError((message,), reply=_invalid(name, message)) from exc
    try:
        raw = json.loads(text)
    except ValueError as exc:
        message = f"malformed JSON in service-def file: {path} ({exc})"
        raise DefinitionError((message,), reply=_invalid(name, message)) from exc
    return parse_definition(raw, name=name, source=str(path), known_variables=known)


def _definition_launch(
    info: ServiceInfo,
    definition: ServiceDefinition,
    *,
    variables: Mapping[str, Any],
    port: int | None,
    child_env: Mapping[str, str],
    work_dir: Path,
    origin: LaunchOrigin = "definition",
) -> ServiceLaunch:
    if definition.noop:
        # docs/protocol.md §6.7: upstream returned before the prestart actions and the option checks.
        return ServiceLaunch(name=info.name, origin=origin, cwd=work_dir, port=port, noop=True, base_env=child_env)
    # Checked before any prestart action runs, so a refused start leaves no files behind (upstream ran them first).
    arguments = _merged_arguments(info.name, definition, info.options)
    user_env = _checked_envs(info.name, definition, info.options, child_env)
    probes = _rendered_probes(info.name, definition.probes, variables=variables, port=port)
    return ServiceLaunch(
        name=info.name,
        origin=origin,
        cwd=work_dir,
        port=port,
        prestart=definition.prestart_actions,
        variables=variables,
        restart=definition.restart,
        command=definition.command,
        shell=definition.shell,
        arguments=arguments,
        env_templates=definition.env,
        user_env=user_env,
        base_env=child_env,
        probes=probes,
    )


def _rendered_probes(
    name: str, probes: ProbeDefinitions | None, *, variables: Mapping[str, Any], port: int | None
) -> ProbeDefinitions | None:
    """docs/protocol.md §6.14: exec commands rendered with the start's variables (no prestart refs); an http or tcp
    probe without a port of its own needs the service's.

    Raises:
        ServiceStartError: a probe that cannot work for this start (the reply names the probe).
    """
    if probes is None:
        return None
    rendered: dict[str, Any] = {}
    for probe_name in ("startup", "liveness", "readiness"):
        probe = getattr(probes, probe_name)
        if probe is None:
            continue
        check = probe.http or probe.tcp
        if check is not None and check.port is None and port is None:
            raise ServiceStartError(f"the {probe_name} probe of {name} needs a port: the service has none (give the "
                                    "probe a port, or start the service with one)")
        if probe.exec is not None:
            command = tuple(interpolate(part, variables) for part in probe.exec.command)
            probe = attrs.evolve(probe, exec=ExecCheck(command=command))
        rendered[probe_name] = probe
    return ProbeDefinitions(**rendered)


def _merged_arguments(
    name: str, definition: ServiceDefinition, options: ServiceOptions
) -> tuple[str | DefaultArgument, ...]:
    """docs/protocol.md §6.6 step 2: defaults first, user flags override or follow; a default cannot be removed.

    What the definition wrote (its flags, the values nobody overrode) are templates; what the user sent is not.
    """
    merged: dict[str, object] = {flag: _as_template(value) for flag, value in definition.default_arguments.items()}
    for flag, value in (options.arguments or {}).items():
        if flag not in definition.allowed_arguments:
            # Upstream's text; the flag came over the wire, so it is cut short (repr() escapes what is left).
            flag_text = excerpt(flag, quote=False)
            raise ServiceStartError(repr(DisallowedArgument(f"Argument {flag_text} not allowed for service {name}")))
        merged[flag] = value
    argv: list[str | DefaultArgument] = []
    for flag, merged_value in merged.items():
        argv.append(DefaultArgument(flag) if flag in definition.default_arguments else flag)
        if isinstance(merged_value, str | DefaultArgument):
            argv.append(merged_value)
        elif isinstance(merged_value, list | tuple):
            argv.extend(item if isinstance(item, DefaultArgument) else str(item) for item in merged_value)
        # None, or any other type such as a number: a bare flag (docs/protocol.md §6.6 step 2.3).
    return tuple(argv)


def _as_template(value: object) -> object:
    if isinstance(value, str):
        return DefaultArgument(value)
    if isinstance(value, tuple):
        return tuple(DefaultArgument(item) for item in value)
    return value


def _command_argv(command: Command, shell: str | None, scope: Mapping[str, Any]) -> tuple[str, ...]:
    """docs/protocol.md §6.3 `command` and `shell`: an argument list, `[shell, "-c", text]`, or the text's words."""
    if not isinstance(command, str):
        return tuple(interpolate(part, scope) for part in command)
    if shell:
        return (shell, "-c", interpolate(command, scope))
    return split_template(command, scope)


def _checked_envs(
    name: str, definition: ServiceDefinition, options: ServiceOptions, child_env: Mapping[str, str]
) -> dict[str, str]:
    """docs/protocol.md §6.6 step 3.2: allowed first, then "frozen" = every key of child_env (§10.4 item 36, kept)."""
    accepted: dict[str, str] = {}
    for env_name, value in (options.envs or {}).items():
        env_text = excerpt(env_name, quote=False)
        if env_name not in definition.allowed_envs:
            raise ServiceStartError(
                repr(DisallowedEnvironment(f"Environment variable {env_text} not allowed for service {name}"))
            )
        if env_name in child_env:
            raise ServiceStartError(repr(DisallowedEnvironment(f"Environment variable {env_text} can't be overwritten")))
        accepted[env_name] = value if isinstance(value, str) else str(value)
    return accepted


def _legacy_launch(
    name: str,
    row: LegacyRow,
    *,
    variables: Mapping[str, Any],
    port: int | None,
    child_env: Mapping[str, str],
    work_dir: Path,
) -> ServiceLaunch:
    # Upstream's legacy commands ignored options.arguments/envs, so they are not checked here either.
    definition = row.definition
    return ServiceLaunch(
        name=name,
        origin="legacy",
        cwd=work_dir / row.cwd if row.cwd is not None else work_dir,  # docs/protocol.md §6.2 step 6: a 3-tuple overrides cwd
        port=port if row.waits_for_port else None,
        noop=definition.noop,
        prestart=() if definition.noop else definition.prestart_actions,
        variables=variables,
        restart=definition.restart,
        command=() if definition.noop else definition.command,
        shell=definition.shell,
        env_templates=definition.env,
        base_env=child_env,
    )


def _intrinsic_launch(
    name: str, launcher: IntrinsicLauncher, *, port: int | None, child_env: Mapping[str, str], work_dir: Path,
    probes: ProbeDefinitions | None,
) -> ServiceLaunch | Refusal:
    if port is None:
        return Refusal(f"the intrinsic service {name} needs a port")
    try:
        argv = launcher(port)
    except ValueError as exc:
        return Refusal(str(exc))
    return ServiceLaunch(name=name, origin="intrinsic", cwd=work_dir, port=port, arguments=argv, base_env=child_env,
                         probes=probes)


def _listed(port: int | None) -> list[int]:
    return [] if port is None else [port]


def _invalid(name: str, message: str) -> str:
    return repr(InvalidServiceDefinition(f"Service-def for {name} is invalid: {message}"))
