"""Every incoming op decodes to its typed request; every malformed frame becomes a BadFrame; every reply encodes."""

from __future__ import annotations

import json

import msgpack
import pytest

from kernel_runner.ids import ChildId
from kernel_runner.messages import (
    AgentEvent,
    AppsResult,
    BadFrame,
    CompleteCode,
    CompletionResult,
    FeedInput,
    Finished,
    GetApps,
    Html,
    InterruptRun,
    LogRecord,
    Media,
    ModelServiceResult,
    ModelServiceStatus,
    Output,
    RunBatch,
    RunCode,
    ServiceInfo,
    ServiceOptions,
    ServiceResult,
    ShutdownService,
    StartModelService,
    StartService,
    StatusRequest,
    WaitingInput,
)
from kernel_runner.supervision.spec import ChildInfo, ChildState
from kernel_runner.wire import frames as wire


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([b"clean", b"make clean"], RunBatch(kind="clean", command="make clean")),
        ([b"build", b"*"], RunBatch(kind="build", command="*")),
        ([b"exec", b""], RunBatch(kind="exec", command="")),
        ([b"code", "print('\u00e9')".encode()], RunCode(source="print('\u00e9')")),
        ([b"input", b"42"], FeedInput(text="42")),
        ([b"interrupt", b""], InterruptRun()),
        ([b"status", b""], StatusRequest()),
        ([b"get-apps", b""], GetApps(name=None)),
        ([b"get-apps", b"jupyter"], GetApps(name="jupyter")),
        ([b"shutdown-service", b'"jupyter"'], ShutdownService(name="jupyter")),
        ([b"complete", b'{"code": "imp", "row": 1}'], CompleteCode(code="imp", options={"row": 1})),
        ([b"event", b'{"type": "oom", "data": {}}'], AgentEvent(type="oom")),
        ([b"event", b'{"type": "oom"}'], AgentEvent(type="oom")),
        ([b"event", b'{"type": "restarted", "data": {"by": "ops"}}'], AgentEvent(type="restarted", data={"by": "ops"})),
    ],
)
def test_decodes_every_simple_op(frames: list[bytes], expected: object) -> None:
    assert wire.decode(frames) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"oom", "payload is not valid JSON"),
        (b'["oom"]', "payload must be a JSON object, got list"),
        (b'{"data": {}}', "type must be a string, got null @ $.type"),
        (b'{"type": 7}', "type must be a string, got int @ $.type"),
        (b'{"type": ""}', "type must not be empty @ $.type"),
        (b'{"type": "oom\\n"}', "type must not contain control characters @ $.type"),
        (b'{"type": "oom", "data": [1]}', "data must be an object, got list @ $.data"),
    ],
)
def test_a_bad_event_is_dropped_with_its_reason_and_never_answered(payload: bytes, reason: str) -> None:
    # docs/protocol.md §9.4: `event` has no reply, whatever it carries.
    result = wire.decode([b"event", payload])
    assert isinstance(result, BadFrame)
    assert result.op == "event" and reason in result.reason and result.reply is None


def test_decodes_service_info_with_options() -> None:
    payload = {
        "name": "web",
        "port": 8080,
        "ports": [8080, 8081],
        "protocol": "http",
        "options": {"arguments": {"--bind": "0.0.0.0", "--x": ["a", "b"], "--flag": None}, "envs": {"FOO": "1"}},
    }
    request = wire.decode([b"start-service", json.dumps(payload).encode()])
    assert request == StartService(
        info=ServiceInfo(
            name="web",
            port=8080,
            ports=(8080, 8081),
            protocol="http",
            options=ServiceOptions(arguments={"--bind": "0.0.0.0", "--x": ["a", "b"], "--flag": None}, envs={"FOO": "1"}),
        )
    )


def test_intrinsic_service_info_without_ports_or_options() -> None:
    request = wire.decode([b"start-service", b'{"name": "sshd", "port": 2200, "protocol": "tcp"}'])
    assert isinstance(request, StartService)
    assert request.info.ports == () and request.info.options == ServiceOptions()


