"""The three kinds of probe (an HTTP GET, a TCP connect, a command) and what one of them answered.

Each run is bounded by the probe's own timeouts and happens on a probe thread (runner.py), never on an actor's
thread. A model's health check (docs/protocol.md §7.2 step 4) and a service's probes (§6.14) run this same code.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import attrs

from kernel_runner.excerpts import excerpt
from kernel_runner.servicedefs.prestart import CommandTimedOut, run_bounded
from kernel_runner.supervision.clock import Clock

if TYPE_CHECKING:
    import requests

# What a failed exec probe's answer quotes of its output (Docker keeps 4096 bytes; one log field needs less).
EXCERPT_LIMIT = 200
# run_bounded reaps a killed command within about this much after its timeout.
EXEC_REAP_S = 1.0


@attrs.frozen(kw_only=True)
class HttpProbe:
    """GET `url`: passes on `expected_status`, or, without one, on any 2xx or 3xx (Kubernetes' httpGet)."""

    url: str
    expected_status: int | None
    connect_timeout_s: float
    read_timeout_s: float

    # A server that trickles bytes keeps one requests call alive past its per-read timeout: the loop watches it.
    self_bounded = False

    @property
    def bound_s(self) -> float:
        return self.connect_timeout_s + self.read_timeout_s

    def describe(self) -> str:
        return f"GET {self.url}"


@attrs.frozen(kw_only=True)
class TcpProbe:
    """Passes when 127.0.0.1:`port` accepts a connection (which is then closed at once)."""

    port: int
    timeout_s: float

    # A connect ends by its socket timeout, so the loop need not watch it (one timer less per probe).
    self_bounded = True

    @property
    def bound_s(self) -> float:
        return self.timeout_s

    def describe(self) -> str:
        return f"connect to port {self.port}"


@attrs.frozen(kw_only=True)
class ExecProbe:
    """Passes when the command exits 0 within `timeout_s`; past it, its process group is killed and it failed."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    cwd: Path
    timeout_s: float

    # run_bounded kills the command's group at its timeout and reaps it within EXEC_REAP_S.
    self_bounded = True

    @property
    def bound_s(self) -> float:
        return self.timeout_s + EXEC_REAP_S

    def describe(self) -> str:
        return "run " + excerpt(" ".join(self.argv), quote=False)


Probe = Union[HttpProbe, TcpProbe, ExecProbe]


@attrs.frozen(kw_only=True)
class ProbeAnswer:
    """One probe's outcome: `ok`, and whichever of a status code, an exit code with an excerpt of the command's
    output, or an error text the probe gave."""

    ok: bool
    latency_s: float
    status_code: int | None = None
    exit_code: int | None = None
    excerpt: str | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error is not None:
            return self.error
        if self.status_code is not None:
            return f"status {self.status_code}"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "connected"

    def fields(self) -> dict[str, Any]:
        """The answer as flat fields of a `healthy`/`unhealthy` event (docs/operations.md §2)."""
        return {"status_code": self.status_code, "exit_code": self.exit_code, "excerpt": self.excerpt,
                "reason": self.error, "latency_ms": round(self.latency_s * 1000, 3)}

    def info(self) -> dict[str, Any]:
        """The answer as a child's `last_probe` in `status` (the keys a model's checker always showed, and the exit
        code and excerpt when there are any)."""
        shown: dict[str, Any] = {"ok": self.ok, "status_code": self.status_code, "error": self.error,
                                 "latency_ms": round(self.latency_s * 1000, 3)}
        if self.exit_code is not None:
            shown["exit_code"] = self.exit_code
        if self.excerpt is not None:
            shown["excerpt"] = self.excerpt
        return shown


def failed(error: str) -> ProbeAnswer:
    """An answer the probe never gave: it hung, or the one before it still hangs."""
    return ProbeAnswer(ok=False, latency_s=0.0, error=error)


def run_probe(probe: Probe, *, session: requests.Session | None, clock: Clock) -> ProbeAnswer:
    """One probe, bounded by its timeouts; never raises. `session` is needed for an HTTP probe only."""
    match probe:
        case HttpProbe():
            assert session is not None
            return probe_http(session, probe, clock)
        case TcpProbe():
            return probe_tcp(probe, clock)
        case ExecProbe():
            return probe_exec(probe, clock)


def probe_http(session: requests.Session, probe: HttpProbe, clock: Clock) -> ProbeAnswer:
    """One GET with explicit (connect, read) timeouts; the body is never read, the response always closed."""
    import requests  # here, not at import time: a runner that probes no HTTP never needs it (~50 ms)

    started = clock.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        # Redirects are followed as upstream's urllib did (docs/protocol.md §7.2), each hop under the same timeouts.
        with session.get(probe.url, timeout=(probe.connect_timeout_s, probe.read_timeout_s), stream=True,
                         allow_redirects=True) as response:
            status = response.status_code
    except requests.Timeout:
        error = f"no answer within {probe.read_timeout_s:g}s"
    except requests.ConnectionError as exc:
        error = describe_connection_error(exc)
    except Exception as exc:  # noqa: BLE001 - any transport failure is a failed probe (docs/protocol.md §7.5), never a dead thread
        error = repr(exc)
    latency = clock.monotonic() - started
    if probe.expected_status is not None:
        ok = status == probe.expected_status
        expected = str(probe.expected_status)
    else:
        ok = status is not None and 200 <= status < 400
        expected = "2xx or 3xx"
    if status is not None and not ok:
        error = f"status {status}, expected {expected}"
    return ProbeAnswer(ok=ok, latency_s=latency, status_code=status, error=error)


def describe_connection_error(exc: requests.ConnectionError) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "RemoteDisconnected" in text or "Connection reset" in text or "Connection aborted" in text:
        return "connection closed without a response"
    return text[:300]


def probe_tcp(probe: TcpProbe, clock: Clock) -> ProbeAnswer:
    started = clock.monotonic()
    error: str | None = None
    try:
        with socket.create_connection(("127.0.0.1", probe.port), timeout=probe.timeout_s):
            pass
    except ConnectionRefusedError:
        error = "connection refused"
    except TimeoutError:
        error = f"no connection within {probe.timeout_s:g}s"
    except OSError as exc:
        error = exc.strerror or repr(exc)
    return ProbeAnswer(ok=error is None, latency_s=clock.monotonic() - started, error=error)


def probe_exec(probe: ExecProbe, clock: Clock) -> ProbeAnswer:
    started = clock.monotonic()
    try:
        done = run_bounded(probe.argv, env=probe.env, cwd=probe.cwd, timeout_s=probe.timeout_s)
    except CommandTimedOut:
        return ProbeAnswer(ok=False, latency_s=clock.monotonic() - started,
                           error=f"no exit within {probe.timeout_s:g}s")
    except FileNotFoundError:
        return ProbeAnswer(ok=False, latency_s=clock.monotonic() - started,
                           error=f"the executable file is not found: {probe.argv[0]}")
    except PermissionError:
        return ProbeAnswer(ok=False, latency_s=clock.monotonic() - started,
                           error=f"the target file is not executable: {probe.argv[0]}")
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
        return ProbeAnswer(ok=False, latency_s=clock.monotonic() - started, error=repr(exc))
    output = " ".join((done.stdout + done.stderr).split())  # one line: it becomes a log field
    ok = done.returncode == 0
    return ProbeAnswer(ok=ok, latency_s=clock.monotonic() - started, exit_code=done.returncode,
                       excerpt=excerpt(output, EXCERPT_LIMIT, quote=False) if output else None,
                       error=None if ok else f"exit code {done.returncode}")


__all__ = [
    "EXCERPT_LIMIT",
    "ExecProbe",
    "HttpProbe",
    "Probe",
    "ProbeAnswer",
    "TcpProbe",
    "describe_connection_error",
    "failed",
    "probe_exec",
    "probe_http",
    "probe_tcp",
    "run_probe",
]
