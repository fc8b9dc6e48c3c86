"""Loading definition folders, get-apps, and resolving start requests (docs/protocol.md §6.2-6.8, §7.2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from kernel_runner.messages import (
    HealthCheck,
    ModelInfo,
    ModelServiceSpec,
    PrestartActionSpec,
    ServiceInfo,
    ServiceOptions,
)
from kernel_runner.servicedefs import (
    DefinitionError,
    Preopened,
    Refusal,
    ServiceCatalog,
    ServiceLaunch,
    ServiceStartError,
    TemplateError,
    load_service_definitions,
)
from kernel_runner.servicedefs.intrinsic import INTRINSIC_PROBES
from kernel_runner.servicedefs.schema import (
    ExecCheck,
    HttpCheck,
    ProbeDefinition,
    ProbeDefinitions,
    RestartOverride,
    TcpCheck,
)

CHILD_ENV = {
    "HOME": "/home/work",
    "PATH": "/usr/bin:/bin",
    "LD_LIBRARY_PATH": "/opt/backend.ai/lib:/usr/local/lib",
    "LANG": "C.UTF-8",
}

# The definition used for docs/protocol.md §6.6 item 4 and §6.8's (V) observations.
WEB = {
    "command": ["{runtime_path}", "-m", "http.server", "{ports[0]}"],
    "url_template": "http://{host}:{port}/",
    "allowed_arguments": ["--bind", "--directory"],
    "default_arguments": {"--bind": "127.0.0.1"},
    "allowed_envs": ["FOO", "HOME"],
    "env": {"WEB_{ports[0]}": "v{ports[0]}"},
}


def write_defs(folder: Path, defs: dict[str, Any]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, body in defs.items():
        (folder / f"{name}.json").write_text(body if isinstance(body, str) else json.dumps(body))
    return folder


def catalog_with(tmp_path: Path, defs: dict[str, Any]) -> ServiceCatalog:
    catalog, problems = load_service_definitions(write_defs(tmp_path / "defs", defs))
    assert problems == []
    return catalog


def info(name: str, *, protocol: str = "http", arguments: Any = None, envs: Any = None, port: int = 18080) -> ServiceInfo:
    return ServiceInfo(
        name=name,
        port=port,
        ports=(port, port + 1),
        protocol=protocol,
        options=ServiceOptions(arguments=arguments, envs=envs),
    )


def resolve(catalog: ServiceCatalog, request: ServiceInfo, *, lang: str = "app",
            **kwargs: Any) -> ServiceLaunch | Refusal | Preopened:
    return catalog.resolve(
        request,
        lang=lang,
        runtime_path=kwargs.pop("runtime_path", "/usr/bin/python3"),
        child_env=kwargs.pop("child_env", CHILD_ENV),
        work_dir=kwargs.pop("work_dir", Path("/home/work")),
        **kwargs,
    )


def launch_of(result: ServiceLaunch | Refusal | Preopened) -> ServiceLaunch:
    assert isinstance(result, ServiceLaunch), result
    return result


def failed(error: str) -> Refusal:
    """The catalog's refusal, which the service manager answers `failed` with this error."""
    return Refusal(error)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_broken_file_is_reported_and_skipped_while_the_good_one_loads(tmp_path: Path) -> None:
    folder = write_defs(
        tmp_path / "defs", {"good": {"command": ["true"]}, "bad": {"command": ["x"], "bogus": 1}, "nojson": "{nope"}
    )
    catalog, problems = load_service_definitions(folder)
    assert list(catalog.definitions) == ["good"]
    assert catalog.has_parser
    assert len(problems) == 2
    assert problems[0].startswith(f"{folder / 'bad.json'}: unknown key 'bogus' (allowed: command, shell, noop,")
    assert problems[0].endswith("@ $")
    assert problems[1].startswith(f"malformed JSON in service-def file: {folder / 'nojson.json'} (")
    # A start request for a broken definition says why, instead of "unsupported service" or a legacy fallback.
    result = resolve(catalog, info("bad"))
    assert isinstance(result, Refusal)
    assert result.reason.startswith(
        f"InvalidServiceDefinition(\"Service-def for bad is invalid: {folder / 'bad.json'}: unknown key 'bogus'"
    )
    assert result.reason.endswith('@ $")')


