"""Pure Jupyter pieces for the kernel actor: kernelspec lookup, output mapping and record splitting, exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs

from kernel_runner.drawing import DRAWING_MIME
from kernel_runner.messages import Html, Media
from kernel_runner.procs.process import describe_returncode

# ---- knobs (docs/architecture.md §4; docs/protocol.md §4) -----------------------------------------------------------
MAX_RECORD_BYTES = 1 << 20
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports an interrupted command
NO_KERNEL_EXIT = 127  # docs/protocol.md §4.2: query mode disabled
DISPLAY_PREFERENCE = ("image/png", "image/jpeg", "image/svg+xml", "text/html", DRAWING_MIME)
# docs/protocol.md §4.7: a ping on the heartbeat channel this often; unanswered this long, the kernel counts as hung.
HEARTBEAT_INTERVAL_S = 3.0
HEARTBEAT_TIMEOUT_S = 15.0
# While no cell runs, a ping this rarely: an idle runner wakes for nothing else, and a run pings at once when it starts,
# so a kernel that hung while idle still fails its run within HEARTBEAT_TIMEOUT_S.
HEARTBEAT_IDLE_INTERVAL_S = 60.0
# Kernels (kernel_info's `implementation`) that echo heartbeats from a thread of their own, so they keep beating while
# a cell runs: ipykernel and IJulia. Others, IRkernel among them, echo between cells only (docs/protocol.md §4.7).
BEATS_WHILE_BUSY = frozenset({"ipython", "ijulia"})

InterruptMode = Literal["signal", "message"]


# ======================================================================================================================
# Pure pieces: kernelspec lookup, output mapping, exit codes
# ======================================================================================================================


class KernelSpecError(Exception):
    """No usable kernelspec: the message says which name was asked for and which names exist."""


@attrs.frozen(kw_only=True)
class KernelLaunchSpec:
    """What we take from a kernelspec (kernel.json) to start it ourselves."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    resource_dir: str
    interrupt_mode: InterruptMode
    language: str


def _spec_manager() -> Any:
    """jupyter_client's KernelSpecManager over the directories it searches by default, named here: its default asks
    IPython for ~/.ipython, and importing IPython costs the runner 2.5 MB of RSS for one path
    (docs/architecture.md §2.1). IPython's own rule: $IPYTHONDIR, else ~/.ipython."""
    import os

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import jupyter_path

    ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return KernelSpecManager(kernel_dirs=[*jupyter_path("kernels"), os.path.join(ipython_dir, "kernels")])


def kernelspec_names() -> list[str]:
    """Installed kernelspec names (for a caller that maps a language's kspec name to an exact one)."""
    return sorted(_spec_manager().find_kernel_specs())


def find_kernelspec(name: str) -> KernelLaunchSpec:
    """The kernelspec called exactly `name`; an empty name matches nothing (docs/protocol.md §10.2 items 14)."""
    if not name:
        raise KernelSpecError("no kernelspec name is configured for this language")
    from jupyter_client.kernelspec import NoSuchKernel

    manager = _spec_manager()
    specs: dict[str, str] = manager.find_kernel_specs()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise KernelSpecError(f"no Jupyter kernelspec named {name!r} (installed: {known})")
    try:
        spec = manager.get_kernel_spec(name)
    except NoSuchKernel as exc:  # pragma: no cover - removed between the two calls
        raise KernelSpecError(f"no Jupyter kernelspec named {name!r}: {exc}") from exc
    except Exception as exc:  # a broken kernel.json is a start failure, not a crash
        raise KernelSpecError(f"kernelspec {name!r} cannot be read: {exc}") from exc
    argv = tuple(str(part) for part in spec.argv)
    if not argv:
        raise KernelSpecError(f"kernelspec {name!r} has an empty argv")
    mode: InterruptMode = "message" if getattr(spec, "interrupt_mode", "signal") == "message" else "signal"
    return KernelLaunchSpec(
        name=name,
        argv=argv,
        env={str(k): str(v) for k, v in (spec.env or {}).items()},
        resource_dir=str(spec.resource_dir),
        interrupt_mode=mode,
        language=str(spec.language or ""),
    )


