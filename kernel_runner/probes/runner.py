"""ProbeThread: runs one probe at a time for one actor, so the actor never waits on the network or a command."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import attrs
import pykka

from kernel_runner.probes.kinds import HttpProbe, Probe, failed, run_probe
from kernel_runner.probes.messages import ProbeFinished
from kernel_runner.supervision.clock import Clock
from kernel_runner.supervision.refs import tell_if_alive

if TYPE_CHECKING:
    import requests


@attrs.frozen(kw_only=True)
class _Job:
    seq: int
    probe: Probe


class ProbeThread(threading.Thread):
    """Takes one job at a time and tells its owner ProbeFinished; owns its requests Session (made for the first HTTP
    probe only)."""

    def __init__(self, *, owner: pykka.ActorRef[Any], clock: Clock, tag: str, name: str) -> None:
        super().__init__(name=f"Prober-{name}", daemon=True)
        self._owner = owner
        self._clock = clock
        self._tag = tag
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self._stopping = threading.Event()

    def submit(self, seq: int, probe: Probe) -> bool:
        """False while the thread is still busy with a job (the owner then does not count the new one as sent)."""
        try:
            self._queue.put_nowait(_Job(seq=seq, probe=probe))
        except queue.Full:
            return False
        return True

    def stop(self) -> None:
        """Never blocks: a probe in flight ends within its own timeouts, and its answer is dropped."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # a job is pending; the loop takes it, sees the flag and ends

    def run(self) -> None:
        session: requests.Session | None = None
        try:
            while True:
                job = self._queue.get()
                if job is None or self._stopping.is_set():
                    return
                if session is None and isinstance(job.probe, HttpProbe):
                    session = _new_session()
                try:
                    answer = run_probe(job.probe, session=session, clock=self._clock)
                except Exception as exc:  # noqa: BLE001 - a probe that raises is a failed probe, never a dead thread
                    answer = failed(f"the probe raised {exc!r}")
                if self._stopping.is_set():
                    return
                if not tell_if_alive(self._owner, ProbeFinished(tag=self._tag, seq=job.seq, answer=answer)):
                    return
        finally:
            if session is not None:
                session.close()


def _new_session() -> requests.Session:
    import requests  # here, not at import time: a runner without HTTP probes never needs it (~50 ms)

    session = requests.Session()
    session.trust_env = False  # a 127.0.0.1 probe never goes through HTTP(S)_PROXY or reads ~/.netrc
    return session


__all__ = ["ProbeThread"]
