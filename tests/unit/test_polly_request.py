"""vendor.aws_polly's `code` payload and the settings taken from the child env, as pure code (docs/protocol.md §8.5)."""

from __future__ import annotations

import pytest

from kernel_runner.actors.polly.worker import (
    DEFAULT_REGION,
    BadPayload,
    PollySettings,
    SpeechRequest,
    parse_speech_request,
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{"text": "Hi", "voiceId": "Joanna"}', SpeechRequest(text="Hi", voice_id="Joanna", text_type="text")),
        ('{"text": "<speak>Hi</speak>", "voiceId": "Seoyeon", "textType": "ssml"}',
         SpeechRequest(text="<speak>Hi</speak>", voice_id="Seoyeon", text_type="ssml")),
        # Unknown fields are ignored, as upstream did; an empty text is Polly's to judge.
        ('{"text": "", "voiceId": "Joanna", "engine": "neural"}', SpeechRequest(text="", voice_id="Joanna")),
        ('  {"text": "한국어", "voiceId": "Seoyeon"}\n', SpeechRequest(text="한국어", voice_id="Seoyeon")),
    ],
)
def test_good_payloads(source: str, expected: SpeechRequest) -> None:
    assert parse_speech_request(source) == expected


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("", "the code is not JSON"),
        ("Hello", "the code is not JSON"),
        ('"Hello"', "the code must be a JSON object"),
        ("null", "not null"),
        ('{"voiceId": "Joanna"}', 'the field "text" is missing'),
        ('{"text": "Hi"}', 'the field "voiceId" is missing'),
        ('{"text": ["Hi"], "voiceId": "Joanna"}', 'the field "text" must be a string, not an array'),
        ('{"text": "Hi", "voiceId": null}', 'the field "voiceId" must be a string, not null'),
        ('{"text": "Hi", "voiceId": "Joanna", "textType": true}', 'the field "textType" must be a string, not a boolean'),
        ('{"text": "Hi", "voiceId": "Joanna", "textType": "SSML"}', 'the field "textType" must be "text" or "ssml"'),
        ('{"text": "Hi", "voiceId": ""}', 'the field "voiceId" is empty'),
        ('{"text": "\\udc80", "voiceId": "Joanna"}', 'the field "text" is not valid Unicode'),
    ],
)
def test_bad_payloads_name_what_is_wrong_on_one_line(source: str, reason: str) -> None:
    parsed = parse_speech_request(source)
    assert isinstance(parsed, BadPayload)
    assert reason in parsed.reason
    assert "\n" not in parsed.reason


def test_settings_come_from_the_child_env() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://everything.example",
        "AWS_ENDPOINT_URL_POLLY": "http://polly.example",
        "AWS_PROFILE": "work",
    }
    settings = PollySettings.from_env(env, read_timeout_s=5.0, max_attempts=2)
    assert (settings.access_key_id, settings.secret_access_key, settings.session_token) == ("AKID", "secret", "token")
    assert (settings.region, settings.endpoint_url, settings.profile) == ("us-east-1", "http://polly.example", "work")
    assert (settings.read_timeout_s, settings.max_attempts) == (5.0, 2)
    assert "secret" not in repr(settings) and "token" not in repr(settings)  # settings may be logged


def test_unset_or_empty_values_leave_the_choice_to_boto3_and_the_region_defaults_as_upstream() -> None:
    settings = PollySettings.from_env({"AWS_ACCESS_KEY_ID": "", "AWS_DEFAULT_REGION": ""})
    assert settings == PollySettings(region=DEFAULT_REGION)
    assert DEFAULT_REGION == "ap-northeast-2"


def test_the_general_endpoint_applies_unless_configured_endpoints_are_ignored() -> None:
    assert PollySettings.from_env({"AWS_ENDPOINT_URL": "http://all.example"}).endpoint_url == "http://all.example"
    ignored = {"AWS_ENDPOINT_URL_POLLY": "http://polly.example", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert PollySettings.from_env(ignored).endpoint_url is None
