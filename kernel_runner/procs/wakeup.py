"""WakeupPipe: how other threads wake a helper thread that waits in poll(), without a timeout to poll on."""

from __future__ import annotations

import os
import threading


class WakeupPipe:
    """A self-pipe: the owner polls `fd` and drains it; any thread may `wake` it, also after it was closed (then a
    no-op, so a closed fd number that the system has handed out again is never written to)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()
        self._open = True

    @property
    def fd(self) -> int:
        return self._read

    @property
    def write_fd(self) -> int:
        """For `signal.set_wakeup_fd`: the C side of a signal handler writes there (the CLI's main thread)."""
        return self._write

    def wake(self) -> None:
        with self._lock:
            if not self._open:
                return
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def drain(self) -> None:
        """The owner's thread, after poll reported `fd`: the wake-ups so far are consumed."""
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                os.close(self._read)
                os.close(self._write)


__all__ = ["WakeupPipe"]
