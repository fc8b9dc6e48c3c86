"""The agent side of the protocol as a small blocking client, for tests, benchmarks and ops at a shell."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import msgpack
import zmq

DEFAULT_TIMEOUT_S = 10.0


@attrs.frozen(kw_only=True)
class Reply:
    type: str
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else {}


@attrs.frozen(kw_only=True)
class RunResult:
    """Everything one queued op produced, up to and including its `*finished` (or `waiting-input`)."""

    status: str
    exit_code: int | None
    records: tuple[Reply, ...]

    @property
    def stdout(self) -> bytes:
        return b"".join(r.payload for r in self.records if r.type == "stdout")

    @property
    def stderr(self) -> bytes:
        return b"".join(r.payload for r in self.records if r.type == "stderr")

    def of_type(self, kind: str) -> list[Reply]:
        return [r for r in self.records if r.type == kind]


class ReplyTimeout(TimeoutError):
    pass


RUN_END_TYPES = {"finished": "finished", "clean-finished": "clean-finished", "build-finished": "build-finished"}


class AgentClient:
    """PUSH to the runner's input port, PULL from its output port, as the Backend.AI agent does (docs/protocol.md §3.1)."""

    def __init__(self, *, host: str = "127.0.0.1", port_in: int = 2000, port_out: int = 2001) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._push: zmq.Socket[bytes] = self._ctx.socket(zmq.PUSH)
        self._pull: zmq.Socket[bytes] = self._ctx.socket(zmq.PULL)
        for sock in (self._push, self._pull):
            sock.setsockopt(zmq.LINGER, 50)
        self._push.connect(f"tcp://{host}:{port_in}")
        self._pull.connect(f"tcp://{host}:{port_out}")
        self._stash: list[Reply] = []

    def close(self) -> None:
        self._push.close(linger=50)
        self._pull.close(linger=0)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- raw --------------------------------------------------------------------------------------
    def send(self, op: str, payload: bytes | str = b"") -> None:
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self._push.send_multipart([op.encode("ascii"), data])

    def send_frames(self, frames: Iterable[bytes]) -> None:
        self._push.send_multipart(list(frames))

    def recv(self, timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
        if self._stash:
            return self._stash.pop(0)
        if not self._pull.poll(int(timeout * 1000)):
            raise ReplyTimeout(f"no message from the runner within {timeout:.1f}s")
        frames = self._pull.recv_multipart()
        if len(frames) != 2:
            raise ValueError(f"runner sent {len(frames)} frames")
        return Reply(type=frames[0].decode("ascii"), payload=frames[1])

    def expect(self, kind: str, timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
        """Wait for the next message of `kind`, keeping the others for later reads (like the agent's per-type queues)."""
        deadline = time.monotonic() + timeout
        for index, stashed in enumerate(self._stash):
            if stashed.type == kind:
                return self._stash.pop(index)
        skipped: list[Reply] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReplyTimeout(f"no {kind!r} from the runner within {timeout:.1f}s")
                if not self._pull.poll(int(remaining * 1000) + 1):
                    continue
                frames = self._pull.recv_multipart()
                reply = Reply(type=frames[0].decode("ascii"), payload=frames[1] if len(frames) > 1 else b"")
                if reply.type == kind:
                    return reply
                skipped.append(reply)
        finally:
            self._stash.extend(skipped)

    def collect_run(self, timeout: float = DEFAULT_TIMEOUT_S, *, stop_at_input: bool = True) -> RunResult:
        """Read until the run's end message, as the agent's run loop does (docs/protocol.md §3.3)."""
        deadline = time.monotonic() + timeout
        records: list[Reply] = []
        while True:
            reply = self.recv(timeout=max(0.0, deadline - time.monotonic()))
            if reply.type in RUN_END_TYPES:
                code = reply.json().get("exitCode")
                return RunResult(status=reply.type, exit_code=code, records=tuple(records))
            if reply.type == "waiting-input" and stop_at_input:
                return RunResult(status="waiting-input", exit_code=None, records=(*records, reply))
            if reply.type in ("status", "service-result", "model-service-result", "apps-result", "completion"):
                self._stash.append(reply)
                continue
            records.append(reply)

    # ---- typed helpers -------------------------------------------------------------------------------
    def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        self.send("status")
        body: dict[str, Any] = msgpack.unpackb(self.expect("status", timeout).payload, raw=False)
        return body

    def run(self, kind: str, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        self.send(kind, text)
        return self.collect_run(timeout)

    def batch(self, *, clean: str = "", build: str = "", exec: str = "", timeout: float = 60.0) -> list[RunResult]:
        """The agent's batch mode: three messages, three end messages (docs/protocol.md §3.3)."""
        self.send("clean", clean)
        self.send("build", build)
        self.send("exec", exec)
        return [self.collect_run(timeout) for _ in range(3)]

    def code(self, source: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        return self.run("code", source, timeout)

    def feed_input(self, text: str) -> None:
        self.send("input", text)

    def interrupt(self) -> None:
        self.send("interrupt")

    def complete(self, code: str, options: Mapping[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        self.send("complete", json.dumps({"code": code, **(options or {})}))
        return self.expect("completion", timeout).json()

    def start_service(self, info: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        self.send("start-service", json.dumps(dict(info)))
        return self.expect("service-result", timeout).json()

    def start_model_service(self, model: Mapping[str, Any], timeout: float = 60.0) -> Any:
        self.send("start-model-service", json.dumps(dict(model)))
        return self.expect("model-service-result", timeout).json()

    def shutdown_service(self, name: str) -> None:
        self.send("shutdown-service", json.dumps(name))

    def get_apps(self, name: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        self.send("get-apps", name)
        return self.expect("apps-result", timeout).json()
