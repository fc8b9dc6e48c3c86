"""The agent side of the protocol as a small blocking client, for tests, benchmarks and debugging.

It connects as the agent does, so next to a real agent it takes messages meant for the agent: the runner's output
socket is a PUSH socket, which deals messages round-robin to every connected reader (docs/protocol.md §2.1).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
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


@attrs.frozen(kw_only=True)
class ChildRow:
    """One child of the supervision tree in a `status` reply (docs/protocol.md §9.1)."""

    id: str
    state: str
    pid: int | None
    restarts: int
    generation: int
    last_exit: str | None
    uptime_s: float | None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ChildRow:
        return cls(id=str(row.get("id", "")), state=str(row.get("state", "")), pid=row.get("pid"),
                   restarts=int(row.get("restarts", 0)), generation=int(row.get("generation", 0)),
                   last_exit=row.get("last_exit"), uptime_s=row.get("uptime_s"), extra=dict(row.get("extra") or {}))


@attrs.frozen(kw_only=True)
class StatusReply:
    """A `status` reply, typed (docs/protocol.md §9.1); `body` keeps the whole map for fields not named here."""

    started_at: float
    # None when the reply has no `kernel_runner` part (upstream's runner sends only `started_at`).
    ready: bool | None
    children: tuple[ChildRow, ...]
    body: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StatusReply:
        ours = body.get("kernel_runner") or {}
        return cls(started_at=float(body.get("started_at", 0.0)), ready=ours.get("ready"),
                   children=tuple(ChildRow.from_row(row) for row in ours.get("children") or ()), body=body)

    def child(self, child_id: str) -> ChildRow | None:
        return next((row for row in self.children if row.id == child_id), None)


class ReplyTimeout(TimeoutError):
    """Nothing (wanted) arrived in time; `heard_from_runner` tells "no runner there" from "a runner, but slow"."""

    def __init__(self, message: str, *, heard_from_runner: bool) -> None:
        super().__init__(message)
        self.heard_from_runner = heard_from_runner


RUN_END_TYPES = {"finished": "finished", "clean-finished": "clean-finished", "build-finished": "build-finished"}
# Replies that answer other requests (or report a model's health): a run's reader keeps them for `expect`.
NOT_RUN_TYPES = frozenset(
    {"status", "service-result", "model-service-result", "model-service-status", "apps-result", "completion"}
)


def _belongs_to_a_run(reply: Reply) -> bool:
    return reply.type not in NOT_RUN_TYPES


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
        self.heard_from_runner = False  # any message read yet: a runner is (or was) there
        self.endpoint = f"tcp://{host}:{port_in}"

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
        """The next message, kept ones first."""
        return self._next(lambda _reply: True, time.monotonic() + timeout, what=f"message within {timeout:.1f}s")

    def expect(self, kind: str, timeout: float = DEFAULT_TIMEOUT_S) -> Reply:
        """Wait for the next message of `kind`, keeping the others for later reads (like the agent's per-type queues)."""
        return self._next(lambda reply: reply.type == kind, time.monotonic() + timeout,
                          what=f"{kind!r} within {timeout:.1f}s")

    def collect_run(self, timeout: float = DEFAULT_TIMEOUT_S, *, stop_at_input: bool = True) -> RunResult:
        """Read until the run's end message, as the agent's run loop does (docs/protocol.md §3.3)."""
        deadline = time.monotonic() + timeout
        records: list[Reply] = []
        while True:
            reply = self._next(_belongs_to_a_run, deadline, what=f"end of the run within {timeout:.1f}s")
            if reply.type in RUN_END_TYPES:
                code = reply.json().get("exitCode")
                return RunResult(status=reply.type, exit_code=code, records=tuple(records))
            if reply.type == "waiting-input" and stop_at_input:
                return RunResult(status="waiting-input", exit_code=None, records=(*records, reply))
            records.append(reply)

    def _next(self, wanted: Callable[[Reply], bool], deadline: float, *, what: str) -> Reply:
        """The oldest message `wanted` takes, kept ones first; the others are kept, in order, for later reads.

        Every wait ends by `deadline` (monotonic): a kept message that `wanted` refuses is never read again here
        (reading it back before looking at the clock once made a run loop spin for ever).
        """
        for index, kept in enumerate(self._stash):
            if wanted(kept):
                return self._stash.pop(index)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplyTimeout(f"no {what} from the runner", heard_from_runner=self.heard_from_runner)
            if not self._pull.poll(max(1, math.ceil(remaining * 1000))):
                continue
            reply = self._read()
            if wanted(reply):
                return reply
            self._stash.append(reply)

    def _read(self) -> Reply:
        frames = self._pull.recv_multipart()
        self.heard_from_runner = True
        if len(frames) != 2:
            raise ValueError(f"runner sent {len(frames)} frames")
        return Reply(type=frames[0].decode("ascii"), payload=frames[1])

    # ---- typed helpers -------------------------------------------------------------------------------
    def status(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The `status` reply as the map the runner sent; `status_reply` gives it typed."""
        self.send("status")
        body: dict[str, Any] = msgpack.unpackb(self.expect("status", timeout).payload, raw=False)
        return body

    def status_reply(self, timeout: float = DEFAULT_TIMEOUT_S) -> StatusReply:
        return StatusReply.from_body(self.status(timeout))

    def run(self, kind: str, text: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        self.send(kind, text)
        return self.collect_run(timeout)

    def batch(self, *, clean: str = "", build: str = "", exec: str = "", timeout: float = 60.0) -> list[RunResult]:
        """The agent's batch mode: three messages, three end messages (docs/protocol.md §3.3): the results of
        `clean` (`clean-finished`), `build` (`build-finished`) and `exec` (`finished`), in that order."""
        self.send("clean", clean)
        self.send("build", build)
        self.send("exec", exec)
        return [self.collect_run(timeout) for _ in range(3)]

    # One batch op each (docs/protocol.md §5.1): the command runs as `/bin/sh -c COMMAND` in the work dir, `*` runs
    # the language's rule, an empty one finishes with 0. The result ends with `clean-finished`, `build-finished`
    # or `finished`; a `build` that failed makes the next `exec` finish with 127 without running (§5.2).
    def exec(self, command: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        return self.run("exec", command, timeout)

    def build(self, command: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        return self.run("build", command, timeout)

    def clean(self, command: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        return self.run("clean", command, timeout)

    def code(self, source: str, timeout: float = DEFAULT_TIMEOUT_S) -> RunResult:
        """A query-mode run (docs/protocol.md §4): the language's Jupyter kernel or its compile-and-run plan."""
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
