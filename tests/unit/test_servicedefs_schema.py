"""Schema of service-definition files (docs/protocol.md §6.3, §6.5): what is accepted, and the exact path of what is not."""

from __future__ import annotations

from typing import Any

import pytest

from kernel_runner.servicedefs.errors import DefinitionError
from kernel_runner.servicedefs.schema import (
    HttpCheck,
    Log,
    Mkdir,
    ProbeDefinition,
    RestartOverride,
    RunCommand,
    TcpCheck,
    WriteFile,
    WriteTempfile,
    parse_definition,
)


def parse(raw: Any) -> Any:
    return parse_definition(raw, name="web", source="web.json")


def problems_of(raw: Any) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        parse(raw)
    return info.value


def test_minimal_definition_gets_upstream_defaults() -> None:
    definition = parse({"command": ["{runtime_path}", "-m", "http.server", "{ports[0]}"]})
    assert definition.command == ("{runtime_path}", "-m", "http.server", "{ports[0]}")
    assert definition.noop is False
    assert definition.url_template == ""
    assert definition.prestart_actions == ()
    assert dict(definition.env) == {}
    assert definition.allowed_envs == ()
    assert definition.allowed_arguments == ()
    assert dict(definition.default_arguments) == {}
    assert definition.restart is None


def test_every_action_parses_to_its_class_with_defaults() -> None:
    definition = parse(
        {
            "command": ["x"],
            "prestart_actions": [
                {"action": "write_file", "args": {"filename": "a", "body": ["l"]}},
                {"action": "write_tempfile", "args": {"body": ["b"]}, "ref": "tmp"},
                {"action": "run_command", "args": {"command": ["echo", 1, 2.5]}, "ref": "out"},
                {"action": "mkdir", "args": {"path": "/d"}},
                {"action": "log", "args": {"message": "hi"}},
            ],
        }
    )
    write_file, write_tempfile, run_command, mkdir, log = definition.prestart_actions
    assert isinstance(write_file, WriteFile)
    assert (write_file.args.mode, write_file.args.append) == ("644", False)  # the code's default, not the docs' 755
    assert isinstance(write_tempfile, WriteTempfile)
    assert write_tempfile.ref == "tmp"
    assert isinstance(run_command, RunCommand)
    assert run_command.args.command == ("echo", "1", "2.5")  # pieces are converted to text (docs/protocol.md §6.5)
    assert isinstance(mkdir, Mkdir)
    assert isinstance(log, Log)
    assert log.args.debug is False
    assert definition.refs() == ("tmp", "out")


def test_prestart_is_an_alias_and_errors_name_the_key_the_file_used() -> None:
    definition = parse({"command": ["x"], "prestart": [{"action": "mkdir", "args": {"path": "/d"}}]})
    assert isinstance(definition.prestart_actions[0], Mkdir)
    error = problems_of({"command": ["x"], "prestart": [{"action": "mkdir", "args": {"path": 3}}]})
    assert error.problems == ("web.json: expected a string, got a number @ $.prestart[0].args.path",)


def test_both_prestart_keys_is_rejected() -> None:
    error = problems_of({"command": ["x"], "prestart": [], "prestart_actions": []})
    assert "aliases" in error.problems[0]
    assert error.problems[0].endswith("@ $")


def test_unknown_top_level_key_is_rejected_with_the_allowed_keys() -> None:
    error = problems_of({"command": ["x"], "comand": ["y"]})
    (line,) = error.problems
    assert line.startswith("web.json: unknown key 'comand' (allowed: command, shell, noop, url_template,")
    assert line.endswith("@ $")