def test_missing_folder_means_no_parser_and_no_apps(tmp_path: Path) -> None:
    catalog, problems = load_service_definitions(tmp_path / "absent")
    assert problems == []
    assert not catalog.has_parser
    assert catalog.apps(None) == []
    assert catalog.apps("web") == []


def test_only_json_files_load_in_name_order(tmp_path: Path) -> None:
    folder = write_defs(tmp_path / "defs", {"zeta": {"command": ["z"]}, "alpha": {"command": ["a"]}})
    (folder / "README.txt").write_text("not a definition")
    (folder / "dir.json").mkdir()
    catalog, problems = load_service_definitions(folder)
    assert problems == []
    assert list(catalog.definitions) == ["alpha", "zeta"]


def test_catalog_variables_are_known_to_templates(tmp_path: Path) -> None:
    folder = write_defs(tmp_path / "defs", {"w": {"command": ["{home}/bin/w"]}})
    catalog, problems = load_service_definitions(folder, variables={"home": "/home/work"})
    assert problems == []
    assert launch_of(resolve(catalog, info("w"))).render().argv == ("/home/work/bin/w",)


# --------------------------------------------------------------------------------------------
# get-apps (docs/protocol.md §6.8)
# --------------------------------------------------------------------------------------------


def test_apps_matches_the_observed_shape(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": WEB, "plain": {"command": ["x"]}, "idle": {"command": [], "noop": True}})
    assert catalog.apps("web") == [
        {
            "name": "web",
            "url_template": "http://{host}:{port}/",
            "allowed_arguments": ["--bind", "--directory"],
            "allowed_envs": ["FOO", "HOME"],
        }
    ]
    assert catalog.apps(None) == [{"name": "idle"}, {"name": "plain"}, {"name": "web", **catalog.apps("web")[0]}]
    assert catalog.apps("") == catalog.apps(None)
    assert catalog.apps("nosuch") == []


def test_model_services_are_listed_after_files_and_keep_position_when_replaced(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": WEB})
    catalog, _ = catalog.with_model_service(model("llama", 8000))
    catalog = catalog.with_definition("zz", catalog.definitions["web"])
    catalog, _ = catalog.with_model_service(model("llama", 8000, command=["other"]))
    assert [app["name"] for app in catalog.apps(None)] == ["web", "llama-8000", "zz"]
    assert catalog.definitions["llama-8000"].command == ("other",)


# --------------------------------------------------------------------------------------------
# resolve (docs/protocol.md §6.2, §6.6, §6.7)
# --------------------------------------------------------------------------------------------


def test_preopen_is_started_without_looking_anything_up(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {})
    assert resolve(catalog, info("whatever", protocol="preopen")) == Preopened()


def test_pty_is_not_implemented(tmp_path: Path) -> None:
    assert resolve(catalog_with(tmp_path, {"web": WEB}), info("web", protocol="pty")) == failed("not implemented yet")


def test_unknown_name_is_unsupported(tmp_path: Path) -> None:
    assert resolve(catalog_with(tmp_path, {}), info("hostport1", protocol="internal")) == failed("unsupported service")


def test_arguments_and_env_as_observed_upstream(tmp_path: Path) -> None:
    # docs/protocol.md §6.6 item 4 (V): defaults first, then user flags; def env interpolated, user env added.
    catalog = catalog_with(tmp_path, {"web": WEB})
    launch = launch_of(resolve(catalog, info("web", arguments={"--directory": "/tmp"}, envs={"FOO": "bar"})))
    command = launch.render()
    assert command.argv == ("/usr/bin/python3", "-m", "http.server", "18080", "--bind", "127.0.0.1", "--directory", "/tmp")
    assert command.env["WEB_18080"] == "v18080"
    assert command.env["FOO"] == "bar"
    assert command.env["HOME"] == "/home/work"
    assert command.cwd == Path("/home/work")
    assert launch.port == 18080
    assert launch.origin == "definition"


def test_user_flag_overrides_a_default_in_place_and_list_and_null_values(tmp_path: Path) -> None:
    definition = {
        "command": ["srv"],
        "allowed_arguments": ["--bind", "--tag", "--verbose"],
        "default_arguments": {"--bind": "127.0.0.1", "--fixed": None},
    }
    catalog = catalog_with(tmp_path, {"srv": definition})
    launch = launch_of(resolve(catalog, info("srv", arguments={"--tag": ["a", "b"], "--bind": "0.0.0.0", "--verbose": None})))
    assert launch.render().argv == ("srv", "--bind", "0.0.0.0", "--fixed", "--tag", "a", "b", "--verbose")


def test_user_arguments_and_envs_are_not_interpolated(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": WEB})
    command = launch_of(resolve(catalog, info("web", arguments={"--directory": "{ports[0]}"}, envs={"FOO": "{x}"}))).render()
    assert command.argv[-2:] == ("--directory", "{ports[0]}")
    assert command.env["FOO"] == "{x}"


def test_disallowed_argument_uses_upstreams_text(tmp_path: Path) -> None:
    result = resolve(catalog_with(tmp_path, {"web": WEB}), info("web", arguments={"--evil": "1"}))
    assert result == failed("DisallowedArgument('Argument --evil not allowed for service web')")


def test_disallowed_env_uses_upstreams_texts(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": WEB})
    assert resolve(catalog, info("web", envs={"BAR": "1"})) == failed(
        "DisallowedEnvironment('Environment variable BAR not allowed for service web')"
    )
    # docs/protocol.md §6.2 step 11 (V): allowed, but already in child_env, so frozen.
    assert resolve(catalog, info("web", envs={"HOME": "/tmp"})) == failed(
        'DisallowedEnvironment("Environment variable HOME can\'t be overwritten")'
    )


def test_krunner_libraries_are_stripped_from_the_service_env(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": WEB})
    launch = launch_of(resolve(catalog, info("web")))
    assert launch.render().env["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert launch.prestart_env["LD_LIBRARY_PATH"] == "/usr/local/lib"


def test_noop_starts_without_prestart_or_option_checks(tmp_path: Path) -> None:
    idle = {"command": [], "noop": True, "prestart": [{"action": "mkdir", "args": {"path": "should-not-exist"}}]}
    catalog = catalog_with(tmp_path, {"idle": idle})
    launch = launch_of(resolve(catalog, info("idle", arguments={"--x": "1"}), work_dir=tmp_path))
    assert launch.noop
    assert launch.prestart == ()
    command = launch.prepare(log=lambda level, text: None)
    assert command.argv == ()
    assert not (tmp_path / "should-not-exist").exists()


def test_prepare_runs_prestart_and_feeds_refs_into_the_command(tmp_path: Path) -> None:
    definition = {
        "command": ["{runtime_path}", "{cfg}", "{probe[out]}"],
        "env": {"CFG": "{cfg}"},
        "prestart": [
            {"action": "write_tempfile", "args": {"body": ["port = {ports[0]}"]}, "ref": "cfg"},
            {"action": "run_command", "args": {"command": [sys.executable, "-c", "print('ok', end='')"]}, "ref": "probe"},
        ],
    }
    catalog = catalog_with(tmp_path, {"cfg": definition})
    launch = launch_of(resolve(catalog, info("cfg"), work_dir=tmp_path, child_env={"PATH": "/usr/bin:/bin"}))
    command = launch.prepare(log=lambda level, text: None)
    try:
        assert command.argv[0] == "/usr/bin/python3"
        assert command.argv[2] == "ok"
        assert Path(command.argv[1]).read_text() == "port = 18080"
        assert command.env["CFG"] == command.argv[1]
    finally:
        Path(command.argv[1]).unlink()


def test_render_time_template_failures_raise_template_error(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"w": {"command": ["w", "{ports[5]}"]}})
    launch = launch_of(resolve(catalog, info("w")))
    with pytest.raises(TemplateError):
        launch.render()


def test_restart_override_travels_with_the_launch(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"w": {"command": ["w"], "restart": {"policy": "temporary"}}})
    assert launch_of(resolve(catalog, info("w"))).restart == RestartOverride(policy="temporary")


def test_ports_fall_back_to_the_single_port(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"w": {"command": ["w", "{ports[0]}"]}})
    launch = launch_of(resolve(catalog, ServiceInfo(name="w", port=9000, protocol="tcp")))
    assert launch.render().argv == ("w", "9000")
    assert launch.port == 9000


# --------------------------------------------------------------------------------------------
# String commands, shells and default arguments (docs/protocol.md §6.3, §6.4, §6.6)
# --------------------------------------------------------------------------------------------


def test_a_string_command_runs_through_bash_by_default_with_templates(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": {"command": "cd $HOME && exec {runtime_path} -m http.server ${{ ports[0] }}"}})
    assert launch_of(resolve(catalog, info("web"))).render().argv == (
        "bash", "-c", "cd $HOME && exec /usr/bin/python3 -m http.server 18080")


@pytest.mark.parametrize("shell", [None, ""])
def test_a_string_command_without_a_shell_is_split_into_words(tmp_path: Path, shell: str | None) -> None:
    catalog = catalog_with(tmp_path, {"web": {"command": "{runtime_path} -m 'http.server' ${{ ports[1] }}",
                                              "shell": shell, "default_arguments": {"--bind": "127.0.0.1"}}})
    launch = launch_of(resolve(catalog, info("web", arguments=None)))
    assert launch.render().argv == ("/usr/bin/python3", "-m", "http.server", "18081", "--bind", "127.0.0.1")


def test_a_string_command_with_its_own_shell_and_arguments_after_it(tmp_path: Path) -> None:
    # Arguments follow [shell, "-c", command], as upstream: the shell sees them as $0, $1, …
    catalog = catalog_with(tmp_path, {"web": {"command": 'exec serve "$@"', "shell": "/bin/sh",
                                              "allowed_arguments": ["--x"]}})
    launch = launch_of(resolve(catalog, info("web", arguments={"--x": "1"})))
    assert launch.render().argv == ("/bin/sh", "-c", 'exec serve "$@"', "--x", "1")


def test_shell_variables_in_list_commands_reach_the_program_as_written(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": {"command": ["sh", "-c", "echo ${HOME} $PATH ${{ ports[0] }}"],
                                              "env": {"W_${{ ports[0] }}": "${HOME}/{ports[1]}"}}})
    command = launch_of(resolve(catalog, info("web"))).render()
    assert command.argv == ("sh", "-c", "echo ${HOME} $PATH 18080")
    assert command.env["W_18080"] == "${HOME}/18081"


def test_default_arguments_render_known_placeholders_and_keep_other_braces(tmp_path: Path) -> None:
    definition = {
        "command": ["serve"],
        "allowed_arguments": ["--port", "--user"],
        "default_arguments": {"--port": "{ports[0]}", "--extra": ["${{ ports[1] }}", '{"a": 1}'],
                              "--cfg={runtime_path}": None, "--port-default": "{{ports[0]}}"},
    }
    catalog = catalog_with(tmp_path, {"web": definition})
    argv = launch_of(resolve(catalog, info("web", arguments={"--user": "{ports[0]}"}))).render().argv
    assert argv == ("serve", "--port", "18080", "--extra", "18081", '{"a": 1}', "--cfg=/usr/bin/python3",
                    "--port-default", "{{ports[0]}}", "--user", "{ports[0]}")
    # A user value that replaces a default is the user's: never a template.
    argv = launch_of(resolve(catalog, info("web", arguments={"--port": "${{ ports[1] }}"}))).render().argv
    assert argv[1:3] == ("--port", "${{ ports[1] }}")


def test_prestart_actions_use_the_same_language(tmp_path: Path) -> None:
    definition = {
        "command": ["serve", "${{ cfg }}"],
        "prestart": [{"action": "write_file", "ref": "cfg", "args": {
            "filename": "conf-${{ ports[0] }}.sh", "body": ["PORT=${{ ports[0] }}", 'DATA="${HOME}/{ports[1]}"']}}],
    }
    catalog = catalog_with(tmp_path, {"web": definition})
    command = launch_of(resolve(catalog, info("web"), work_dir=tmp_path)).prepare(log=lambda _level, _text: None)
    assert (tmp_path / "conf-18080.sh").read_text() == 'PORT=18080\nDATA="${HOME}/18081"\n'
    assert command.argv == ("serve", "None")  # write_file has no result (docs/protocol.md §6.5)


def test_a_bad_shell_is_reported_with_the_file_and_the_field(tmp_path: Path) -> None:
    folder = write_defs(tmp_path / "defs", {"web": {"command": "serve", "shell": 5}, "ok": {"command": "serve"}})
    catalog, problems = load_service_definitions(folder)
    assert problems == [f"{folder / 'web.json'}: expected a string or null, got a number @ $.shell"]
    assert list(catalog.definitions) == ["ok"]
    result = resolve(catalog, info("web"))
    assert isinstance(result, Refusal) and "@ $.shell" in result.reason


# --------------------------------------------------------------------------------------------
# Intrinsic and legacy precedence (docs/protocol.md §6.2 steps 5-6)
# --------------------------------------------------------------------------------------------


def fake_sshd(port: int) -> tuple[str, ...]:
    return ("/opt/kernel/dropbear", "-p", f"0.0.0.0:{port}")


def test_intrinsic_names_win_over_definitions(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"sshd": {"command": ["my-sshd"]}})
    launch = launch_of(resolve(catalog, info("sshd", protocol="tcp", port=2200), sshd=fake_sshd))
    assert launch.origin == "intrinsic"
    assert launch.render().argv == ("/opt/kernel/dropbear", "-p", "0.0.0.0:2200")
    assert launch.render().env["LD_LIBRARY_PATH"] == "/usr/local/lib"
    # Without the intrinsic (binary missing) the image's own definition is used.
    assert launch_of(resolve(catalog, info("sshd", protocol="tcp"))).render().argv == ("my-sshd",)


def test_definitions_win_over_legacy_and_legacy_is_per_language(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"jupyter": {"command": ["my-jupyter"]}})
    assert launch_of(resolve(catalog, info("jupyter"), lang="python")).render().argv == ("my-jupyter",)
    assert launch_of(resolve(catalog, info("tensorboard"), lang="python")).origin == "legacy"
    assert resolve(catalog, info("tensorboard"), lang="c") == failed("unsupported service")