def test_decodes_model_info_with_defaults_for_nulls() -> None:
    payload = {
        "name": "llama",
        "model_path": "/models/llama",
        "service": {
            "start_command": ["python", "-m", "server", "--port", "8000"],
            "port": 8000,
            "pre_start_actions": None,
            "health_check": {"path": "/health", "max_retries": None, "max_wait_time": 2, "expected_status_code": None},
        },
    }
    request = wire.decode([b"start-model-service", json.dumps(payload).encode()])
    assert isinstance(request, StartModelService)
    service = request.model.service
    assert service is not None and service.start_command == ("python", "-m", "server", "--port", "8000")
    assert service.health_check is not None
    assert (service.health_check.max_retries, service.health_check.max_wait_time) == (10, 2.0)
    assert service.health_check.expected_status_code == 200


def test_model_start_command_may_be_a_shell_string() -> None:
    payload = {"name": "m", "service": {"start_command": "python -m http.server 8000", "port": 8000}}
    request = wire.decode([b"start-model-service", json.dumps(payload).encode()])
    assert isinstance(request, StartModelService) and request.model.service is not None
    assert request.model.service.start_command == "python -m http.server 8000"
    assert request.model.service.shell == "/bin/bash"  # the agent's default (docs/protocol.md §7.1)


@pytest.mark.parametrize("shell", [None, ""])
def test_model_shell_null_or_empty_is_taken_as_no_shell(shell: str | None) -> None:
    # Backend.AI 26.8 sends null (or "") to have the string split into words instead (docs/protocol.md §7.1).
    payload = {"name": "m", "service": {"start_command": "serve --port 8000", "port": 8000, "shell": shell}}
    request = wire.decode([b"start-model-service", json.dumps(payload).encode()])
    assert isinstance(request, StartModelService) and request.model.service is not None
    assert request.model.service.shell == shell


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"service": {"start_command": ["x"], "port": 1}}, "$.name"),
        ({"name": "m", "service": {"start_command": ["x"], "port": "80"}}, "$.service.port"),
        ({"name": "m", "service": {"start_command": [], "port": 80}}, "$.service.start_command"),
        ({"name": "m", "service": {"start_command": ["x"], "port": 70000}}, "$.service.port"),
        ({"name": "m", "service": {"start_command": ["x"], "port": 80, "health_check": {"path": "/", "max_retries": 0}}},
         "$.service.health_check.max_retries"),
        ({"name": "m", "service": {"start_command": ["x"], "port": 80, "health_check": {"max_retries": 3}}},
         "$.service.health_check.path"),
    ],
)
def test_invalid_model_payloads_get_a_failed_reply_naming_the_field(payload: dict[str, object], field: str) -> None:
    result = wire.decode([b"start-model-service", json.dumps(payload).encode()])
    assert isinstance(result, BadFrame)
    assert isinstance(result.reply, ModelServiceResult) and result.reply.status == "failed"
    assert result.reply.error is not None and field in result.reply.error


@pytest.mark.parametrize(
    ("frames", "reason_part", "reply_type"),
    [
        ([b"status"], "expected 2 frames, got 1", None),
        ([b"status", b"", b""], "expected 2 frames, got 3", None),
        ([], "expected 2 frames, got 0", None),
        ([b"\xff\xfe", b""], "op frame is not ASCII", None),
        ([b"frobnicate", b""], "unknown op 'frobnicate'", None),
        ([b"start-service", b"{not json"], "not valid JSON", ServiceResult),
        ([b"start-service", b"[1, 2]"], "must be a JSON object", ServiceResult),
        ([b"start-service", b'{"port": 1}'], "$.name", ServiceResult),
        ([b"start-service", b"\xff"], "not UTF-8", ServiceResult),
        ([b"start-model-service", b"nope"], "not valid JSON", ModelServiceResult),
        ([b"shutdown-service", b"jupyter"], "not a JSON string", None),
        ([b"shutdown-service", b"42"], "non-empty JSON string, got int", None),
        ([b"shutdown-service", b'""'], "non-empty JSON string, got ''", None),
        ([b"shutdown-service", b'"a\\nb"'], "name must not contain control characters", None),
        ([b"complete", b"imp"], "not valid JSON", CompletionResult),
        ([b"get-apps", b"\xff"], "not UTF-8", AppsResult),
        # Slips past the validators must not escape decode either (it runs in the thread that owns the socket).
        ([b"start-service", b'{"name": "x", "port": 1, "ports": 5}'], "ports must be a list of integers", ServiceResult),
        ([b"start-model-service", b"[" * 100_000], "nests deeper than 32 levels", ModelServiceResult),
    ],
)
def test_malformed_frames_become_bad_frames(frames: list[bytes], reason_part: str, reply_type: type | None) -> None:
    result = wire.decode(frames)
    assert isinstance(result, BadFrame)
    assert reason_part in result.reason
    if reply_type is None:
        assert result.reply is None
    else:
        assert isinstance(result.reply, reply_type)