def test_missing_command_is_reported_at_its_path() -> None:
    assert problems_of({"noop": True}).problems == ("web.json: required key missing @ $.command",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"command": 5}, "expected a string or a list of strings, got a number @ $.command"),
        ({"command": {"a": 1}}, "expected a string or a list of strings, got an object @ $.command"),
        ({"command": ["a", 1]}, "expected a string, got a number @ $.command[1]"),
        ({"command": ["a"], "noop": "yes"}, "expected true or false, got a string @ $.noop"),
        ({"command": ["a"], "env": {"A": 1}}, "expected a string, got a number @ $.env['A']"),
        ({"command": ["a"], "allowed_envs": "FOO"}, "expected a list, got a string @ $.allowed_envs"),
        (
            {"command": ["a"], "default_arguments": {"--x": {"y": 1}}},
            "expected a string, a list of strings or null, got an object @ $.default_arguments['--x']",
        ),
        (
            {"command": ["a"], "prestart_actions": [{"action": "mkdir", "args": {"path": "/d"}, "when": 1}]},
            "unknown key 'when' (allowed: args, ref) @ $.prestart_actions[0]",
        ),
        (
            {"command": ["a"], "prestart_actions": [{"action": "mkdir"}]},
            "required key missing @ $.prestart_actions[0].args",
        ),
        (
            {"command": ["a"], "prestart_actions": [{"args": {}}]},
            'missing "action" (one of write_file, write_tempfile, run_command, mkdir, log) @ $.prestart_actions[0]',
        ),
        (
            {
                "command": ["a"],
                "prestart_actions": [{"action": "write_file", "args": {"filename": "f", "body": [], "mode": 644}}],
            },
            'mode must be an octal string such as "644", got 644 @ $.prestart_actions[0].args.mode',
        ),
        ({"command": []}, '"command" is empty; set "noop": true for a service with nothing to run @ $'),
        ([1, 2], "a service definition must be a JSON object, got a list @ $"),
    ],
)
def test_rejected_values_name_the_json_path(raw: Any, expected: str) -> None:
    assert f"web.json: {expected}" in problems_of(raw).problems


def test_unknown_action_is_rejected_and_the_reply_is_upstreams() -> None:
    error = problems_of({"command": ["a"], "prestart": [{"action": "nosuch", "args": {}}]})
    assert error.problems == (
        "web.json: unknown action 'nosuch'; known actions: write_file, write_tempfile, run_command, mkdir, log @ $.prestart[0]",
    )
    # docs/protocol.md §6.2 step 11 (V): the text a start request for this service gets.
    assert error.reply == "InvalidServiceDefinition('Service-def for web used invalid action: nosuch')"


def test_module_level_names_are_not_actions() -> None:
    # docs/protocol.md §10.4 item 32: upstream accepted any callable attribute of its actions module.
    error = problems_of({"command": ["a"], "prestart": [{"action": "interpolate", "args": {}}]})
    assert "used invalid action: interpolate" in error.reply


def test_several_problems_are_all_reported() -> None:
    error = problems_of({"command": [1], "noop": 2, "extra": 3})
    assert len(error.problems) == 3


def test_default_arguments_accept_text_lists_null_and_numbers_as_bare_flags() -> None:
    definition = parse({"command": ["a"], "default_arguments": {"--a": "1", "--b": ["x", "y"], "--c": None, "--d": 5}})
    assert dict(definition.default_arguments) == {"--a": "1", "--b": ("x", "y"), "--c": None, "--d": None}


def test_restart_override_is_optional_and_partial() -> None:
    definition = parse({"command": ["a"], "restart": {"policy": "transient", "backoff_cap_s": 5}})
    assert definition.restart == RestartOverride(policy="transient", backoff_cap_s=5.0)


@pytest.mark.parametrize(
    ("restart", "expected"),
    [
        ({"policy": "always"}, "expected one of 'permanent', 'transient', 'temporary', got 'always' @ $.restart.policy"),
        ({"max_restarts": -1}, "max_restarts must be at least 0 and at most 1000, got -1 @ $.restart"),
        ({"backoff_cap_s": 1e10}, "backoff_cap_s must be at least 0 and at most 3600 s, got 10000000000.0 @ $.restart"),
        ({"max_restarts": 1.5}, "expected an integer, got a number @ $.restart.max_restarts"),
        ({"period_s": 0}, "period_s must be greater than 0 and at most 86400 s, got 0.0 @ $.restart"),
        ({"backoff_initial_s": 2, "backoff_cap_s": 1}, "backoff_cap_s must not be smaller than backoff_initial_s @ $.restart"),
        ({"jitter": 0.1}, "unknown key 'jitter'"),
    ],
)
def test_bad_restart_override(restart: dict[str, Any], expected: str) -> None:
    (line,) = problems_of({"command": ["a"], "restart": restart}).problems
    assert expected in line


def test_unknown_template_variable_is_caught_at_load_with_its_path() -> None:
    error = problems_of({"command": ["a", "--port={port}"]})
    (line,) = error.problems
    assert line.startswith("web.json: template '--port={port}' uses unknown variable 'port'; known: ports, runtime_path")
    assert line.endswith("@ $.command[1]")