# --------------------------------------------------------------------------------------------
# Model services (docs/protocol.md §7.2)
# --------------------------------------------------------------------------------------------


def model(name: str, port: int, *, command: Any = None, actions: tuple[PrestartActionSpec, ...] = ()) -> ModelInfo:
    return ModelInfo(
        name=name,
        model_path="/models/x",
        service=ModelServiceSpec(
            start_command=tuple(["python", "-m", "http.server", "{ports[0]}"] if command is None else command),
            port=port,
            pre_start_actions=actions,
            health_check=HealthCheck(path="/health"),
        ),
    )


def test_model_service_is_registered_as_name_port_and_resolves_with_a_fixed_request(tmp_path: Path) -> None:
    catalog, request = catalog_with(tmp_path, {}).with_model_service(
        model("llama", 8000, actions=(PrestartActionSpec(action="mkdir", args={"path": "/tmp/m"}),))
    )
    assert request == ServiceInfo(name="llama-8000", port=8000, ports=(8000,), protocol="http", options=ServiceOptions())
    launch = launch_of(resolve(catalog, request))
    assert launch.render().argv == ("python", "-m", "http.server", "8000")
    assert len(launch.prestart) == 1
    assert catalog.apps("llama-8000") == [{"name": "llama-8000"}]


def test_model_service_without_a_service_folder_still_registers(tmp_path: Path) -> None:
    catalog, _ = load_service_definitions(tmp_path / "absent")
    catalog, request = catalog.with_model_service(model("m", 7000))
    assert catalog.has_parser
    assert launch_of(resolve(catalog, request)).port == 7000


