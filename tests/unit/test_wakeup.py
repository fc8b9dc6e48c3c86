"""WakeupPipe: a helper thread's poll() wakes on `wake`, and a late `wake` after close never writes anywhere."""

from __future__ import annotations

import os
import select
import threading

from kernel_runner.procs.wakeup import WakeupPipe


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def test_wake_makes_the_fd_readable_and_drain_consumes_every_wakeup() -> None:
    pipe = WakeupPipe()
    try:
        assert not _readable(pipe.fd)
        for _ in range(3):
            pipe.wake()
        assert _readable(pipe.fd)
        pipe.drain()
        assert not _readable(pipe.fd)
    finally:
        pipe.close()


def test_a_poll_in_another_thread_returns_when_woken() -> None:
    pipe = WakeupPipe()
    returned = threading.Event()

    def wait() -> None:
        poller = select.poll()
        poller.register(pipe.fd, select.POLLIN)
        if poller.poll(30_000):
            returned.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    pipe.wake()
    thread.join(timeout=30)
    pipe.close()
    assert returned.is_set()


def test_wake_after_close_does_not_write_to_a_reused_fd_number() -> None:
    pipe = WakeupPipe()
    pipe.close()
    # The system hands the freed numbers out again; a stray write would land in this unrelated pipe.
    r, w = os.pipe()
    try:
        pipe.wake()
        pipe.close()  # closing twice is harmless too
        assert not _readable(r)
    finally:
        os.close(r)
        os.close(w)


def test_the_writer_never_blocks_when_nobody_drains() -> None:
    pipe = WakeupPipe()
    try:
        for _ in range(200_000):  # far more than a pipe buffer holds
            pipe.wake()
        assert _readable(pipe.fd)
    finally:
        pipe.close()
