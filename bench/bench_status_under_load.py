"""`status` round trip while the runner is loaded vs the same runner idle, measured in the same run (a ratio).

The runner is its own process (`python -m kernel_runner app`, common.RunnerProcess), as the agent meets it. Idle: only
`status` round trips. Loaded: 50 supervised services, 20 model servers whose health is probed every 100 ms, and the
serial queue kept full of `exec` ops (about 200 waiting at any time), whose output the same client reads, as the agent
reads everything on one socket. The load tests (tests/load) check that every request is answered; this script only
measures how long `status` takes meanwhile.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import zmq
from common import RunnerProcess, machine_line, median_p99, silence_logs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.ports import free_ports

SERVICES = 50
MODELS = 20
QUEUED_EXECS = 200
SAMPLES = 1000
WARMUP = 100
HEALTH_SERVER = str(Path(__file__).resolve().parent.parent / "tests" / "children" / "health_server.py")
TINY_LISTENER = str(Path(__file__).resolve().parent.parent / "tests" / "children" / "tiny_listener.py")


class Agent:
    """PUSH/PULL like the agent; reads every message and keeps the serial queue topped up while it waits."""

    def __init__(self, port_in: int, port_out: int) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.push, self.pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        self.push.connect(f"tcp://127.0.0.1:{port_in}")
        self.pull.connect(f"tcp://127.0.0.1:{port_out}")
        self.outstanding_execs = 0
        self.keep_queue_full = False
        self.counts: dict[bytes, int] = {}
        # Replies of a kind nobody waits for yet (a model's answer may come before the last service's): kept.
        self.kept: dict[bytes, list[bytes]] = {}

    def top_up(self) -> None:
        while self.keep_queue_full and self.outstanding_execs < QUEUED_EXECS:
            self.push.send_multipart([b"exec", b"echo load"])
            self.outstanding_execs += 1

    def wait_for(self, kind: bytes, timeout: float = 120.0) -> bytes:
        if self.kept.get(kind):
            return self.kept[kind].pop(0)
        deadline = time.monotonic() + timeout
        while True:
            self.top_up()
            if not self.pull.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise TimeoutError(f"no {kind!r} within {timeout:g}s")
            got, payload = (bytes(frame) for frame in self.pull.recv_multipart())
            self.counts[got] = self.counts.get(got, 0) + 1
            if got == b"finished":
                self.outstanding_execs -= 1
            if got == kind:
                return payload
            if got in (b"service-result", b"model-service-result"):
                self.kept.setdefault(got, []).append(payload)

    def status_round_trips(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            self.top_up()
            t0 = time.perf_counter()
            self.push.send_multipart([b"status", b""])
            self.wait_for(b"status")
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> None:
        self.push.close(linger=0)
        self.pull.close(linger=0)


def load_up(agent: Agent) -> None:
    ports = free_ports(SERVICES + MODELS)  # distinct: one port handed out twice would fail a start
    for i in range(SERVICES):
        port = ports[i]
        info = {"name": f"svc{i:03d}", "port": port, "ports": [port], "protocol": "http", "options": {}}
        agent.push.send_multipart([b"start-service", json.dumps(info).encode()])
    for i in range(MODELS):
        port = ports[SERVICES + i]
        model = {"name": f"model{i:02d}", "model_path": tempfile.gettempdir(), "service": {
            "start_command": [sys.executable, HEALTH_SERVER, str(port)], "port": port,
            "health_check": {"path": "/health", "max_retries": 60, "max_wait_time": 1.0, "interval": 0.1}}}
        agent.push.send_multipart([b"start-model-service", json.dumps(model).encode()])
    results = [json.loads(agent.wait_for(b"service-result")) for _ in range(SERVICES)]
    results += [json.loads(agent.wait_for(b"model-service-result")) for _ in range(MODELS)]
    failed = [r for r in results if r != {"status": "started"}]
    if failed:
        raise RuntimeError(f"{len(failed)} starts failed, e.g. {failed[0]}")
    agent.keep_queue_full = True


def main() -> None:
    silence_logs()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "defs").mkdir()
        for i in range(SERVICES):
            body = {"command": [sys.executable, "-S", TINY_LISTENER, "{ports[0]}"]}
            (root / "defs" / f"svc{i:03d}.json").write_text(json.dumps(body))
        runner = RunnerProcess("app", root, "--service-launch-timeout", "60")
        agent = Agent(runner.port_in, runner.port_out)
        try:
            agent.status_round_trips(WARMUP)
            idle = agent.status_round_trips(SAMPLES)
            load_up(agent)
            agent.status_round_trips(WARMUP)
            loaded = agent.status_round_trips(SAMPLES)
            execs = agent.counts.get(b"finished", 0)
        finally:
            agent.close()
            runner.stop()
    idle_med, idle_p99 = median_p99(idle)
    load_med, load_p99 = median_p99(loaded)
    print(machine_line())
    print(f"status, idle runner         median {idle_med * 1e6:8.1f} us   p99 {idle_p99 * 1e6:8.1f} us")
    print(f"status, {SERVICES} services + {MODELS} probed models + {QUEUED_EXECS} queued execs "
          f"median {load_med * 1e6:8.1f} us   p99 {load_p99 * 1e6:8.1f} us   ({execs} execs answered meanwhile)")
    print(f"ratio (median)   {load_med / idle_med:.2f}x of the same runner idle")


if __name__ == "__main__":
    main()