def string_model(command: str, **fields: Any) -> ModelInfo:
    return ModelInfo(name="m", service=ModelServiceSpec(start_command=command, port=8000, **fields))


def test_model_service_string_command_runs_through_the_shell_with_templates(tmp_path: Path) -> None:
    command = "exec serve --port ${{ ports[0] }} --also {ports[0]} --home ${HOME:-/tmp} $USER {{x}}"
    for fields, shell in (({}, "/bin/bash"), ({"shell": "/bin/sh"}, "/bin/sh")):
        catalog, request = catalog_with(tmp_path, {}).with_model_service(string_model(command, **fields))
        assert launch_of(resolve(catalog, request)).render().argv == (
            shell, "-c", "exec serve --port 8000 --also 8000 --home ${HOME:-/tmp} $USER {x}")


@pytest.mark.parametrize("shell", [None, ""])
def test_model_service_without_a_shell_splits_the_string_into_words(tmp_path: Path, shell: str | None) -> None:
    # Backend.AI 26.8: shell null or "" runs the words directly; placeholders render inside their word.
    model_info = string_model("python service.py --flag 'a b' --port ${{ ports[0] }} --home $HOME", shell=shell)
    catalog, request = catalog_with(tmp_path, {}).with_model_service(model_info)
    assert launch_of(resolve(catalog, request)).render().argv == (
        "python", "service.py", "--flag", "a b", "--port", "8000", "--home", "$HOME")


