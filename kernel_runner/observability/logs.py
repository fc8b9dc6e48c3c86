"""Loguru sinks for the runner: human lines or flat JSON lines on stderr, stdlib logging routed in, `child` always bound."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from kernel_runner.observability import debug_lines
from kernel_runner.observability.events import EVENT_FIELDS

if TYPE_CHECKING:
    from loguru import Message, Record

HUMAN_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>[{extra[child]}]</cyan> {message}"
)


class InterceptHandler(logging.Handler):
    """Routes pykka, jupyter_client and other stdlib loggers into loguru so ops read one stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.bind(child=record.name).opt(exception=record.exc_info, depth=6).log(level, record.getMessage())


def configure_logging(*, debug: bool, json_lines: bool) -> None:
    """The runner's own logging, for the CLI or a program that wants the runner's lines as the CLI writes them:
    replaces every loguru handler with one on stderr, routes the stdlib's logging in, and with `debug` turns the
    runner's DEBUG lines on (kernel_runner/observability/debug_lines.py)."""
    debug_lines.configure(debug)
    logger.remove()
    logger.configure(extra={"child": "runner"})
    level = "DEBUG" if debug else "INFO"
    if json_lines:
        logger.add(json_line_sink(sys.stderr), level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format=HUMAN_FORMAT,
            colorize=None,
            backtrace=False,
            diagnose=False,
        )
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.DEBUG if debug else logging.INFO, force=True)
    for noisy in ("asyncio", "traitlets", "tornado", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for secretive in ("boto3", "botocore"):
        # Their DEBUG lines (on with --debug) print every request's headers, an AWS session token among them.
        logging.getLogger(secretive).setLevel(logging.INFO)


# The flat fields of a line a child's process printed (a service's stdout or stderr, the kernel's own output), bound
# where the line is logged: which stream, the service's port, the process.
OUTPUT_FIELDS = ("stream", "port", "pid")


def flat_record(record: Record) -> dict[str, Any]:
    """One log record as the flat object `--log-json` writes (docs/operations.md §2): `ts`, `level`, `child`,
    `message`, the event fields when it is a lifecycle event, the output fields when it is a line a child printed,
    and `exception` as text when one was logged."""
    extra = record["extra"]
    flat: dict[str, Any] = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "child": extra.get("child", "runner"),
    }
    if "event" in extra:
        flat["event"] = extra["event"]
        flat.update((name, extra[name]) for name in EVENT_FIELDS if name in extra)
    elif "stream" in extra:
        flat.update((name, extra[name]) for name in OUTPUT_FIELDS if extra.get(name) is not None)
    flat["message"] = record["message"]
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        flat["exception"] = "".join(traceback.format_exception(exception.type, exception.value, exception.traceback))
    return flat


def json_line_sink(stream: TextIO) -> Callable[[Message], None]:
    """Exactly one JSON object per line, written in one call (loguru holds the handler's lock around it)."""

    def sink(message: Message) -> None:
        stream.write(json.dumps(flat_record(message.record), default=str, ensure_ascii=False) + "\n")
        stream.flush()

    return sink


def install_thread_dump_signal() -> None:
    """SIGUSR1 writes every thread's stack to the log: the tool for a stuck actor in production."""

    def dump(_signum: int, _frame: FrameType | None) -> None:
        frames = sys._current_frames()
        for thread in threading.enumerate():
            frame = frames.get(thread.ident or -1)
            if frame is None:
                continue
            stack = "".join(traceback.format_stack(frame))
            logger.bind(child="runner").warning("thread {} stack:\n{}", thread.name, stack)

    signal.signal(signal.SIGUSR1, dump)


_forwarding = threading.local()


def add_agent_log_sink(send: Callable[[str], None], *, prefix: str, level: str = "INFO") -> int:
    """Also send runner log lines to the agent (opt-in, docs/protocol.md §9.2): `send` gets `<prefix>: <message>\\n`.

    A line logged while a line is being sent is not forwarded again, so a warning from the router cannot loop.
    """

    def sink(message: Message) -> None:
        if getattr(_forwarding, "active", False):
            return
        _forwarding.active = True
        try:
            record = message.record
            text = f"{prefix}: {record['message']}\n"
            if record["exception"] is not None:
                text += "".join(traceback.format_exception(*record["exception"]))
            send(text)
        finally:
            _forwarding.active = False

    return logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False)
