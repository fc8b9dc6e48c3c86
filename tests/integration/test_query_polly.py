"""vendor.aws_polly's query mode through the whole runner, driven over the wire as the agent drives it (docs/protocol.md §8.5).

The stand-in: Amazon Polly itself. These machines have no AWS account, so tests/children/fake_polly.py plays the
service on 127.0.0.1 (SynthesizeSpeech and DescribeVoices over Polly's REST-JSON protocol, errors as Polly sends
them, and on request a hang, a throttle or a dribbled answer). Everything on the runner's side is real: the runner
calls it with the real boto3 client (signing, retries, timeouts, error parsing), reached through
AWS_ENDPOINT_URL_POLLY; credentials and region come from the child environment (environ.txt) as in a session.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from kernel_runner import RunnerConfig, RunnerHandle
from kernel_runner.actors.polly.actor import PollyActorSettings
from kernel_runner.client import AgentClient
from kernel_runner.ids import POLLY_CHILD
from kernel_runner.runtime.tree import polly_child_spec
from kernel_runner.supervision.spec import ChildInfo, ChildState
from tests.support.polly import (
    ACCESS_KEY,
    REGION,
    SESSION_TOKEN,
    FakePolly,
    audio_of,
    child_env_settings,
    clear_aws_settings,
    credential_scope,
    payload,
    write_environ,
)
from tests.support.runners import running
from tests.support.waiting import wait_until

RUN_TIMEOUT_S = 30.0  # far above what a call takes; every bound a test checks is below it


@pytest.fixture
def fake() -> Iterator[FakePolly]:
    server = FakePolly()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def polly_config(runner_config: RunnerConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RunnerConfig:
    clear_aws_settings(monkeypatch, tmp_path)
    return attrs.evolve(runner_config, lang="vendor.aws_polly")


@contextlib.contextmanager
def polly_runner(config: RunnerConfig, environ: dict[str, str], **knobs: Any) -> Iterator[tuple[RunnerHandle, AgentClient]]:
    """The runner for vendor.aws_polly with `environ` in environ.txt; `knobs` replace the Polly child's defaults."""
    write_environ(config.config_dir, **environ)
    extra = [lambda runner: polly_child_spec(runner, PollyActorSettings(**knobs))] if knobs else []
    with running(config, extra_children=extra) as (handle, agent):
        yield handle, agent


def polly_info(handle: RunnerHandle) -> ChildInfo:
    return next(info for info in handle.which_children() if info.child_id == POLLY_CHILD)


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert text.startswith("kernel-runner: "), text
    return text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---- success, and where credentials, region and endpoint come from --------------------------------------------------


def test_speech_is_one_media_message_signed_with_the_child_envs_credentials(polly_config: RunnerConfig,
                                                                             fake: FakePolly) -> None:
    with polly_runner(polly_config, child_env_settings(fake)) as (handle, agent):
        result = agent.code(payload("Hello there"), timeout=RUN_TIMEOUT_S)
        assert (result.status, result.exit_code, result.stderr) == ("finished", 0, b"")
        assert [r.type for r in result.records] == ["media"]
        assert set(result.of_type("media")[0].json()) == {"type", "data"}
        content_type, asked = audio_of(result)
        assert content_type == "audio/ogg"
        assert asked == {"voice": "Joanna", "textType": "text", "text": "Hello there"}  # textType defaults to text

        ssml = agent.code(payload("<speak>Hi</speak>", voice="Seoyeon", text_type="ssml"), timeout=RUN_TIMEOUT_S)
        assert ssml.exit_code == 0
        assert audio_of(ssml)[1] == {"voice": "Seoyeon", "textType": "ssml", "text": "<speak>Hi</speak>"}

        first = fake.speech_requests()[0]
        assert first["body"] == {"Text": "Hello there", "VoiceId": "Joanna", "TextType": "text",
                                 "OutputFormat": "ogg_vorbis"}
        key, _date, region, service, _ = credential_scope(first)
        assert (key, region, service) == (ACCESS_KEY, REGION, "polly")
        assert first["headers"]["x-amz-security-token"] == SESSION_TOKEN
        info = polly_info(handle)
        assert info.state is ChildState.RUNNING
        assert (info.extra["region"], info.extra["endpoint_url"]) == (REGION, fake.url)