def test_model_list_start_command_elements_are_templates_of_both_forms(tmp_path: Path) -> None:
    catalog, request = catalog_with(tmp_path, {}).with_model_service(
        model("m", 8000, command=["serve", "--port", "${{ ports[0] }}", "{ports[0]}", "${HOME}"]))
    assert launch_of(resolve(catalog, request)).render().argv == ("serve", "--port", "8000", "8000", "${HOME}")


@pytest.mark.parametrize(
    ("model_info", "says", "path"),
    [
        (string_model("python -c 'print({x})'"), "unknown variable 'x'", "$.service.start_command"),
        (string_model("echo ${{ ports.__class__ }}"), "attribute access is not allowed", "$.service.start_command"),
        (string_model("serve 'unclosed", shell=None), "No closing quotation", "$.service.start_command"),
        (string_model("   ", shell=None), "start_command is empty", "$.service.start_command"),
    ],
)
def test_model_string_commands_that_cannot_work_are_refused(
    tmp_path: Path, model_info: ModelInfo, says: str, path: str
) -> None:
    with pytest.raises(DefinitionError) as error:
        catalog_with(tmp_path, {}).with_model_service(model_info)
    (line,) = error.value.problems
    assert line.startswith("model m: ") and says in line and line.endswith(f"@ {path}")