def test_refs_are_visible_only_after_the_action_that_defines_them() -> None:
    parse(
        {
            "command": ["{cfg}", "{out[out]}"],
            "env": {"CFG_{ports[0]}": "{cfg}"},
            "prestart": [
                {"action": "write_tempfile", "args": {"body": ["x"]}, "ref": "cfg"},
                {"action": "run_command", "args": {"command": ["cat", "{cfg}"]}, "ref": "out"},
            ],
        }
    )
    error = problems_of({"command": ["x"], "prestart": [{"action": "write_tempfile", "args": {"body": ["{cfg}"]}, "ref": "cfg"}]})
    assert error.problems[0].endswith("@ $.prestart[0].args.body[0]")


def test_literal_braces_must_be_doubled() -> None:
    parse({"command": ["python", "-c", "print({{'a': 1}})"]})
    (line,) = problems_of({"command": ["python", "-c", "print({'a': 1})"]}).problems
    assert "write literal braces as {{ and }}" in line
    assert line.endswith("@ $.command[2]")


def test_catalog_variables_extend_the_known_names() -> None:
    definition = parse_definition({"command": ["{home}"]}, name="w", source="w.json", known_variables=("ports", "home"))
    assert definition.command == ("{home}",)


# --------------------------------------------------------------------------------------------
# String commands and `shell` (docs/protocol.md §6.3, 24.12 and 26.8)
# --------------------------------------------------------------------------------------------


def test_a_string_command_loads_with_the_default_shell() -> None:
    definition = parse({"command": "exec serve --port ${{ ports[0] }} --home $HOME"})
    assert definition.command == "exec serve --port ${{ ports[0] }} --home $HOME"
    assert definition.shell == "bash"  # upstream's default for definitions, found on the service's PATH


@pytest.mark.parametrize("shell", [None, "", "/bin/sh"])
def test_shell_may_be_null_empty_or_a_program(shell: str | None) -> None:
    assert parse({"command": "serve --port {ports[0]}", "shell": shell}).shell == shell


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"command": "x", "shell": 5}, "expected a string or null, got a number @ $.shell"),
        ({"command": "x", "shell": ["/bin/sh"]}, "expected a string or null, got a list @ $.shell"),
        ({"command": "   "}, '"command" is empty; set "noop": true for a service with nothing to run @ $'),
        ({"command": "serve {port}"}, "uses unknown variable 'port'; known: ports, runtime_path"),
        ({"command": "serve ${{ prot }}"}, "uses unknown variable 'prot'"),
        ({"command": "echo {ports.__class__}"}, "attribute access is not allowed"),
        ({"command": "serve 'a b", "shell": None}, "cannot split the command \"serve 'a b\" into words"),
        ({"command": "serve 'a b", "shell": ""}, "No closing quotation"),
    ],
)
def test_bad_string_commands_and_shells_name_the_field(raw: Any, expected: str) -> None:
    (line,) = problems_of(raw).problems
    assert line.startswith("web.json: ") and expected in line
    path = "$.shell" if "shell" in expected else "$" if "is empty" in expected else "$.command"
    assert line.endswith(f"@ {path}")


def test_an_unclosed_quote_is_fine_for_the_shell_to_report() -> None:
    # With a shell the text is the shell's to parse; the runner checks only the templates.
    assert parse({"command": "echo 'unclosed"}).command == "echo 'unclosed"


def test_shell_variables_and_the_dollar_form_load_in_list_commands() -> None:
    # Before 24.12's language, `${HOME}` was an unknown template variable and the file did not load.
    definition = parse({"command": ["sh", "-c", "cd ${HOME} && exec serve ${{ ports[0] }} $PATH"],
                        "env": {"DATA": "${HOME}/data"}})
    assert definition.command == ("sh", "-c", "cd ${HOME} && exec serve ${{ ports[0] }} $PATH")


def test_dollar_placeholders_see_refs_like_brace_placeholders() -> None:
    parse({"command": ["serve", "--config", "${{ cfg }}"],
           "prestart": [{"action": "write_tempfile", "args": {"body": ["port = ${{ ports[0] }}"]}, "ref": "cfg"}]})
    error = problems_of({"command": ["x"], "prestart": [
        {"action": "write_tempfile", "args": {"body": ["${{ cfg }}"]}, "ref": "cfg"}]})
    assert error.problems[0].endswith("@ $.prestart[0].args.body[0]")


