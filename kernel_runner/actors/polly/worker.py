"""The PollyActor's helpers: the `code` payload, the settings from the child env, and PollyCall, one Amazon Polly
SynthesizeSpeech call through boto3 in a pool thread (docs/protocol.md §8.5).

Who owns what (the actor's own share is described in polly.py):

* PollyCall (one per run, on a thread of CALLS): imports boto3 (only here, so only when vendor.aws_polly runs),
  takes the incarnation's client from its ClientBox (the first call makes it), tells the actor `PollyCallSending`,
  calls SynthesizeSpeech, reads the audio, and tells exactly one outcome: `PollySynthesized`, `PollyCallFailed` (an
  AWS error, or no boto3) or `PollyWorkerDied` (anything else: a bug). It owns the HTTP response it reads; the one
  thing another thread does to it is `cancel()` shortening its socket timeout (settimeout is thread-safe).
* ClientBox (one per actor incarnation): the boto3 client, shared by that incarnation's calls (boto3 clients are
  thread-safe); never made on the actor's thread (importing boto3 and loading its models takes a while).

Why a pool of threads and not one worker thread: a boto3 call cannot be cancelled, and `interrupt` must end the run
at once, so an interrupted (or overdue) call is abandoned and the next run goes to another thread instead of waiting
behind it (upstream's single worker thread hung every later query, docs/protocol.md §10.6 #50). CALLS keeps a few
idle threads and starts a new one whenever none is idle. An abandoned call still ends by itself: every attempt is
bounded by boto3's connect and read timeouts and the number of attempts, and `cancel()` shortens the socket
timeout of the audio being read, so a server that keeps dribbling bytes ends the read at its next pause. Its late
outcome reaches the actor, which ignores it by its call id.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import pykka
from loguru import logger

from kernel_runner.messages import PollyCallFailed, PollyCallSending, PollySynthesized, PollyWorkerDied
from kernel_runner.observability.debug_lines import debug
from kernel_runner.procs.process import WorkerPool
from kernel_runner.supervision.refs import tell_if_alive

DEFAULT_REGION = "ap-northeast-2"  # docs/protocol.md §8.5: upstream's default
OUTPUT_FORMAT = "ogg_vorbis"  # docs/protocol.md §8.5
FALLBACK_CONTENT_TYPE = "audio/ogg"  # what Polly says for ogg_vorbis, used if a reply carries no Content-Type
CONNECT_TIMEOUT_S = 10.0  # per attempt (boto3's default is 60)
READ_TIMEOUT_S = 30.0  # per socket read (boto3's default is 60)
MAX_ATTEMPTS = 3  # boto3's "standard" retry mode: throttling, 5xx and connection errors are retried with backoff
MAX_AUDIO_BYTES = 32 << 20  # Polly takes at most 3000 billed characters; its audio is far below this
READ_CHUNK = 256 << 10
CANCEL_SOCKET_TIMEOUT_S = 0.001
TEXT_TYPES = ("text", "ssml")

EXIT_AWS_ERROR = 1  # AWS refused the call, could not be reached or timed out, or there are no credentials
EXIT_NO_BOTO3 = 127  # the `aws` extra is not installed: "could not run", as for a missing program
EXIT_CANCELLED = 130  # only in the outcome of an abandoned call, which the actor ignores

# Threads for calls: a call never waits behind an abandoned one (see the module docstring).
CALLS = WorkerPool("PollyCall", keep_idle=2)

PollyOutcome = PollyCallFailed | PollySynthesized | PollyWorkerDied


# ---- the payload --------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SpeechRequest:
    """One `code` payload: `{"text": str, "voiceId": str, "textType": "text" | "ssml"}` (docs/protocol.md §8.5)."""

    text: str
    voice_id: str
    text_type: Literal["text", "ssml"] = "text"


@attrs.frozen(kw_only=True)
class BadPayload:
    """Why a payload is not a SpeechRequest, naming the field (one line, for stderr)."""

    reason: str


PAYLOAD_SHAPE = '{"text": str, "voiceId": str, "textType": "text" | "ssml"}'


def parse_speech_request(source: str) -> SpeechRequest | BadPayload:
    """The `code` text as a SpeechRequest; unknown fields are ignored, as upstream did."""
    try:
        payload = json.loads(source)
    except ValueError as exc:
        return BadPayload(reason=f"the code is not JSON ({exc}); vendor.aws_polly takes {PAYLOAD_SHAPE}")
    if not isinstance(payload, dict):
        return BadPayload(reason=f"the code must be a JSON object {PAYLOAD_SHAPE}, not {_json_type(payload)}")
    fields: dict[str, str] = {}
    for name in ("text", "voiceId", "textType"):
        if name not in payload:
            if name == "textType":
                continue
            return BadPayload(reason=f'the field "{name}" is missing; vendor.aws_polly takes {PAYLOAD_SHAPE}')
        value = payload[name]
        if not isinstance(value, str):
            return BadPayload(reason=f'the field "{name}" must be a string, not {_json_type(value)}')
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return BadPayload(reason=f'the field "{name}" is not valid Unicode (it holds a lone surrogate)')
        fields[name] = value
    if not fields["voiceId"]:
        return BadPayload(reason='the field "voiceId" is empty; it names a Polly voice, such as "Joanna"')
    text_type = fields.get("textType", "text")
    if text_type not in TEXT_TYPES:
        return BadPayload(reason=f'the field "textType" must be "text" or "ssml", not {json.dumps(text_type)}')
    return SpeechRequest(text=fields["text"], voice_id=fields["voiceId"], text_type="ssml" if text_type == "ssml" else "text")


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"


# ---- settings from the child env ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PollySettings:
    """What the boto3 client is made with. None means: boto3's own chain decides (the runner's environment, the
    shared config and credentials files, container and instance roles)."""

    region: str
    endpoint_url: str | None = None
    access_key_id: str | None = attrs.field(default=None, repr=False)
    secret_access_key: str | None = attrs.field(default=None, repr=False)
    session_token: str | None = attrs.field(default=None, repr=False)
    profile: str | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    max_attempts: int = MAX_ATTEMPTS

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> PollySettings:
        """Credentials, region and endpoint from the child env (docs/protocol.md §1.4, §8.5); empty values are unset."""

        def get(name: str) -> str | None:
            return env.get(name) or None

        ignore_endpoints = (get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").lower() == "true"
        endpoint = None if ignore_endpoints else get("AWS_ENDPOINT_URL_POLLY") or get("AWS_ENDPOINT_URL")
        return cls(
            region=get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            endpoint_url=endpoint,
            access_key_id=get("AWS_ACCESS_KEY_ID"),
            secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            session_token=get("AWS_SESSION_TOKEN"),
            profile=get("AWS_PROFILE"),
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_attempts=max_attempts,
        )


ClientFactory = Callable[[PollySettings], Any]


def make_boto3_client(settings: PollySettings) -> Any:
    """A boto3 Polly client (imports boto3; raises ImportError without the `aws` extra, botocore errors otherwise)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import PartialCredentialsError

    key, secret = settings.access_key_id, settings.secret_access_key
    if (key is None) != (secret is None):
        missing = "AWS_SECRET_ACCESS_KEY" if secret is None else "AWS_ACCESS_KEY_ID"
        raise PartialCredentialsError(provider="the child environment", cred_var=missing)
    session = boto3.session.Session(
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=settings.session_token if key is not None else None,
        region_name=settings.region,
        profile_name=settings.profile,
    )
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        user_agent_extra="kernel-runner",
    )
    # endpoint_url None: boto3 still honours AWS_ENDPOINT_URL_POLLY and the config file from the runner's environment.
    return session.client("polly", endpoint_url=settings.endpoint_url, config=config)