def test_commands_keep_undecodable_bytes() -> None:
    result = wire.decode([b"exec", b"printf '\xff'"])
    assert isinstance(result, RunBatch)
    assert result.command.encode("utf-8", errors="surrogateescape") == b"printf '\xff'"


def test_encodes_every_outgoing_message() -> None:
    assert wire.encode(Output(stream="stdout", data=b"\xe2\x82")) == [b"stdout", b"\xe2\x82"]
    assert wire.encode(Finished(kind="exec", exit_code=3)) == [b"finished", b'{"exitCode": 3}']
    assert wire.encode(Finished(kind="code", exit_code=0)) == [b"finished", b'{"exitCode": 0}']
    assert wire.encode(Finished(kind="clean", exit_code=0)) == [b"clean-finished", b'{"exitCode": 0}']
    assert wire.encode(Finished(kind="build", exit_code=1)) == [b"build-finished", b'{"exitCode": 1}']
    assert wire.encode(Media(mime="image/png", data="data:image/png;base64,AA==")) == [
        b"media",
        b'{"type": "image/png", "data": "data:image/png;base64,AA=="}',
    ]
    assert wire.encode(Html(html="<b>\u00e9</b>")) == [b"html", "<b>\u00e9</b>".encode()]
    assert wire.encode(WaitingInput(is_password=True)) == [b"waiting-input", b'{"is_password": true}']
    assert wire.encode(ServiceResult(status="started")) == [b"service-result", b'{"status": "started"}']
    assert wire.encode(ServiceResult(status="failed", error="unsupported service")) == [
        b"service-result",
        b'{"status": "failed", "error": "unsupported service"}',
    ]
    assert wire.encode(ModelServiceResult(status="failed", error="service unhealthy"))[0] == b"model-service-result"
    assert json.loads(wire.encode(ModelServiceStatus(model_name="m", is_healthy=False))[1]) == {
        "model_name": "m",
        "is_healthy": False,
    }
    assert wire.encode(AppsResult(apps=({"name": "web"},))) == [b"apps-result", b'{"status": "done", "data": [{"name": "web"}]}']
    assert wire.encode(CompletionResult(items=("import",))) == [b"completion", b'{"suggestions": ["import"]}']
    assert wire.encode(LogRecord(text="hello")) == [b"log", b"hello"]


def test_status_is_msgpack_with_started_at_and_the_tree() -> None:
    child = ChildInfo(
        child_id=ChildId("lang"), state=ChildState.RUNNING, pid=12, restarts=1, generation=2, last_exit="x",
        running_since=100.0,
    )
    frames = wire.StatusEncoder().encode(started_at=12.5, ready=True, children=(child,), now=101.5)
    assert frames[0] == b"status"
    body = msgpack.unpackb(frames[1], raw=False)
    assert body["started_at"] == 12.5
    assert body["kernel_runner"]["children"][0] == {
        "id": "lang",
        "state": "RUNNING",
        "pid": 12,
        "restarts": 1,
        "generation": 2,
        "last_exit": "x",
        "uptime_s": 1.5,
    }


def test_non_ascii_json_is_escaped_like_pythons_default_encoder() -> None:
    frames = wire.encode(ServiceResult(status="failed", error="caf\u00e9"))
    assert frames[1] == b'{"status": "failed", "error": "caf\\u00e9"}'



# ---- hostile input: sizes, nesting, numbers and names (docs/protocol.md §2.7) ------------------------------------