def test_model_service_errors(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {})
    with pytest.raises(DefinitionError) as no_service:
        catalog.with_model_service(ModelInfo(name="m"))
    assert no_service.value.reply == "service info not provided"
    with pytest.raises(DefinitionError) as bad_action:
        catalog.with_model_service(model("m", 8000, actions=(PrestartActionSpec(action="nosuch"),)))
    assert bad_action.value.reply == "InvalidServiceDefinition('Service-def for m-8000 used invalid action: nosuch')"
    assert bad_action.value.problems[0].endswith("@ $.service.pre_start_actions[0]")
    with pytest.raises(DefinitionError) as braces:
        catalog.with_model_service(model("m", 8000, command=["python", "-c", "print('{x}')"]))
    assert braces.value.problems[0].endswith("@ $.service.start_command[2]")
    assert "write literal braces as {{ and }}" in braces.value.problems[0]


def test_ttyd_launcher_and_an_intrinsic_without_a_port(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {})
    launch = launch_of(resolve(catalog, info("ttyd", port=7681), ttyd=lambda port: ("ttyd", "-p", str(port), "/bin/sh")))
    assert launch.render().argv == ("ttyd", "-p", "7681", "/bin/sh")
    assert launch.port == 7681
    no_port = resolve(catalog, ServiceInfo(name="sshd", protocol="tcp"), sshd=fake_sshd)
    assert no_port == failed("the intrinsic service sshd needs a port")


def test_model_service_with_an_empty_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as empty:
        catalog_with(tmp_path, {}).with_model_service(model("m", 8000, command=[]))
    assert empty.value.problems == ("model m: start_command is empty @ $.service.start_command",)


# --------------------------------------------------------------------------------------------
# What came over the wire stays confined (docs/protocol.md §2.8)
# --------------------------------------------------------------------------------------------


