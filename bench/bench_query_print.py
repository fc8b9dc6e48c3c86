"""Python query mode: `print(1)` round trip, stdout throughput and time to ready, each against bare jupyter_client.

Both sides use the same python3 kernelspec in the same run; the runner runs as its own process, as the agent meets
it. The ratios compare our path (agent socket → AgentLink → language runner → kernel actor → channel thread → kernel,
and back) with a plain Session loop on the kernel's own sockets, measured in alternating blocks so load on the
machine falls on both alike. Target: round-trip ratio ≤ 1.03; throughput with records ≤ 1 MiB.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from common import RunnerProcess, machine_line, median_p99, silence_logs
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

from kernel_runner.actors.kernel.jupyter import MAX_RECORD_BYTES
from kernel_runner.client import AgentClient

KERNEL = "python3"
ROUNDS = 300
WARMUP = 30
THROUGHPUT_MIB = 256
THROUGHPUT_REPEATS = 3
# 256 prints of 1 MiB lines: ipykernel batches them into stream messages; we split them into ≤ 1 MiB records.
THROUGHPUT_CODE = f"s = 'x' * (1024 * 1024 - 1)\nfor _ in range({THROUGHPUT_MIB}):\n    print(s)"


# ---- bare jupyter_client ------------------------------------------------------------------------------------------
class BareClient:
    """The floor: jupyter_client's Session over plain zmq sockets, one poll loop, nothing else in the way.

    (BlockingKernelClient adds a sync-over-async layer that costs milliseconds per call, which would flatter us.)
    """

    def __init__(self, connection: dict[str, Any]) -> None:
        key = connection["key"]
        self.session = Session(key=key if isinstance(key, bytes) else key.encode(),
                               signature_scheme=connection["signature_scheme"])
        ctx: zmq.Context[Any] = zmq.Context.instance()
        url = f"ipc://{connection['ip']}-{{}}" if connection["transport"] == "ipc" else f"tcp://{connection['ip']}:{{}}"
        self.shell: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.shell.setsockopt(zmq.IDENTITY, self.session.bsession)
        self.shell.connect(url.format(connection["shell_port"]))
        self.iopub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.RCVHWM, 0)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(url.format(connection["iopub_port"]))
        self.poller = zmq.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)

    def wait_for_iopub(self) -> None:
        """Like the runner's readiness: a kernel_info_reply and one IOPub message."""
        got_reply = got_iopub = False
        while not (got_reply and got_iopub):
            self.session.send(self.shell, "kernel_info_request", {})
            self.poller.poll(250)
            while self.session.recv(self.shell, zmq.NOBLOCK)[1] is not None:
                got_reply = True
            while self.session.recv(self.iopub, zmq.NOBLOCK)[1] is not None:
                got_iopub = True

    def execute(self, code: str, on_stream: Callable[[str], None] | None = None) -> None:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        sent: dict[str, Any] = self.session.send(self.shell, "execute_request", content) or {}
        msg_id = sent["header"]["msg_id"]
        idle = replied = False
        while not (idle and replied):
            self.poller.poll(60_000)
            while (msg := self.session.recv(self.iopub, zmq.NOBLOCK, copy=False)[1]) is not None:
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream" and on_stream is not None:
                    on_stream(msg["content"]["text"])
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            while (msg := self.session.recv(self.shell, zmq.NOBLOCK)[1]) is not None:
                replied = replied or msg["parent_header"].get("msg_id") == msg_id

    def close(self) -> None:
        self.shell.close(linger=0)
        self.iopub.close(linger=0)


BLOCKS = 10


def main() -> None:
    silence_logs()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "work").mkdir()
        t0 = time.perf_counter()
        # The same ipc transport the runner uses, so the ratio compares the paths and not TCP with Unix sockets.
        manager = KernelManager(kernel_name=KERNEL, transport="ipc", ip=str(root / "kernel"))
        manager.start_kernel()
        bare = BareClient(dict(manager.get_connection_info(session=False)))
        bare.wait_for_iopub()
        bare_ready = time.perf_counter() - t0
        t0 = time.perf_counter()
        (root / "runner").mkdir()
        runner_process = RunnerProcess("python", root / "runner")
        try:
            with AgentClient(port_in=runner_process.port_in, port_out=runner_process.port_out) as client:
                # The first `code` waits for the kernel: from launch to its answer is the runner's time to ready.
                assert client.code("print(1)", timeout=60).stdout == b"1\n"
                run_ready = time.perf_counter() - t0
                results = measure(bare, client)
        finally:
            runner_process.stop()
            bare.close()
            manager.shutdown_kernel(now=True)
    bare_rt, run_rt, bare_rates, run_rates, largest = results
    bare_med, bare_p99 = median_p99(bare_rt)
    run_med, run_p99 = median_p99(run_rt)
    bare_rate, run_rate = statistics.median(bare_rates), statistics.median(run_rates)
    print(machine_line())
    print(f"print(1) bare jupyter_client  median {bare_med * 1e3:7.2f} ms  p99 {bare_p99 * 1e3:7.2f} ms")
    print(f"print(1) runner (code op)     median {run_med * 1e3:7.2f} ms  p99 {run_p99 * 1e3:7.2f} ms")
    print(f"round-trip ratio (median)     {run_med / bare_med:.2f}x  (target <= 1.03)")
    print(f"stdout {THROUGHPUT_MIB} MiB  bare {bare_rate:7.1f} MiB/s  runner {run_rate:7.1f} MiB/s  "
          f"ratio {run_rate / bare_rate:.2f}x (largest record {largest} B, limit {MAX_RECORD_BYTES})")
    print(f"time to ready  bare {bare_ready:.2f} s  runner {run_ready:.2f} s (launch to the first print(1) answered)")


def measure(bare: BareClient, client: AgentClient) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Round trips in alternating blocks, then throughput rounds alternating too: machine load hits both alike."""
    for _ in range(WARMUP):
        bare.execute("print(1)")
        client.code("print(1)", timeout=60)
    bare_rt: list[float] = []
    run_rt: list[float] = []
    for _ in range(BLOCKS):
        for _ in range(ROUNDS // BLOCKS):
            t0 = time.perf_counter()
            bare.execute("print(1)")
            bare_rt.append(time.perf_counter() - t0)
        for _ in range(ROUNDS // BLOCKS):
            t0 = time.perf_counter()
            result = client.code("print(1)", timeout=60)
            run_rt.append(time.perf_counter() - t0)
            assert result.exit_code == 0
    bare_rates: list[float] = []
    run_rates: list[float] = []
    largest = 0
    for _ in range(THROUGHPUT_REPEATS):
        chunks: list[bytes] = []
        t0 = time.perf_counter()
        bare.execute(THROUGHPUT_CODE, lambda text, into=chunks: into.append(text.encode()))  # type: ignore[misc]
        bare_rates.append(sum(map(len, chunks)) / (1 << 20) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        result = client.code(THROUGHPUT_CODE, timeout=120)
        elapsed = time.perf_counter() - t0
        assert result.exit_code == 0 and len(result.stdout) == THROUGHPUT_MIB << 20
        largest = max(largest, *(len(r.payload) for r in result.records))
        run_rates.append(len(result.stdout) / (1 << 20) / elapsed)
    return bare_rt, run_rt, bare_rates, run_rates, largest


if __name__ == "__main__":
    main()