@pytest.mark.parametrize("ports", ["5", "true", "1.5", '"8080"', "{}"])
def test_ports_that_are_not_a_list_name_the_field(ports: str) -> None:
    result = wire.decode([b"start-service", f'{{"name": "x", "port": 1, "ports": {ports}}}'.encode()])
    assert isinstance(result, BadFrame) and isinstance(result.reply, ServiceResult)
    assert result.reply.error is not None and "ports must be a list of integers" in result.reply.error
    assert "@ $.ports" in result.reply.error


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "port": -1}, "$.port"),
        ({"name": "x", "port": 65536}, "$.port"),
        ({"name": "x", "ports": [80, -1]}, "$.ports[1]"),
        ({"name": "x", "ports": [80, 1.5]}, "$.ports[1]"),
        ({"name": "x", "ports": list(range(1, 100))}, "$.ports"),
        ({"name": ""}, "$.name"),
        ({"name": "x" * 257}, "$.name"),
        ({"name": "a\nb"}, "$.name"),
        ({"name": "x", "options": {"arguments": {"--a": "nul\u0000"}}}, "$.options.arguments"),
        ({"name": "x", "options": {"envs": {"A": 1}}}, "$.options.envs"),
    ],
)
def test_service_info_numbers_and_names_are_range_checked(payload: dict[str, object], field: str) -> None:
    result = wire.decode([b"start-service", json.dumps(payload).encode()])
    assert isinstance(result, BadFrame) and isinstance(result.reply, ServiceResult)
    assert result.reply.error is not None and field in result.reply.error


HEALTH_LIMITS = [
    ("max_wait_time", "Infinity", "finite"),
    ("max_wait_time", "NaN", "finite"),
    ("max_wait_time", "1e400", "finite"),
    ("max_wait_time", "9.3e9", "at most 600 s"),
    ("max_wait_time", "-1", "at least 0"),
    ("interval", "Infinity", "finite"),
    ("interval", "1e10", "at most 3600 s"),
    ("interval", "-0.5", "at least 0"),  # 0 is valid (the 24.12 schema): as often as the probe floor allows
    ("initial_delay", "-Infinity", "finite"),
    ("initial_delay", "86401", "at most 86400 s"),
    ("initial_delay", "-0.5", "at least 0"),
    ("max_retries", "1001", "at most 1000"),
    ("max_retries", "0", "at least 1"),
    ("expected_status_code", "99", "at least 100"),
    ("expected_status_code", "600", "at most 599"),
]


@pytest.mark.parametrize(("field", "value", "says"), HEALTH_LIMITS)
def test_health_check_numbers_never_get_past_validation(field: str, value: str, says: str) -> None:
    payload = ('{"name": "m", "service": {"start_command": ["x"], "port": 80, "health_check": {"path": "/", "'
               + field + '": ' + value + "}}}")
    result = wire.decode([b"start-model-service", payload.encode()])
    assert isinstance(result, BadFrame) and isinstance(result.reply, ModelServiceResult)
    error = result.reply.error
    assert error is not None and says in error
    assert f"{field} must be" in error and f"@ $.service.health_check.{field}" in error


def test_health_check_refuses_out_of_range_values_even_when_built_in_code() -> None:
    from kernel_runner.messages import HealthCheck

    with pytest.raises(ValueError, match="max_wait_time must be a finite number"):
        HealthCheck(path="/", max_wait_time=float("inf"))
    with pytest.raises(ValueError, match="interval must be at least 0"):
        HealthCheck(path="/", interval=-1.0)
    assert HealthCheck(path="/", interval=0.0).interval == 0.0  # the 24.12 schema allows it
    assert HealthCheck(path="/", max_wait_time=600, interval=3600, initial_delay=86400).max_retries == 10


def test_the_largest_allowed_health_numbers_are_accepted() -> None:
    health = {"path": "/", "max_retries": 1000, "max_wait_time": 600, "interval": 3600, "initial_delay": 86400,
              "expected_status_code": 599}
    payload = {"name": "m", "service": {"start_command": ["x"], "port": 80, "health_check": health}}
    result = wire.decode([b"start-model-service", json.dumps(payload).encode()])
    assert isinstance(result, StartModelService)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "m" * 300, "service": {"start_command": ["x"], "port": 80}}, "$.name"),
        ({"name": "m", "service": {"start_command": ["x", "a\u0000b"], "port": 80}}, "$.service.start_command"),
        ({"name": "m", "service": {"start_command": "x", "port": 80, "shell": 5}}, "$.service.shell"),
        ({"name": "m", "service": {"start_command": "x", "port": 80, "shell": ["/bin/sh"]}}, "$.service.shell"),
        ({"name": "m", "service": {"start_command": "x", "port": 80, "health_check": {"path": "/" + "p" * 3000}}},
         "$.service.health_check.path"),
        ({"name": "m", "service": {"start_command": "x", "port": 80, "health_check": {"path": "/a b\r\n"}}},
         "$.service.health_check.path"),
    ],
)
def test_model_names_commands_and_shell_are_checked(payload: dict[str, object], field: str) -> None:
    result = wire.decode([b"start-model-service", json.dumps(payload).encode()])
    assert isinstance(result, BadFrame) and isinstance(result.reply, ModelServiceResult)
    assert result.reply.error is not None and field in result.reply.error