# ---- health probes (docs/protocol.md §6.14) -----------------------------------------------------------------


def test_probes_take_kubernetes_defaults_and_null_turns_one_off() -> None:
    definition = parse({"command": ["x"], "probes": {"liveness": {"tcp": {}}, "readiness": None,
                                                     "startup": {"http": {"path": "/ready"}, "period_s": 0.5}}})
    probes = definition.probes
    assert probes.readiness is None
    assert probes.liveness == ProbeDefinition(tcp=TcpCheck())
    live = probes.liveness
    assert (live.period_s, live.timeout_s, live.failure_threshold, live.success_threshold, live.initial_delay_s) == \
        (10.0, 1.0, 3, 1, 0.0)
    assert probes.startup.http == HttpCheck(path="/ready", port=None, expected_status=None)
    assert parse({"command": ["x"]}).probes is None  # an old definition: nothing is probed


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        ({"liveness": {}}, "a probe needs exactly one of http, tcp or exec, got none @ $.probes.liveness"),
        ({"liveness": {"tcp": {}, "exec": {"command": ["true"]}}},
         "a probe needs exactly one of http, tcp or exec, got tcp and exec @ $.probes.liveness"),
        ({"readiness": {"tcp": {}, "period_s": 0}},
         "period_s must be at least 0.05 and at most 3600 s, got 0.0 @ $.probes.readiness"),
        ({"readiness": {"tcp": {}, "timeout_s": 0}},
         "timeout_s must be greater than 0 and at most 600 s, got 0.0 @ $.probes.readiness"),
        ({"liveness": {"tcp": {}, "failure_threshold": 0}},
         "failure_threshold must be at least 1 and at most 1000, got 0 @ $.probes.liveness"),
        ({"startup": {"tcp": {}, "initial_delay_s": -1}},
         "initial_delay_s must be at least 0 and at most 86400 s, got -1.0 @ $.probes.startup"),
        ({"liveness": {"tcp": {}, "success_threshold": 2}},
         "liveness.success_threshold must be 1 (only a readiness probe may ask for more passes in a row), got 2 @ "
         "$.probes"),
        ({"liveness": {"tcp": {"port": 70000}}}, "port must be at least 1 and at most 65535, got 70000 @ "
                                                 "$.probes.liveness.tcp"),
        ({"liveness": {"http": {"path": "health"}}},
         "path must start with / and be at most 2048 characters without spaces or control characters, got 'health' @ "
         "$.probes.liveness.http"),
        ({"liveness": {"http": {"expected_status": 99}}},
         "expected_status must be at least 100 and at most 599, got 99 @ $.probes.liveness.http"),
        ({"liveness": {"exec": {"command": []}}},
         "command must name a program: an empty list runs nothing @ $.probes.liveness.exec"),
        ({"liveness": {"exec": {"command": "true"}}}, "expected a list, got a string @ $.probes.liveness.exec.command"),
        ({"liveness": {"tcp": {}, "period": 5}},
         "unknown key 'period' (allowed: http, tcp, exec, period_s, timeout_s, failure_threshold, success_threshold, "
         "initial_delay_s) @ $.probes.liveness"),
        ({"alive": {"tcp": {}}}, "unknown key 'alive' (allowed: startup, liveness, readiness) @ $.probes"),
        ({"liveness": "tcp"}, "expected an object, got a string @ $.probes.liveness"),
        ({"liveness": {"tcp": {}, "timeout_s": True}}, "expected a finite number, got a boolean @ "
                                                       "$.probes.liveness.timeout_s"),
    ],
)
def test_a_bad_probe_is_refused_naming_the_field(probes: Any, expected: str) -> None:
    (line,) = problems_of({"command": ["x"], "probes": probes}).problems
    assert line == f"web.json: {expected}"


def test_an_exec_probe_renders_the_starts_variables_but_no_refs() -> None:
    parse({"command": ["x"], "probes": {"readiness": {"exec": {"command": ["check", "{ports[0]}", "{runtime_path}"]}}}})
    error = problems_of({"command": ["x"], "prestart": [{"action": "mkdir", "args": {"path": "d"}, "ref": "made"}],
                         "probes": {"liveness": {"exec": {"command": ["check", "{made}"]}}}})
    (line,) = error.problems
    assert "uses unknown variable 'made'" in line and "(a probe sees no prestart refs)" in line
    assert line.endswith("@ $.probes.liveness.exec.command[1]")