class ClientBox:
    """One incarnation's client, made by the first call that needs it. Made outside the lock: a new call never
    waits for an abandoned call that is still making one; if two make one, the first to finish is kept."""

    def __init__(self, settings: PollySettings, factory: ClientFactory = make_boto3_client) -> None:
        self.settings = settings
        self._factory = factory
        self._lock = threading.Lock()
        self._client: Any = None

    def get(self) -> Any:
        with self._lock:
            client = self._client
        if client is not None:
            return client
        made = self._factory(self.settings)
        with self._lock:
            if self._client is None:
                self._client = made
            return self._client


# ---- one call -----------------------------------------------------------------------------------------------------


class PollyCall:
    """One SynthesizeSpeech call: `start()` hands it to a pool thread, `cancel()` (any thread) abandons it."""

    def __init__(
        self,
        *,
        call_id: int,
        request: SpeechRequest,
        box: ClientBox,
        owner: pykka.ActorRef[Any] | None,
        max_audio_bytes: int = MAX_AUDIO_BYTES,
    ) -> None:
        self.call_id = call_id
        self.request = request
        self._box = box
        self._owner = owner
        self._max_audio_bytes = max_audio_bytes
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None  # the response body while it is read; cancel() shortens its socket timeout
        self.log = logger.bind(child="polly")

    def start(self) -> None:
        """Raises RuntimeError when no thread can be started."""
        CALLS.submit(self.run)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Nobody waits for this call any more: stop reading its audio at the next pause of the server."""
        self._cancelled.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.set_socket_timeout(CANCEL_SOCKET_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - the body was closed meanwhile: nothing left to cut short
                debug(self.log, "call {}: the audio stream is gone already ({!r})", self.call_id, exc)

    def run(self) -> None:
        """The pool thread's job: exactly one outcome is told to the owner, whatever happens."""
        try:
            outcome = self.execute()
        except BaseException as exc:  # noqa: BLE001 - a worker must never die without a word (docs/protocol.md §10.6 #50)
            self.log.opt(exception=exc).error("call {}: the worker failed: {!r}", self.call_id, exc)
            outcome = PollyWorkerDied(call_id=self.call_id, error=repr(exc))
        tell_if_alive(self._owner, outcome)

    def execute(self) -> PollyOutcome:
        """The call itself, in the calling thread. AWS errors become PollyCallFailed; anything else raises."""
        try:
            from botocore import exceptions as aws
        except ImportError as exc:
            return self._failed(EXIT_NO_BOTO3, _no_boto3_text(exc))
        try:
            client = self._box.get()
        except ImportError as exc:
            return self._failed(EXIT_NO_BOTO3, _no_boto3_text(exc))
        except (aws.BotoCoreError, OSError) as exc:
            return self._failed(EXIT_AWS_ERROR, describe_aws_error(exc, aws))
        if self.cancelled:
            return self._failed(EXIT_CANCELLED, "cancelled before it was sent")
        tell_if_alive(self._owner, PollyCallSending(call_id=self.call_id))
        request = self.request
        try:
            response = client.synthesize_speech(
                Text=request.text, VoiceId=request.voice_id, TextType=request.text_type, OutputFormat=OUTPUT_FORMAT
            )
            audio = self._read_audio(response["AudioStream"])
        except (aws.BotoCoreError, aws.ClientError, OSError) as exc:  # OSError: the network, below boto3's wrapping
            return self._failed(EXIT_AWS_ERROR, describe_aws_error(exc, aws))
        except _AudioTooLarge:
            return self._failed(EXIT_AWS_ERROR, f"the audio Amazon Polly sent is larger than {self._max_audio_bytes:,} bytes")
        content_type = str(response.get("ContentType") or FALLBACK_CONTENT_TYPE)
        return PollySynthesized(call_id=self.call_id, content_type=content_type, audio=audio)

    def _read_audio(self, stream: Any) -> bytes:
        """The whole body, read in chunks up to the size bound; cancel() cuts it short at the server's next pause."""
        with self._lock:
            self._stream = stream
        audio = bytearray()
        try:
            if self.cancelled:
                stream.set_socket_timeout(CANCEL_SOCKET_TIMEOUT_S)
            while chunk := stream.read(READ_CHUNK):
                audio += chunk
                if len(audio) > self._max_audio_bytes:
                    raise _AudioTooLarge
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        return bytes(audio)

    def _failed(self, exit_code: int, text: str) -> PollyCallFailed:
        line = " ".join(f"kernel-runner: {text}".split())  # one line, whatever the AWS message held
        return PollyCallFailed(call_id=self.call_id, exit_code=exit_code, text=line + "\n")