@pytest.mark.parametrize(
    ("op", "reply_type"),
    [("start-service", ServiceResult), ("start-model-service", ModelServiceResult), ("get-apps", AppsResult),
     ("shutdown-service", type(None))],
)
def test_a_control_payload_over_its_limit_is_refused_before_decoding(op: str, reply_type: type) -> None:
    payload = b"\xff" * (wire.MAX_CONTROL_PAYLOAD_BYTES + 1)  # not even UTF-8: the size is checked first
    result = wire.decode([op.encode(), payload])
    assert isinstance(result, BadFrame)
    assert f"payload of {len(payload)} bytes is over the 1 MiB limit for {op}" == result.reason
    assert isinstance(result.reply, reply_type)
    if isinstance(result.reply, ServiceResult | ModelServiceResult):
        assert result.reply.error == result.reason


def test_complete_has_a_larger_limit_and_answers_an_empty_list_beyond_it() -> None:
    big_cell = json.dumps({"code": "x" * (2 * wire.MAX_CONTROL_PAYLOAD_BYTES)}).encode()
    assert isinstance(wire.decode([b"complete", big_cell]), CompleteCode)
    result = wire.decode([b"complete", b" " * (wire.MAX_COMPLETE_PAYLOAD_BYTES + 1)])
    assert isinstance(result, BadFrame) and result.reply == CompletionResult(items=())
    assert "16 MiB limit for complete" in result.reason


def test_run_payloads_are_limited_only_by_the_frame_limit() -> None:
    assert isinstance(wire.decode([b"code", b"x" * (2 * wire.MAX_CONTROL_PAYLOAD_BYTES)]), RunCode)
    result = wire.decode([b"exec", b"x" * (wire.MAX_FRAME_BYTES + 1)])
    assert isinstance(result, BadFrame) and result.reply is None
    assert "64 MiB limit for exec" in result.reason


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b'{"x": 1}', b"[" * 1000])
def test_status_and_interrupt_ignore_whatever_payload_comes(payload: bytes) -> None:
    assert wire.decode([b"status", payload]) == StatusRequest()
    assert wire.decode([b"interrupt", payload]) == InterruptRun()


def test_nesting_is_measured_before_parsing_and_strings_do_not_count() -> None:
    deep = b"[" * 33 + b"]" * 33
    result = wire.decode([b"complete", b'{"code": "", "x": ' + deep + b"}"])
    assert isinstance(result, BadFrame) and "nests deeper than 32 levels" in result.reason
    brackets_in_a_string = json.dumps({"code": "[" * 5000 + '\\"{' * 100}).encode()
    assert wire.decode([b"complete", brackets_in_a_string]) == CompleteCode(code="[" * 5000 + '\\"{' * 100)
    just_deep_enough = json.dumps({"code": "", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})
    assert isinstance(wire.decode([b"complete", just_deep_enough.encode()]), CompleteCode)


def test_unknown_and_overlong_op_names_are_quoted_briefly() -> None:
    long_op = b"x" * (64 * 1024 * 1024)
    result = wire.decode([long_op, b""])
    assert isinstance(result, BadFrame) and result.op is None
    assert len(result.reason) < 200 and f"({len(long_op)} bytes)" in result.reason
    odd = wire.decode([b"no\nsuch", b""])
    assert isinstance(odd, BadFrame) and odd.reason == "unknown op 'no\\nsuch'" and odd.op is None
    plain = wire.decode([b"no-such", b""])
    assert isinstance(plain, BadFrame) and plain.op == "no-such"


def test_error_texts_quote_wire_keys_briefly() -> None:
    payload = {"name": "x", "options": {"envs": {"K" * 100_000: 1}}}
    result = wire.decode([b"start-service", json.dumps(payload).encode()])
    assert isinstance(result, BadFrame) and isinstance(result.reply, ServiceResult)
    assert result.reply.error is not None and len(result.reply.error) < 1000
    assert "characters)" in result.reply.error