def kernel_argv(spec: KernelLaunchSpec, connection_file: str) -> list[str]:
    """kernel.json argv with its placeholders filled; a bare `python` means our interpreter, as jupyter_client does."""
    values = {"connection_file": connection_file, "resource_dir": spec.resource_dir, "prefix": sys.prefix}
    argv = [fill_template(part, values) for part in spec.argv]
    major, minor = sys.version_info[:2]
    if argv[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
        argv[0] = sys.executable
    return argv


def fill_template(template: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def split_records(data: bytes, limit: int = MAX_RECORD_BYTES) -> list[bytes]:
    """Cut `data` into records of at most `limit` bytes, never inside a UTF-8 sequence."""
    if len(data) <= limit:
        return [data] if data else []
    records: list[bytes] = []
    start, size = 0, len(data)
    while start < size:
        end = min(start + limit, size)
        if end < size:
            cut = end
            while cut > start and (data[cut] & 0xC0) == 0x80:
                cut -= 1
            if cut > start:
                end = cut
        records.append(data[start:end])
        start = end
    return records


def iter_records(text: str, limit: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """UTF-8 records of at most `limit` bytes, encoded one record at a time (large outputs are mostly ASCII, and
    encoding per record reuses memory instead of allocating the whole output twice)."""
    if text.isascii():
        for start in range(0, len(text), limit):
            yield text[start : start + limit].encode("ascii")
        return
    yield from split_records(text.encode("utf-8", errors="replace"), limit)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return "".join(value)
    return json.dumps(value)


def map_display(data: Mapping[str, Any]) -> Media | Html | str | None:
    """One agent message for an execute_result/display_data bundle (docs/protocol.md §4.3, §10.1 items 2-3).

    Preference: PNG, JPEG (data URI), SVG (raw), HTML (`html`, never a non-JSON `media`), the drawing type of
    docs/protocol.md §8.4; then `text/plain` as stdout; a bundle with none of these forwards its first entry as `media`
    instead of dropping it. A `str` result means stdout text.
    """
    for mime in DISPLAY_PREFERENCE:
        value = data.get(mime)
        if value is None:
            continue
        if mime in ("image/png", "image/jpeg"):
            encoded = "".join(_text(value).split())
            return Media(mime=mime, data=f"data:{mime};base64,{encoded}")
        if mime == "text/html":
            return Html(html=_text(value))
        return Media(mime=mime, data=_text(value))
    if "text/plain" in data:
        return _text(data["text/plain"])
    for mime, value in data.items():
        return Media(mime=str(mime), data=_text(value))
    return None


def exit_code_from_reply(content: Mapping[str, Any] | None) -> int:
    """Derive the exit code from execute_reply (docs/protocol.md §10.1 item 4; upstream always sent 0).

    ok → 0; SystemExit(n) → n like a process (no argument or None → 0, other text → 1); KeyboardInterrupt → 130;
    any other error or an aborted request → 1.
    """
    if content is None:
        return 1
    status = content.get("status")
    if status == "ok":
        return 0
    if status != "error":
        return 1
    ename = content.get("ename")
    if ename == "SystemExit":
        value = str(content.get("evalue", "")).strip()
        if value in ("", "None"):
            return 0
        try:
            return int(value) & 0xFF
        except ValueError:
            return 1
    if ename == "KeyboardInterrupt":
        return INTERRUPTED_EXIT
    return 1


@attrs.define(kw_only=True)
class HeartbeatWatch:
    """When to ping a kernel's heartbeat channel and when its silence means it hangs (docs/protocol.md §4.7).

    Pure bookkeeping with explicit times; the channel thread owns the socket. Only an unanswered ping counts: time
    in which nobody pinged (the channel thread blocked on output credits, or a busy kernel that beats between cells
    only) never makes a kernel hung.
    """

    interval_s: float
    timeout_s: float
    next_ping_at: float
    unanswered_since: float | None = None  # the first ping that no echo has followed yet
    idle_interval_s: float = HEARTBEAT_IDLE_INTERVAL_S  # between pings while no cell runs

    @classmethod
    def starting(cls, now: float, *, interval_s: float, timeout_s: float,
                 idle_interval_s: float = HEARTBEAT_IDLE_INTERVAL_S) -> HeartbeatWatch:
        return cls(interval_s=interval_s, timeout_s=timeout_s, next_ping_at=now,
                   idle_interval_s=max(interval_s, idle_interval_s))

    def ping_due(self, now: float) -> bool:
        return now >= self.next_ping_at

    def pinged(self, now: float, *, idle: bool = False) -> None:
        self.next_ping_at = now + (self.idle_interval_s if idle else self.interval_s)
        if self.unanswered_since is None:
            self.unanswered_since = now

    def run_started(self, now: float) -> None:
        """A cell starts: ping at once (the idle schedule may be a minute away), then every `interval_s`."""
        self.next_ping_at = min(self.next_ping_at, now)

    def echoed(self) -> None:
        self.unanswered_since = None

    def pause(self, now: float) -> None:
        """Stop judging while a kernel that beats between cells only runs one: nothing is outstanding, and the next
        ping is due as soon as the caller pings again."""
        self.unanswered_since = None
        self.next_ping_at = now

    def silent_for(self, now: float) -> float:
        """Seconds a ping has gone unanswered (0 when none is outstanding)."""
        return 0.0 if self.unanswered_since is None else now - self.unanswered_since

    def is_lost(self, now: float) -> bool:
        return self.silent_for(now) >= self.timeout_s

    def next_due(self) -> float:
        """The next moment something is due: a ping, or the verdict on the outstanding one."""
        if self.unanswered_since is None:
            return self.next_ping_at
        return min(self.next_ping_at, self.unanswered_since + self.timeout_s)


def death_exit_code(returncode: int) -> int:
    """A run whose kernel died ends non-zero: 128+N for a signal, the kernel's code, or 1 for a clean exit."""
    code, _ = describe_returncode(returncode)
    return code if code != 0 else 1


# ---- what the user reads on stderr when the kernel's life gets in the way of a run ----------------------------------


def death_run_end(kernel_name: str, *, how: str, returncode: int, killed_after_s: float | None) -> tuple[int, str]:
    """The exit code and the note of the run a dying kernel was running (`killed_after_s`: it was killed because it
    ignored an interrupt that long)."""
    if killed_after_s is not None:
        return INTERRUPTED_EXIT, (
            f"kernel-runner: the Jupyter kernel ({kernel_name}) did not respond to the interrupt within "
            f"{killed_after_s:g} s, so it was killed; it is being restarted\n"
        )
    return death_exit_code(returncode), (
        f"kernel-runner: the Jupyter kernel ({kernel_name}) died ({how}) while this code ran; it is being restarted\n"
    )


def heartbeat_lost_note(kernel_name: str, silent_s: float) -> str:
    return (
        f"kernel-runner: the Jupyter kernel ({kernel_name}) did not answer its heartbeat for "
        f"{silent_s:.0f} s while this code ran (it is stopped or hung), so it was killed; "
        "it is being restarted\n"
    )


def restart_notice(kernel_name: str) -> str:
    """A restarted kernel has lost the user's variables: its first run says so (docs/protocol.md §4.2)."""
    return (f"kernel-runner: the Jupyter kernel ({kernel_name}) was restarted since the last run; "
            "variables, imports and other state from earlier runs are gone\n")


__all__ = [
    "BEATS_WHILE_BUSY",
    "DRAWING_MIME",
    "HEARTBEAT_IDLE_INTERVAL_S",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TIMEOUT_S",
    "HeartbeatWatch",
    "KernelSpecError",
    "death_exit_code",
    "death_run_end",
    "exit_code_from_reply",
    "find_kernelspec",
    "heartbeat_lost_note",
    "iter_records",
    "kernelspec_names",
    "map_display",
    "restart_notice",
    "split_records",
]
