"""PollyActor under a real supervisor, with a stand-in language runner that records what the actor tells it.

The stand-in for Amazon Polly is tests/children/fake_polly.py (these machines have no AWS account): a real HTTP
server on 127.0.0.1 speaking Polly's REST-JSON protocol, reached with the real boto3 client through the endpoint
in the child env. The first test checks the stand-in itself with boto3, so the others can trust it. Faults of our
own worker are injected through the actor's `client_factory` (the seam that makes the boto3 client), never by
replacing boto3. The agent's view of the same behaviour is tests/integration/test_query_polly.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from loguru import logger

from kernel_runner import RunnerConfig
from kernel_runner.actors.polly.actor import LIFECYCLE, Phase, PollyActorSettings
from kernel_runner.actors.polly.worker import (
    ClientBox,
    PollyCall,
    PollySettings,
    SpeechRequest,
    make_boto3_client,
)
from kernel_runner.config import RestartDefaults
from kernel_runner.context import RunnerContext
from kernel_runner.ids import POLLY_CHILD, RunId, next_run_id
from kernel_runner.messages import (
    Finished,
    InterruptRun,
    Media,
    Output,
    PollyCallFailed,
    PollySynthesized,
    RunDone,
    RunTask,
)
from kernel_runner.runtime.tree import polly_child_spec
from kernel_runner.supervision.actor import InvalidTransition, PhaseMachine
from kernel_runner.supervision.spec import ChildInfo, ChildState, StopRequested
from tests.support.polly import ACCESS_KEY, REGION, SECRET_KEY, FakePolly, clear_aws_settings
from tests.support.tree import Tree
from tests.support.waiting import wait_until

WAIT_S = 30.0


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakePolly]:
    clear_aws_settings(monkeypatch, tmp_path)
    server = FakePolly()
    try:
        yield server
    finally:
        server.close()


def settings_for(fake: FakePolly, **changes: Any) -> PollySettings:
    return attrs.evolve(PollySettings(region=REGION, endpoint_url=fake.url, access_key_id=ACCESS_KEY,
                                      secret_access_key=SECRET_KEY), **changes)


# ---- the stand-in speaks Polly as boto3 reads it -------------------------------------------------------------------


def test_the_stand_in_answers_boto3_as_polly_does(fake: FakePolly) -> None:
    client = make_boto3_client(settings_for(fake))
    voices = client.describe_voices(LanguageCode="en-US")["Voices"]
    assert {voice["Id"] for voice in voices} == {"Joanna", "Matthew"}
    reply = client.synthesize_speech(Text="hi", VoiceId="Joanna", OutputFormat="ogg_vorbis")
    assert (reply["ContentType"], reply["RequestCharacters"]) == ("audio/ogg", 2)
    assert reply["AudioStream"].read().startswith(b"OggS")
    with pytest.raises(client.exceptions.InvalidSsmlException):
        client.synthesize_speech(Text="no tags", TextType="ssml", VoiceId="Joanna", OutputFormat="ogg_vorbis")


def test_a_call_without_the_actor_reports_aws_errors_as_failures(fake: FakePolly) -> None:
    box = ClientBox(settings_for(fake))
    good = PollyCall(call_id=1, request=SpeechRequest(text="x", voice_id="Joanna"), box=box, owner=None).execute()
    assert isinstance(good, PollySynthesized) and good.content_type == "audio/ogg"
    partial = ClientBox(settings_for(fake, secret_access_key=None))
    failed = PollyCall(call_id=2, request=SpeechRequest(text="x", voice_id="Joanna"), box=partial, owner=None).execute()
    assert isinstance(failed, PollyCallFailed) and failed.exit_code == 1
    assert "no usable AWS credentials" in failed.text and "AWS_SECRET_ACCESS_KEY" in failed.text
    assert failed.text.count("\n") == 1 and failed.text.endswith("\n")
    assert len(fake.speech_requests()) == 1  # the partial credentials never left the process
    small = PollyCall(call_id=3, request=SpeechRequest(text="a longer text", voice_id="Joanna"), box=box, owner=None,
                      max_audio_bytes=16).execute()
    assert isinstance(small, PollyCallFailed) and small.exit_code == 1
    assert small.text == "kernel-runner: the audio Amazon Polly sent is larger than 16 bytes\n"


# ---- the contract with the language runner (bare supervisor) -----------------------------------------------------


class PollyTree(Tree):
    """The Polly actor (its child env pointing at the stand-in) and a stand-in language runner; the recorder is the
    router. Restarts are quick, so a test of a restart does not wait for the production backoff."""

    def __init__(self, config: RunnerConfig, fake: FakePolly, **knobs: Any) -> None:
        quick = RestartDefaults(backoff_initial_s=0.01, backoff_cap_s=0.05, backoff_jitter=0.0)
        super().__init__(attrs.evolve(config, lang="vendor.aws_polly", restart=quick))
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
               "AWS_ENDPOINT_URL_POLLY": fake.url}
        runner: RunnerContext = attrs.evolve(self.runner, env=env)
        self.start_forwarding_lang()
        self.start(polly_child_spec(runner, PollyActorSettings(**knobs)))
        self.wait_child(POLLY_CHILD, lambda info: info.state is ChildState.RUNNING, what="the Polly actor running")

    def code(self, text: str) -> RunId:
        run_id = next_run_id()
        self.tell_child(POLLY_CHILD, RunTask(run_id=run_id, kind="code", text=text))
        return run_id

    def run_done(self, run_id: RunId) -> RunDone:
        found = self.recorder.wait_for(lambda m: isinstance(m, tuple) and isinstance(m[1], RunDone)
                                       and m[1].run_id == run_id, timeout=WAIT_S, what=f"RunDone of run {run_id}")
        done: RunDone = found[1]
        return done

    def polly(self) -> ChildInfo:
        info = self.child(POLLY_CHILD)
        assert info is not None
        return info


def test_run_done_follows_the_media_and_the_actor_sends_no_finished(runner_config: RunnerConfig, fake: FakePolly) -> None:
    tree = PollyTree(runner_config, fake)
    try:
        run_id = tree.code('{"text": "Hi", "voiceId": "Joanna"}')
        assert tree.run_done(run_id) == RunDone(run_id=run_id, exit_code=0)
        messages = tree.recorder.messages
        media = [m for m in messages if isinstance(m, Media)]
        assert len(media) == 1 and media[0].mime == "audio/ogg"
        assert media[0].data.startswith("data:audio/ogg;base64,T2dnU")  # base64 of the stand-in's "OggS"
        assert messages.index(media[0]) < messages.index(("lang", RunDone(run_id=run_id, exit_code=0)))
        assert not [m for m in messages if isinstance(m, Finished)], "only the language runner sends Finished"

        batch = next_run_id()
        tree.tell_child(POLLY_CHILD, RunTask(run_id=batch, kind="exec", text="ls"))
        assert tree.run_done(batch).exit_code == 127
        assert any(isinstance(m, Output) and b"takes only `code`" in m.data for m in tree.recorder.messages)
    finally:
        tree.close()


def test_a_dead_worker_is_restarted_and_the_runs_queued_behind_it_are_answered(runner_config: RunnerConfig,
                                                                               fake: FakePolly) -> None:
    made: list[int] = []

    def faulty_first(settings: PollySettings) -> Any:
        made.append(1)
        if len(made) == 1:
            raise RuntimeError("injected worker fault")
        return make_boto3_client(settings)

    tree = PollyTree(runner_config, fake, client_factory=faulty_first)
    try:
        # Told together: the second and third wait in the actor's queue while the first call's worker dies.
        runs = [tree.code(f'{{"text": "run {n}", "voiceId": "Joanna"}}') for n in (1, 2, 3)]
        first = tree.run_done(runs[0])
        assert first.exit_code == 1
        assert first.note is not None and "the Amazon Polly worker failed" in first.note
        assert [tree.run_done(run_id).exit_code for run_id in runs[1:]] == [0, 0]
        info = tree.polly()
        assert (info.generation, info.restarts, info.state) == (2, 1, ChildState.RUNNING)
        assert [r["body"]["Text"] for r in fake.speech_requests()] == ["run 2", "run 3"]  # in order, none lost
        assert len(made) == 2
    finally:
        tree.close()


def test_a_client_that_is_not_ready_in_time_ends_the_run_and_the_next_call_makes_its_own(runner_config: RunnerConfig,
                                                                                       fake: FakePolly) -> None:
    release = threading.Event()
    made: list[int] = []

    def slow_first(settings: PollySettings) -> Any:
        made.append(1)
        if len(made) == 1:
            release.wait(WAIT_S)  # a stuck credential lookup, say
        return make_boto3_client(settings)

    # The second call makes its client within the same bound: import boto3 now, so the bound is not spent on that.
    make_boto3_client(settings_for(fake))
    tree = PollyTree(runner_config, fake, client_factory=slow_first, setup_timeout_s=3.0)
    try:
        stuck = tree.code('{"text": "stuck", "voiceId": "Joanna"}')
        assert tree.run_done(stuck).exit_code == 124
        assert any(isinstance(m, Output) and b"was not ready within 3 s" in m.data for m in tree.recorder.messages)
        nxt = tree.code('{"text": "next", "voiceId": "Joanna"}')
        assert tree.run_done(nxt).exit_code == 0  # did not wait for the first client
        assert tree.polly().extra["abandoned_calls"] == 1
    finally:
        release.set()
        tree.close()
    assert [r["body"]["Text"] for r in fake.speech_requests()] == ["next"]  # the abandoned call never sent


def test_a_stop_answers_the_call_in_flight_and_later_runs_get_the_reject(runner_config: RunnerConfig,
                                                                         fake: FakePolly) -> None:
    tree = PollyTree(runner_config, fake)
    try:
        run_id = tree.code('{"text": "[hang]", "voiceId": "Joanna"}')
        fake.wait_for_speech(lambda r: r["body"]["Text"] == "[hang]")
        tree.tell_child(POLLY_CHILD, StopRequested(reason="test", grace_s=1.0))
        done = tree.run_done(run_id)
        assert done.exit_code == 1
        assert done.note == "kernel-runner: the Amazon Polly call was abandoned: the runner is stopping\n"
        # A requested stop is not a failure: the supervisor forgets the child, and its reject answers from now on.
        wait_until(lambda: tree.child(POLLY_CHILD) is None, timeout=WAIT_S, what="the Polly child forgotten")
        later = tree.code('{"text": "later", "voiceId": "Joanna"}')
        rejected = tree.run_done(later)
        assert rejected.exit_code == 127
        assert rejected.note is not None and "the Amazon Polly worker is not running" in rejected.note
    finally:
        tree.close()


def test_interrupt_abandons_the_call_and_its_late_outcome_is_ignored(runner_config: RunnerConfig, fake: FakePolly) -> None:
    tree = PollyTree(runner_config, fake, read_timeout_s=2.0, max_attempts=1)
    try:
        run_id = tree.code('{"text": "[hang]", "voiceId": "Joanna"}')
        fake.wait_for_speech(lambda r: r["body"]["Text"] == "[hang]")
        tree.tell_child(POLLY_CHILD, InterruptRun())
        assert tree.run_done(run_id) == RunDone(run_id=run_id, exit_code=130)
        # boto3's read timeout ends the abandoned call a little later; its failure reaches nobody.
        wait_until(lambda: tree.polly().extra["abandoned_calls"] == 0, timeout=WAIT_S, what="the abandoned call's end")
        dones = [m for m in tree.recorder.messages if isinstance(m, tuple) and isinstance(m[1], RunDone)]
        assert len(dones) == 1
        assert not any(isinstance(m, Output) and b"did not answer" in m.data for m in tree.recorder.messages)
    finally:
        tree.close()


# ---- phases ----------------------------------------------------------------------------------------------------


def polly_phases(log_lines: list[str]) -> list[str]:
    prefix = "DEBUG [polly] phase "
    return [line.removeprefix(prefix).split(":", 1)[0] for line in log_lines if line.startswith(prefix)]


def test_a_normal_life_goes_through_its_phases(runner_config: RunnerConfig, fake: FakePolly, log_lines: list[str]) -> None:
    tree = PollyTree(runner_config, fake)
    try:
        assert tree.run_done(tree.code('{"text": "Hi", "voiceId": "Joanna"}')).exit_code == 0
        assert tree.run_done(tree.code("not json")).exit_code == 2  # answered in IDLE: no call, no phase change
    finally:
        tree.close()
    assert polly_phases(log_lines) == ["STARTING -> IDLE", "IDLE -> CALLING", "CALLING -> IDLE", "IDLE -> ENDED"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.STARTING, Phase.CALLING),  # no call before the settings are read
        (Phase.CALLING, Phase.CALLING),  # one call at a time
        (Phase.IDLE, Phase.STARTING),
        (Phase.ENDED, Phase.IDLE),
    ],
)
def test_the_transition_table_refuses_edges_that_must_never_happen(old: Phase, new: Phase) -> None:
    life = PhaseMachine(old, LIFECYCLE.transitions, log=lambda: logger)
    with pytest.raises(InvalidTransition):
        life.to(new, "test")
    assert life.phase is old


def test_every_phase_can_end_and_the_supervisor_sees_running_once_started() -> None:
    assert set(LIFECYCLE.transitions) == set(Phase) == set(LIFECYCLE.child_states)
    assert all(Phase.ENDED in LIFECYCLE.transitions[phase] for phase in Phase if phase is not Phase.ENDED)
    assert LIFECYCLE.transitions[Phase.ENDED] == frozenset()
    assert {p for p, s in LIFECYCLE.child_states.items() if s is ChildState.RUNNING} == {Phase.IDLE, Phase.CALLING}


# ---- boto3 only when this language runs ------------------------------------------------------------------------


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_runner_does_not_import_boto3_until_a_polly_call_runs() -> None:
    imported = run_python(
        "import sys, kernel_runner, kernel_runner.actors.polly.actor\n"
        "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    )
    assert imported == "[]"


def test_without_boto3_a_call_says_how_to_install_it() -> None:
    # sys.modules[name] = None makes `import name` fail, as on an install without the `aws` extra.
    outcome = run_python(
        "import sys\n"
        "sys.modules['boto3'] = sys.modules['botocore'] = None\n"
        "from kernel_runner.actors.polly.worker import ClientBox, PollyCall, PollySettings, SpeechRequest\n"
        "call = PollyCall(call_id=1, request=SpeechRequest(text='x', voice_id='Joanna'),\n"
        "                 box=ClientBox(PollySettings(region='ap-northeast-2')), owner=None)\n"
        "result = call.execute()\n"
        "print(type(result).__name__, result.exit_code, result.text, end='')\n"
    )
    assert outcome.startswith("PollyCallFailed 127 kernel-runner: vendor.aws_polly needs boto3, which is not installed:")
    assert "pip install 'kernel-runner[aws]'" in outcome