def test_the_region_defaults_to_ap_northeast_2(polly_config: RunnerConfig, fake: FakePolly) -> None:
    with polly_runner(polly_config, child_env_settings(fake, AWS_DEFAULT_REGION="")) as (_handle, agent):
        assert agent.code(payload("Hi"), timeout=RUN_TIMEOUT_S).exit_code == 0
    key, _date, region, _service, _ = credential_scope(fake.speech_requests()[0])
    assert (key, region) == (ACCESS_KEY, "ap-northeast-2")


def test_without_keys_in_the_child_env_boto3s_own_chain_is_used(polly_config: RunnerConfig, fake: FakePolly,
                                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIDFROMTHEFILE\naws_secret_access_key = file-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    environ = child_env_settings(fake, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_SESSION_TOKEN="")
    with polly_runner(polly_config, environ) as (_handle, agent):
        assert agent.code(payload("Hi"), timeout=RUN_TIMEOUT_S).exit_code == 0
    request = fake.speech_requests()[0]
    assert credential_scope(request)[0] == "AKIDFROMTHEFILE"
    assert request["headers"]["x-amz-security-token"] is None


# ---- AWS errors -----------------------------------------------------------------------------------------------


def test_aws_errors_are_one_stderr_line_and_a_non_zero_exit(polly_config: RunnerConfig, fake: FakePolly) -> None:
    with polly_runner(polly_config, child_env_settings(fake)) as (_handle, agent):
        bad_voice = agent.code(payload("Hi", voice="Nobody"), timeout=RUN_TIMEOUT_S)
        assert (bad_voice.status, bad_voice.exit_code, bad_voice.of_type("media")) == ("finished", 1, [])
        line = one_line(bad_voice.stderr)
        assert "Amazon Polly refused the request: ValidationException:" in line and "'Nobody'" in line

        failing = agent.code(payload("[fail]"), timeout=RUN_TIMEOUT_S)  # a 5xx: boto3 retries it, then gives up
        assert failing.exit_code == 1
        assert "ServiceFailureException" in one_line(failing.stderr)

        assert audio_of(agent.code(payload("still works"), timeout=RUN_TIMEOUT_S))[1]["text"] == "still works"


def test_throttling_is_retried_then_reported(polly_config: RunnerConfig, fake: FakePolly) -> None:
    with polly_runner(polly_config, child_env_settings(fake), max_attempts=2) as (_handle, agent):
        result = agent.code(payload("[throttle]"), timeout=RUN_TIMEOUT_S)
    assert result.exit_code == 1
    assert "ThrottlingException: Rate exceeded (after 2 attempts)" in one_line(result.stderr)
    assert len(fake.speech_requests()) == 2


def test_no_credentials_anywhere_is_a_clear_error(polly_config: RunnerConfig, fake: FakePolly) -> None:
    environ = child_env_settings(fake, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_SESSION_TOKEN="")
    with polly_runner(polly_config, environ) as (_handle, agent):
        result = agent.code(payload("Hi"), timeout=RUN_TIMEOUT_S)
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert "no usable AWS credentials" in line and "AWS_ACCESS_KEY_ID" in line
    assert fake.speech_requests() == []  # nothing unsigned was sent


def test_an_unreachable_endpoint_is_a_clear_error(polly_config: RunnerConfig, fake: FakePolly) -> None:
    environ = child_env_settings(fake, AWS_ENDPOINT_URL_POLLY=f"http://127.0.0.1:{closed_port()}")
    with polly_runner(polly_config, environ) as (_handle, agent):
        result = agent.code(payload("Hi"), timeout=RUN_TIMEOUT_S)
    assert result.exit_code == 1
    assert "Amazon Polly could not be reached: Could not connect to the endpoint URL" in one_line(result.stderr)


# ---- timeouts and interrupts -------------------------------------------------------------------------------------


def test_a_hanging_endpoint_times_out_and_the_next_request_works(polly_config: RunnerConfig, fake: FakePolly) -> None:
    # boto3's own read timeout (5 s here, one attempt) ends the call; the runner reports it.
    with polly_runner(polly_config, child_env_settings(fake), read_timeout_s=5.0, max_attempts=1) as (_handle, agent):
        result = agent.code(payload("[hang]"), timeout=RUN_TIMEOUT_S)
        assert (result.exit_code, result.of_type("media")) == (1, [])
        assert "Amazon Polly did not answer in time: Read timeout" in one_line(result.stderr)
        assert audio_of(agent.code(payload("after the hang"), timeout=RUN_TIMEOUT_S))[1]["text"] == "after the hang"


def test_an_answer_that_never_ends_is_cut_by_the_call_deadline(polly_config: RunnerConfig, fake: FakePolly) -> None:
    # Every read gets a byte within boto3's read timeout, so only the runner's own deadline (5 s here) ends the call.
    with polly_runner(polly_config, child_env_settings(fake), call_timeout_s=5.0) as (handle, agent):
        result = agent.code(payload("[drip]"), timeout=RUN_TIMEOUT_S)
        assert (result.exit_code, result.of_type("media")) == (124, [])
        assert "Amazon Polly did not finish within 5 s; the call was abandoned" in one_line(result.stderr)
        # The abandoned call stops reading at the server's next pause, and its late outcome is dropped.
        wait_until(lambda: polly_info(handle).extra["abandoned_calls"] == 0, timeout=10,
                   what="the abandoned call to end")
        assert audio_of(agent.code(payload("after the drip"), timeout=RUN_TIMEOUT_S))[1]["text"] == "after the drip"


def test_interrupt_ends_a_call_at_once_and_the_next_request_does_not_wait_for_it(polly_config: RunnerConfig,
                                                                                 fake: FakePolly) -> None:
    # Default bounds: the hung call would take boto3's 30 s read timeout; the run must end long before that.
    with polly_runner(polly_config, child_env_settings(fake)) as (handle, agent):
        agent.send("code", payload("[hang] forever"))
        fake.wait_for_speech(lambda r: "[hang]" in r["body"]["Text"], what="the hanging call to reach Polly")
        agent.interrupt()
        result = agent.collect_run(timeout=10)
        assert (result.status, result.exit_code, result.of_type("media")) == ("finished", 130, [])
        assert "interrupted" in one_line(result.stderr)
        assert polly_info(handle).extra["abandoned_calls"] == 1  # still hanging at Polly, and nobody waits for it
        # Waiting behind the abandoned call would take its 30 s read timeout: well past this bound.
        nxt = agent.code(payload("next one"), timeout=10)
        assert (nxt.exit_code, audio_of(nxt)[1]["text"]) == (0, "next one")
        agent.interrupt()  # nothing runs now: ignored, and the runner goes on
        assert agent.code(payload("and another"), timeout=10).exit_code == 0


def test_two_requests_back_to_back_are_answered_in_order(polly_config: RunnerConfig, fake: FakePolly) -> None:
    with polly_runner(polly_config, child_env_settings(fake)) as (_handle, agent):
        agent.send("code", payload("first"))
        agent.send("code", payload("second", voice="Matthew"))
        first, second = agent.collect_run(timeout=RUN_TIMEOUT_S), agent.collect_run(timeout=RUN_TIMEOUT_S)
    assert [(r.status, r.exit_code) for r in (first, second)] == [("finished", 0), ("finished", 0)]
    assert audio_of(first)[1] == {"voice": "Joanna", "textType": "text", "text": "first"}
    assert audio_of(second)[1] == {"voice": "Matthew", "textType": "text", "text": "second"}


# ---- payloads, completion, batch -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("Hello, Polly", "the code is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"voiceId": "Joanna"}', '"text" is missing'),
        ('{"text": "Hi"}', '"voiceId" is missing'),
        ('{"text": 5, "voiceId": "Joanna"}', '"text" must be a string, not a number'),
        ('{"text": "Hi", "voiceId": ""}', '"voiceId" is empty'),
        ('{"text": "Hi", "voiceId": "Joanna", "textType": "html"}', '"textType" must be "text" or "ssml", not "html"'),
        ('{"text": "\\ud800", "voiceId": "Joanna"}', '"text" is not valid Unicode'),
    ],
)
def test_a_bad_payload_names_the_field_and_the_next_request_works(polly_config: RunnerConfig, fake: FakePolly,
                                                                  code: str, named: str) -> None:
    with polly_runner(polly_config, child_env_settings(fake)) as (_handle, agent):
        result = agent.code(code, timeout=RUN_TIMEOUT_S)
        assert (result.status, result.exit_code, result.of_type("media")) == ("finished", 2, [])
        assert named in one_line(result.stderr)
        assert agent.code(payload("fine"), timeout=RUN_TIMEOUT_S).exit_code == 0
    assert [r["body"]["Text"] for r in fake.speech_requests()] == ["fine"]  # the bad one never reached Polly