def test_a_models_definition_is_confined_and_an_images_is_not(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    catalog = catalog_with(tmp_path, {"web": {"command": ["a"], "prestart_actions": [
        {"action": "write_file", "args": {"filename": "../image.txt", "body": ["ok"]}}]}})
    escape = (PrestartActionSpec(action="write_file", args={"filename": "../model.txt", "body": ["no"]}),)
    catalog, request = catalog.with_model_service(model("m", 8000, actions=escape))
    model_launch = launch_of(resolve(catalog, request, work_dir=tmp_path / "work"))
    assert model_launch.origin == "model"
    with pytest.raises(ServiceStartError, match="leads outside the work dir"):
        model_launch.prepare(log=lambda _level, _text: None)
    assert not (tmp_path / "model.txt").exists()
    image_launch = launch_of(resolve(catalog, info("web"), work_dir=tmp_path / "work"))
    assert image_launch.origin == "definition"
    image_launch.prepare(log=lambda _level, _text: None)
    assert (tmp_path / "image.txt").read_text() == "ok\n"


def test_a_models_start_command_cannot_reach_objects(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as attribute:
        catalog_with(tmp_path, {}).with_model_service(model("m", 8000, command=["echo", "{ports.__class__}"]))
    assert "{ports.__class__}: attribute access is not allowed" in attribute.value.reply
    assert attribute.value.problems[0].endswith("@ $.service.start_command[1]")


def test_user_arguments_and_envs_are_never_templates(tmp_path: Path) -> None:
    launch = launch_of(resolve(catalog_with(tmp_path, {"web": WEB}), info(
        "web", arguments={"--directory": "{ports.__class__}"}, envs={"FOO": "{runtime_path.__class__}"})))
    command = launch.render()
    assert command.argv[-2:] == ("--directory", "{ports.__class__}")
    assert command.env["FOO"] == "{runtime_path.__class__}"


def test_refused_wire_names_are_quoted_briefly(tmp_path: Path) -> None:
    result = resolve(catalog_with(tmp_path, {"web": WEB}), info("web", arguments={"--" + "x" * 100_000: None}))
    assert isinstance(result, Refusal)
    assert result.reason.startswith("DisallowedArgument('Argument --xxx") and len(result.reason) < 300


# --------------------------------------------------------------------------------------------
# Health probes (docs/protocol.md §6.14)
# --------------------------------------------------------------------------------------------


def test_a_definitions_probes_reach_its_launch_with_exec_commands_rendered(tmp_path: Path) -> None:
    probes = {"readiness": {"exec": {"command": ["check", "{ports[1]}", "{runtime_path}"]}},
              "liveness": {"http": {"path": "/health"}, "period_s": 2}}
    catalog = catalog_with(tmp_path, {"web": {**WEB, "probes": probes}, "plain": WEB})
    launch = launch_of(resolve(catalog, info("web")))
    assert launch.probes is not None and launch.probes.readiness is not None
    assert launch.probes.readiness.exec == ExecCheck(command=("check", "18081", "/usr/bin/python3"))
    assert launch.probes.liveness == ProbeDefinition(http=HttpCheck(path="/health"), period_s=2.0)
    assert launch_of(resolve(catalog, info("plain"))).probes is None


def test_a_port_probe_of_a_service_without_a_port_refuses_the_start(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {"web": {**WEB, "probes": {"liveness": {"tcp": {}}}},
                                      "own": {**WEB, "probes": {"liveness": {"tcp": {"port": 9000}}}}})
    no_port = ServiceInfo(name="web", protocol="tcp")
    assert resolve(catalog, no_port) == failed(
        "the liveness probe of web needs a port: the service has none (give the probe a port, or start the service "
        "with one)")
    assert launch_of(resolve(catalog, ServiceInfo(name="own", protocol="tcp"))).probes is not None


def test_the_intrinsics_get_the_probes_they_are_given(tmp_path: Path) -> None:
    catalog = catalog_with(tmp_path, {})
    probed = launch_of(resolve(catalog, info("sshd", protocol="tcp", port=2200), sshd=fake_sshd,
                               intrinsic_probes=INTRINSIC_PROBES))
    assert probed.probes == ProbeDefinitions(liveness=ProbeDefinition(tcp=TcpCheck()))
    assert launch_of(resolve(catalog, info("sshd", protocol="tcp", port=2200), sshd=fake_sshd)).probes is None