class _AudioTooLarge(Exception):
    pass


def _no_boto3_text(exc: ImportError) -> str:
    return f"vendor.aws_polly needs boto3, which is not installed: pip install 'kernel-runner[aws]' ({exc})"


def describe_aws_error(exc: Exception, aws: Any) -> str:
    """One line for the user: what went wrong with the AWS call, and the AWS error code where there is one."""
    if isinstance(exc, aws.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "UnknownError"
        message = error.get("Message") or str(exc)
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0
        tried = f" (after {attempts + 1} attempts)" if attempts else ""
        return f"Amazon Polly refused the request: {code}: {message}{tried}"
    if isinstance(exc, aws.NoCredentialsError | aws.PartialCredentialsError | aws.CredentialRetrievalError):
        return (f"no usable AWS credentials for Amazon Polly ({exc}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(and AWS_SESSION_TOKEN for temporary credentials), or configure a profile or role boto3 can find")
    if isinstance(exc, aws.ReadTimeoutError):
        return f"Amazon Polly did not answer in time: {exc}"
    if isinstance(exc, aws.ConnectionError):
        return f"Amazon Polly could not be reached: {exc}"
    return f"the Amazon Polly call failed: {type(exc).__name__}: {exc}"


__all__ = [
    "CALLS",
    "DEFAULT_REGION",
    "EXIT_AWS_ERROR",
    "EXIT_NO_BOTO3",
    "OUTPUT_FORMAT",
    "BadPayload",
    "ClientBox",
    "ClientFactory",
    "PollyCall",
    "PollyOutcome",
    "PollySettings",
    "SpeechRequest",
    "describe_aws_error",
    "make_boto3_client",
    "parse_speech_request",
]
