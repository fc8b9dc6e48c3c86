"""Idle RSS of the runner process (`app`, and `python` without its kernel) vs the 23.3.5 runner's, in the same run, and
the leak check: RSS after 1000 mixed ops on a `python` runner vs its idle figure.

Each runner is launched as in bench_startup.py (the same namespace wrapper, so 23.3.5 finds its ports); once its
first `status` is answered (and, for `python`, its kernel has run one cell) it idles for IDLE_S and the RSS of the
runner's own process is read (the wrapper `exec`s, so that pid is the runner; the kernel is a child and not counted).
Targets: `app` ≤ 30 MB, `python` ≤ 35 MB; after 1000 ops (status, exec, start-service, shutdown-service, code) RSS
within 10 % of the idle figure. This is a measurement, not a test: the figures go to RESULTS.md.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgpack
import psutil
import zmq
from bench_startup import free_ports, namespaced, ours, stop_group, theirs, upstream_python
from common import machine_line, silence_logs

IDLE_S = 2.0
REPEATS = 3
LEAK_OPS = int(os.environ.get("BENCH_LEAK_OPS", "1000"))
MB = 1e6
LISTENER = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    server.accept()[0].close()
"""


class Agent:
    """Just enough of the agent: typed replies by name, over a PUSH/PULL pair connected before the launch."""

    def __init__(self, ports: Sequence[int]) -> None:
        ctx = zmq.Context.instance()
        self.push, self.pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        for sock in (self.push, self.pull):
            sock.setsockopt(zmq.RECONNECT_IVL, 2)
            sock.setsockopt(zmq.LINGER, 0)
        self.push.connect(f"tcp://127.0.0.1:{ports[0]}")
        self.pull.connect(f"tcp://127.0.0.1:{ports[1]}")

    def ask(self, op: str, payload: str, until: Callable[[bytes], bool], timeout_s: float = 60.0) -> bytes:
        self.push.send_multipart([op.encode(), payload.encode()])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pull.poll(1000):
                kind, body = self.pull.recv_multipart()
                if until(kind):
                    return body
        raise TimeoutError(f"no answer to {op}")

    def status(self) -> dict[str, object]:
        body: dict[str, object] = msgpack.unpackb(self.ask("status", "", lambda kind: kind == b"status"))
        return body

    def run(self, op: str, text: str) -> None:
        self.ask(op, text, lambda kind: kind in {b"finished", b"build-finished", b"clean-finished"})

    def close(self) -> None:
        self.push.close()
        self.pull.close()


class Launched:
    def __init__(self, command: Callable[[tuple[int, int]], list[str]], root: Path) -> None:
        ports = free_ports(2)
        self.agent = Agent(ports)
        self._log = (root / "launch.log").open("ab")
        self.proc = subprocess.Popen(namespaced(command((ports[0], ports[1])), (ports[0], ports[1])),
                                     stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        self.agent.status()

    def rss(self) -> float:
        return float(psutil.Process(self.proc.pid).memory_info().rss)

    def close(self) -> None:
        self.agent.close()
        self._log.close()
        stop_group(self.proc)


def idle_rss(command: Callable[[tuple[int, int]], list[str]], root: Path, *, warm: bool) -> float:
    runner = Launched(command, root)
    try:
        if warm:
            runner.agent.run("code", "1")
        time.sleep(IDLE_S)  # the figure is the process at rest: nothing to wait for but time
        return runner.rss()
    finally:
        runner.close()


def service_gone(agent: Agent, name: str) -> bool:
    children = agent.status().get("kernel_runner", {})
    assert isinstance(children, dict)
    return all(child.get("id") != f"service:{name}" for child in children.get("children", []))


def leak_check(root: Path) -> tuple[float, float, float]:
    """(idle RSS, RSS after the first 100 ops, RSS after LEAK_OPS ops) of a python runner, in bytes."""
    defs = root / "defs"
    (defs / "svc.json").write_text(json.dumps({"command": [sys.executable, "-c", LISTENER, "{ports[0]}"]}))
    runner = Launched(lambda ports: ours("python", root, ports), root)
    try:
        agent = runner.agent
        agent.run("code", "1")
        time.sleep(IDLE_S)
        idle = runner.rss()
        after_100 = idle
        done = 0
        while done < LEAK_OPS:
            agent.status()
            agent.run("exec", "true")
            port = free_ports(1)[0]
            reply = agent.ask("start-service", json.dumps({"name": "svc", "port": port, "protocol": "tcp"}),
                              lambda kind: kind == b"service-result")
            assert b"started" in reply, reply
            agent.push.send_multipart([b"shutdown-service", json.dumps("svc").encode()])
            deadline = time.monotonic() + 30
            while not service_gone(agent, "svc"):  # each poll is one more `status` op
                assert time.monotonic() < deadline, "the service did not stop"
                done += 1
            agent.run("code", "x = [0] * 1000")
            done += 5
            if after_100 == idle and done >= 100:
                time.sleep(IDLE_S)
                after_100 = runner.rss()
        time.sleep(IDLE_S)
        return idle, after_100, runner.rss()
    finally:
        runner.close()


def main() -> None:
    silence_logs()
    print(machine_line())
    upstream = upstream_python()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("config", "work", "defs"):
            (root / sub).mkdir()
        launches: list[tuple[str, Callable[[tuple[int, int]], list[str]], bool]] = [
            ("ours app", lambda p: ours("app", root, p), False),
            ("ours python", lambda p: ours("python", root, p), True),
        ]
        if upstream is not None:
            launches += [("23.3.5 app", lambda p: theirs(upstream, "app"), False),
                         ("23.3.5 python", lambda p: theirs(upstream, "python"), False)]
        results: dict[str, list[float]] = {}
        for _ in range(REPEATS):  # alternating, so a moment of memory pressure hits every runner alike
            for name, command, warm in launches:
                results.setdefault(name, []).append(idle_rss(command, root, warm=warm))
        print(f"idle RSS of the runner process ({REPEATS} launches each, {IDLE_S:g} s after ready):")
        for name, samples in results.items():
            print(f"  {name:14s} median {statistics.median(samples) / MB:6.1f} MB "
                  f"(range {min(samples) / MB:.1f}-{max(samples) / MB:.1f})")
        print("  targets: app <= 30 MB, python (without the kernel) <= 35 MB")
        idle, after_100, after_all = leak_check(root)
    print(f"python runner, {LEAK_OPS} mixed ops (status, exec, start/shutdown-service, code):")
    print(f"  idle {idle / MB:.1f} MB, after 100 ops {after_100 / MB:.1f} MB, after {LEAK_OPS} ops "
          f"{after_all / MB:.1f} MB: {after_all / idle - 1:+.1%} vs idle (target within 10 %), "
          f"{after_all / after_100 - 1:+.1%} vs after 100 ops")


if __name__ == "__main__":
    main()
