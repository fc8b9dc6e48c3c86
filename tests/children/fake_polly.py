"""An Amazon Polly stand-in: a real http.server on 127.0.0.1 speaking Polly's REST-JSON protocol (API 2016-06-10).

    fake_polly.py [--port N] [--hang-cap S]

Why a stand-in: the test machines have no AWS account and no route to AWS, and moto's server mode, which does
implement SynthesizeSpeech (it answers 8 zero bytes), cannot be made to hang, throttle or drip its answer, which
are the behaviours the runner must survive. Only the service is stood in for: the runner talks to this server with
the real boto3 client (signing, retries, timeouts and error parsing are boto3's own).

What it implements, as Polly documents it:
- POST /v1/speech (SynthesizeSpeech): JSON body with OutputFormat, Text, VoiceId and optional TextType. Success is
  200 with the audio as the body, `Content-Type` by format (ogg_vorbis: audio/ogg) and `x-amzn-RequestCharacters`.
  The "audio" is `OggS` followed by the JSON of what was asked, so a test can see which request it answers.
- GET /v1/voices (DescribeVoices): `{"Voices": [...]}`, optionally filtered by `LanguageCode`.
- Errors as Polly sends them: an HTTP status, `x-amzn-ErrorType: <Code>:` and `{"message": ...}`. An unknown voice is
  a ValidationException, SSML that is not `<speak>...</speak>` an InvalidSsmlException, text over 3000 characters a
  TextLengthExceededException, a missing field a ValidationException.

Behaviours a test asks for through the text (stand-in only, Polly has none of these):
- `[throttle]` anywhere in Text: 400 ThrottlingException (`Rate exceeded`), which boto3 retries.
- `[fail]`: 500 ServiceFailureException.
- `[hang]`: no answer at all, until the client closes the connection (or --hang-cap seconds pass).
- `[drip]`: 200 with a Content-Length of 1 MiB, then one byte every 0.2 s, so no single read ever times out.

GET /__requests (not Polly's) returns every request received so far, as JSON: method, path, query, the signature
headers and the parsed body. The first line on stdout is `fake_polly <pid> listening on <port>`.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VOICES = [
    {"Gender": "Female", "Id": "Joanna", "LanguageCode": "en-US", "LanguageName": "US English", "Name": "Joanna",
     "SupportedEngines": ["neural", "standard"]},
    {"Gender": "Male", "Id": "Matthew", "LanguageCode": "en-US", "LanguageName": "US English", "Name": "Matthew",
     "SupportedEngines": ["neural", "standard"]},
    {"Gender": "Female", "Id": "Seoyeon", "LanguageCode": "ko-KR", "LanguageName": "Korean", "Name": "Seoyeon",
     "SupportedEngines": ["neural", "standard"]},
]
VOICE_IDS = {voice["Id"] for voice in VOICES}
CONTENT_TYPES = {"ogg_vorbis": "audio/ogg", "mp3": "audio/mpeg", "pcm": "audio/pcm", "json": "audio/json"}
MAX_TEXT = 3000
DRIP_LENGTH = 1 << 20
SIGNATURE_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token", "content-type", "user-agent")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hang-cap", type=float, default=120.0)
    args = parser.parse_args()
    requests: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *values: Any) -> None:
            return

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/__requests":
                with lock:
                    body = json.dumps(requests).encode()
                self._send(200, body, "application/json")
                return
            self._record(url, None)
            if url.path == "/v1/voices":
                language = parse_qs(url.query).get("LanguageCode", [None])[0]
                voices = [v for v in VOICES if language is None or v["LanguageCode"] == language]
                self._send(200, json.dumps({"Voices": voices}).encode(), "application/json")
                return
            self._error(404, "UnknownOperationException", f"no operation at GET {url.path}")

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._record(url, {"unparsed": raw.decode(errors="replace")})
                self._error(400, "SerializationException", "the body is not JSON")
                return
            self._record(url, body)
            if url.path != "/v1/speech":
                self._error(404, "UnknownOperationException", f"no operation at POST {url.path}")
                return
            self._speech(body)

        def _speech(self, body: dict[str, Any]) -> None:
            for field in ("OutputFormat", "Text", "VoiceId"):
                if field not in body:
                    self._error(400, "ValidationException", f"1 validation error detected: {field} is required")
                    return
            text, voice, text_type = body["Text"], body["VoiceId"], body.get("TextType", "text")
            if body["OutputFormat"] not in CONTENT_TYPES:
                self._error(400, "ValidationException",
                            f"1 validation error detected: Value '{body['OutputFormat']}' at 'outputFormat' failed "
                            "to satisfy constraint: Member must satisfy enum value set: [json, mp3, ogg_vorbis, pcm]")
                return
            if voice not in VOICE_IDS:
                self._error(400, "ValidationException",
                            f"1 validation error detected: Value '{voice}' at 'voiceId' failed to satisfy "
                            f"constraint: Member must satisfy enum value set: [{', '.join(sorted(VOICE_IDS))}]")
                return
            if len(text) > MAX_TEXT:
                self._error(400, "TextLengthExceededException", f"Maximum text length has been exceeded ({MAX_TEXT})")
                return
            if text_type == "ssml" and not (text.strip().startswith("<speak>") and text.strip().endswith("</speak>")):
                self._error(400, "InvalidSsmlException", "Invalid SSML request")
                return
            if "[throttle]" in text:
                self._error(400, "ThrottlingException", "Rate exceeded")
                return
            if "[fail]" in text:
                self._error(500, "ServiceFailureException", "An unknown condition has caused a service failure.")
                return
            if "[hang]" in text:
                self._hang()
                return
            content_type = CONTENT_TYPES[body["OutputFormat"]]
            if "[drip]" in text:
                self._drip(content_type)
                return
            audio = b"OggS" + json.dumps({"voice": voice, "textType": text_type, "text": text}).encode()
            self._send(200, audio, content_type, extra={"x-amzn-RequestCharacters": str(len(text))})

        def _hang(self) -> None:
            """Say nothing until the client gives up (its socket becomes readable at EOF) or the cap passes."""
            deadline = time.monotonic() + args.hang_cap
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.1)
                if readable:
                    break
            self.close_connection = True

        def _drip(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(DRIP_LENGTH))
            self.end_headers()
            try:
                for _ in range(DRIP_LENGTH):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True

        def _record(self, url: Any, body: Any) -> None:
            entry = {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": {name: self.headers.get(name) for name in SIGNATURE_HEADERS},
                "body": body,
            }
            with lock:
                requests.append(entry)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"message": message}).encode()
            self._send(status, body, "application/json", extra={"x-amzn-ErrorType": f"{code}:"})

        def _send(self, status: int, body: bytes, content_type: str, *, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", f"fake-{time.monotonic_ns()}")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"fake_polly {os.getpid()} listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
