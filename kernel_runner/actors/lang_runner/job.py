"""Per-run helpers of the language runner: the task log file, and the output sink its pipe pumps call."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from kernel_runner.excerpts import excerpt
from kernel_runner.messages import StreamName

if TYPE_CHECKING:
    from loguru import Logger

KERNEL_ID_VAR = "BACKENDAI_KERNEL_ID"
LOG_LINE_LIMIT = 64 * 1024


def task_log_path(work_dir: Path, kernel_id: str) -> Path:
    """docs/protocol.md §5.3: `<work>/.logs/task/<h0h1>/<h2h3>/<rest>.log` from the kernel id's 32-digit hex form."""
    digits = uuid.UUID(kernel_id).hex
    return work_dir / ".logs" / "task" / digits[0:2] / digits[2:4] / f"{digits[4:]}.log"


class TaskLog:
    """The per-task log file (docs/protocol.md §5.3): both streams appended, unmarked, as upstream did; writes never raise."""

    def __init__(self, path: Path, stream: IO[bytes]) -> None:
        self.path = path
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, work_dir: Path, env: Mapping[str, str], log: Logger) -> TaskLog | None:
        """None when `<work>/.logs` is not a folder; a missing or bad kernel id is logged, not fatal.

        See docs/protocol.md §10.3 #24.
        """
        if not (work_dir / ".logs").is_dir():
            return None
        kernel_id = env.get(KERNEL_ID_VAR)
        if not kernel_id:
            log.warning("{} is not set; the task log is not written", KERNEL_ID_VAR)
            return None
        try:
            path = task_log_path(work_dir, kernel_id)
        except ValueError:
            log.warning("{}={!r} is not a UUID; the task log is not written", KERNEL_ID_VAR, kernel_id)
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stream = path.open("ab")
        except OSError as exc:
            log.warning("cannot open the task log {}: {}", path, exc)
            return None
        return cls(path, stream)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(data)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._stream.close()
            except OSError:
                pass


class LineLogger:
    """Turns a process's output into runner log lines (start-up steps: their output is logged, not sent)."""

    def __init__(self, log: Logger, label: str) -> None:
        self._log = log
        self._label = label
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        self._lock = threading.Lock()

    def feed(self, stream: StreamName, data: bytes) -> None:
        with self._lock:
            *lines, rest = (self._partial[stream] + data).split(b"\n")
            if len(rest) > LOG_LINE_LIMIT:
                lines.append(rest)
                rest = b""
            self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def flush(self) -> None:
        with self._lock:
            leftovers = [(name, rest) for name, rest in self._partial.items() if rest]
            self._partial = {"stdout": b"", "stderr": b""}
        for stream, rest in leftovers:
            self._emit(stream, rest)

    def _emit(self, stream: str, raw: bytes) -> None:
        self._log.bind(stream=stream).info("{} {}: {}", self._label, stream,
                                           raw.decode("utf-8", errors="replace").rstrip("\r"))


Deliver = Callable[[StreamName, bytes], None]


class StepSink:
    """What the two pipe pumps of one step call for each chunk: task log first, then the agent (or the log).

    `deliver` is the router's blocking, credit-taking send (the backpressure); it runs in the pump's thread.
    The sink also tells the actor whether output is still flowing after the process exited, which separates a
    pipe that is being drained (keep waiting, or output would be lost) from a pipe a background grandchild
    holds open without writing (stop waiting, docs/protocol.md §10.3 #23). Once detached, chunks no longer reach the agent:
    the op has finished, and they would be attributed to the next run.
    """

    def __init__(
        self,
        *,
        deliver: Deliver | None,
        task_log: TaskLog | None,
        line_logger: LineLogger | None,
        log: Logger,
    ) -> None:
        self._deliver = deliver
        self._task_log = task_log
        self._line_logger = line_logger
        self._log = log
        self._lock = threading.Lock()
        self._busy = 0
        self._exited = False
        self._detached = False
        self.bytes_after_exit = 0
        self._chunks_since_check = 0

    def __call__(self, stream: StreamName, data: bytes) -> None:
        """Never raises: the pipe pump that calls it must go on reading, or the step's end would never be told."""
        with self._lock:
            detached = self._detached
            self._chunks_since_check += 1
            if self._exited:
                self.bytes_after_exit += len(data)
            if not detached:
                self._busy += 1
        try:
            if self._task_log is not None:
                self._task_log.write(data)
            if detached:
                if self._line_logger is not None:
                    self._line_logger.feed(stream, data)
            elif self._deliver is not None:
                self._deliver(stream, data)
            elif self._line_logger is not None:
                self._line_logger.feed(stream, data)
        except Exception as exc:  # noqa: BLE001 - one lost chunk is logged; a dead pump would hang the run
            self._log.opt(exception=exc).error(
                "{} chunk of {} bytes lost: {!r}; it starts {}", stream, len(data), exc, excerpt(data)
            )
        finally:
            if not detached:
                with self._lock:
                    self._busy -= 1

    def mark_exited(self) -> None:
        with self._lock:
            self._exited = True
            self._chunks_since_check = 0

    def still_flowing(self) -> bool:
        """True while a pump is delivering, or delivered since the last call (the pipe is being drained)."""
        with self._lock:
            flowing = self._busy > 0 or self._chunks_since_check > 0
            self._chunks_since_check = 0
            return flowing

    def detach(self) -> bool:
        """Stop sending to the agent; True when no chunk is in flight (so Finished cannot overtake one)."""
        with self._lock:
            self._detached = True
            return self._busy == 0

    def flush(self) -> None:
        if self._line_logger is not None:
            self._line_logger.flush()