def test_completion_is_empty_and_batch_ops_follow_the_language_table(polly_config: RunnerConfig,
                                                                     fake: FakePolly) -> None:
    with polly_runner(polly_config, child_env_settings(fake)) as (_handle, agent):
        assert agent.complete('{"text": "Hel') == {"suggestions": []}
        exec_star = agent.run("exec", "*")
        assert (exec_star.status, exec_star.exit_code) == ("finished", -1)
        assert b"batch-mode heuristics are not supported by this kernel" in exec_star.stderr
        assert agent.run("clean", "*").exit_code == 0
        explicit = agent.run("exec", "echo $AWS_DEFAULT_REGION")  # explicit commands run, with the child env
        assert (explicit.exit_code, explicit.stdout) == (0, f"{REGION}\n".encode())
        build = agent.run("build", "*")
        assert (build.status, build.exit_code) == ("build-finished", -1)
        assert b"batch-mode heuristics are not supported by this kernel" in build.stderr
        assert agent.code(payload("query mode still works"), timeout=RUN_TIMEOUT_S).exit_code == 0


def test_a_dead_worker_is_restarted_and_the_next_request_works(polly_config: RunnerConfig, fake: FakePolly) -> None:
    from kernel_runner.actors.polly.worker import PollySettings, make_boto3_client

    calls: list[str] = []

    def faulty_first(settings: PollySettings) -> Any:
        calls.append(settings.region)
        if len(calls) == 1:
            raise RuntimeError("injected worker fault")
        return make_boto3_client(settings)

    config = attrs.evolve(polly_config, restart=attrs.evolve(polly_config.restart, backoff_initial_s=0.01,
                                                              backoff_cap_s=0.05))
    with polly_runner(config, child_env_settings(fake), client_factory=faulty_first) as (handle, agent):
        result = agent.code(payload("dies"), timeout=RUN_TIMEOUT_S)
        assert (result.status, result.exit_code) == ("finished", 1)
        assert b"the Amazon Polly worker failed (RuntimeError('injected worker fault'))" in result.stderr
        assert audio_of(agent.code(payload("lives"), timeout=RUN_TIMEOUT_S))[1]["text"] == "lives"
        info = polly_info(handle)
        assert (info.generation, info.restarts, info.state) == (2, 1, ChildState.RUNNING)
    assert calls == [REGION, REGION]  # one client per incarnation: the failed one, then the restarted one
