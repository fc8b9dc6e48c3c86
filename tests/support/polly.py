"""The Amazon Polly stand-in (tests/children/fake_polly.py) as a subprocess, and the environment the Polly tests run in.

Why a stand-in: these machines have no AWS account (and no route to AWS). The stand-in is only the service: the
runner reaches it with the real boto3 client through AWS_ENDPOINT_URL_POLLY, so signing, retries, timeouts and
error parsing are boto3's own. moto's server mode implements SynthesizeSpeech too, but it cannot be made to hang,
throttle or drip, which is what these tests need; the stand-in's own docstring lists what it implements.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kernel_runner.client import RunResult
from tests.support.waiting import wait_until

FAKE_POLLY = str(Path(__file__).resolve().parent.parent / "children" / "fake_polly.py")
START_TIMEOUT_S = 15.0

# The credentials and region the child environment gives the runner in most tests (environ.txt).
ACCESS_KEY = "AKIDCHILDENVTEST"
SECRET_KEY = "child-env-secret"
SESSION_TOKEN = "child-env-session-token"
REGION = "eu-west-1"


class FakePolly:
    """One fake_polly.py process on 127.0.0.1; `requests()` is what it received so far."""

    def __init__(self, *extra_args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, FAKE_POLLY, *extra_args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        if not readable:
            self.close()
            raise AssertionError(f"the Polly stand-in did not start within {START_TIMEOUT_S:g}s")
        line = self.proc.stdout.readline().decode()
        assert "listening on" in line, line
        self.port = int(line.split()[-1])
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/__requests", timeout=5) as reply:
            found: list[dict[str, Any]] = json.loads(reply.read())
        return found

    def speech_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["path"] == "/v1/speech"]

    def wait_for_speech(self, match: Callable[[dict[str, Any]], bool], *, timeout: float = 30.0,
                        what: str = "a SynthesizeSpeech request") -> dict[str, Any]:
        found = wait_until(lambda: next((r for r in self.speech_requests() if match(r)), None), timeout=timeout,
                           what=what)
        assert found is not None
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def clear_aws_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The runner's own environment holds no AWS setting, so boto3's fallback chain finds nothing by itself: no
    keys, no shared files, no instance metadata (a test that wants the chain sets what it needs)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def write_environ(config_dir: Path, **values: str) -> None:
    """The agent's environ.txt: what the child environment adds to the runner's (docs/protocol.md §1.4 step 5)."""
    (config_dir / "environ.txt").write_text("".join(f"{key}={value}\n" for key, value in values.items()))


def child_env_settings(fake: FakePolly, **overrides: str) -> dict[str, str]:
    values = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_POLLY": fake.url,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value}


def payload(text: str, voice: str = "Joanna", text_type: str | None = None) -> str:
    body: dict[str, str] = {"text": text, "voiceId": voice}
    if text_type is not None:
        body["textType"] = text_type
    return json.dumps(body)


def audio_of(result: RunResult) -> tuple[str, dict[str, Any]]:
    """The run's one media message: its content type, and what the stand-in put into the audio it answered with."""
    (media,) = result.of_type("media")
    body = media.json()
    content_type = body["type"]
    prefix = f"data:{content_type};base64,"
    assert body["data"].startswith(prefix), body["data"][:80]
    audio = base64.b64decode(body["data"][len(prefix):], validate=True)
    assert audio.startswith(b"OggS"), audio[:16]
    return content_type, json.loads(audio[4:])


def credential_scope(request: dict[str, Any]) -> list[str]:
    """`<key>/<date>/<region>/polly/aws4_request` of a SigV4 Authorization header, split."""
    authorization = request["headers"]["authorization"] or ""
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential="), authorization
    return authorization.split("Credential=", 1)[1].split(",", 1)[0].split("/")
