"""Launch → first `status` reply, ours vs the 23.3.5 runner in the same run, and the package's own import time.

Each launch is a fresh process started by the same wrapper (a private mount namespace whose /home is a tmpfs, so the
23.3.5 runner finds its intrinsic-ports.json at the fixed path /home/config without touching the machine's /home).
The client connects before the launch (reconnecting every 2 ms) and sends `status` at once, so the figure is from
`Popen` to the reply. Ours and 23.3.5 alternate, launch by launch, so load on the machine falls on both alike.
Targets: `app` ≤ 0.3 s and ≤ 0.35× 23.3.5's; `python` as fast as `app` (its kernel keeps starting in parallel).

Import time: `python -X importtime -c "import kernel_runner.cli.runner"`, summing the self time of every `kernel_runner.*`
module (the package's own time; what it imports from other packages is shown apart). Target ≤ 120 ms.

The 23.3.5 runner runs from a venv made from its wheel (UPSTREAM_WHEEL); without the wheel, or without `unshare`
(root), only our own figures are printed.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import zmq
from common import machine_line, silence_logs

LAUNCHES = int(os.environ.get("BENCH_LAUNCHES", "10"))
IMPORT_RUNS = 7
REPLY_TIMEOUT_S = 30.0
UPSTREAM_WHEEL = Path(os.environ.get("UPSTREAM_WHEEL", "/tmp/kr/upstream/backend.ai_kernel-23.3.5-py3-none-any.whl"))
UPSTREAM_VENV = Path(os.environ.get("UPSTREAM_VENV", "/tmp/kr-upstream-23.3.5-venv"))
IMPORTTIME_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def free_ports(count: int) -> list[int]:
    import socket
    from contextlib import ExitStack

    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def upstream_python() -> Path | None:
    """The 23.3.5 runner's interpreter: a venv built once from its wheel (its dependencies come from the index)."""
    python = UPSTREAM_VENV / "bin" / "python"
    if python.exists():
        return python
    if not UPSTREAM_WHEEL.exists():
        return None
    subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(UPSTREAM_WHEEL)], check=True)
    return python


def namespaced(command: Sequence[str], ports: tuple[int, int]) -> list[str]:
    """Run `command` with a private tmpfs /home holding /home/config/intrinsic-ports.json and /home/work."""
    mapping = json.dumps({"replin": ports[0], "replout": ports[1]})
    script = (f"mount -t tmpfs none /home && mkdir -p /home/config /home/work && "
              f"echo {shlex.quote(mapping)} > /home/config/intrinsic-ports.json && cd /home/work && "
              f"exec {shlex.join(command)}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def ours(lang: str, root: Path, ports: tuple[int, int]) -> list[str]:
    return [sys.executable, "-m", "kernel_runner", lang, "--bind", "127.0.0.1", "--port-in", str(ports[0]),
            "--port-out", str(ports[1]), "--config-dir", str(root / "config"), "--work-dir", str(root / "work"),
            "--service-defs-dir", str(root / "defs"), "--user-input-socket", str(root / "input.sock"),
            "--no-intrinsic-services"]


def theirs(python: Path, lang: str) -> list[str]:
    return [str(python), "-m", "ai.backend.kernel", lang]


def first_status(command_for: object, root: Path) -> float:
    """Seconds from launch to the first `status` reply; the process is stopped afterwards (SIGTERM, then KILL)."""
    ports = free_ports(2)
    command = namespaced(command_for(tuple(ports)), (ports[0], ports[1]))  # type: ignore[operator]
    ctx = zmq.Context.instance()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for sock in (push, pull):
        sock.setsockopt(zmq.RECONNECT_IVL, 2)
        sock.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://127.0.0.1:{ports[0]}")
    pull.connect(f"tcp://127.0.0.1:{ports[1]}")
    log = (root / "launch.log").open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        push.send_multipart([b"status", b""])
        deadline = started + REPLY_TIMEOUT_S
        while True:  # 23.3.5 may send stderr lines (its failed start-up steps) before the reply
            left_ms = (deadline - time.perf_counter()) * 1000
            if left_ms <= 0 or not pull.poll(left_ms):
                raise RuntimeError(f"no status reply within {REPLY_TIMEOUT_S:g} s from {command}; see {root}/launch.log")
            if pull.recv_multipart()[0] == b"status":
                return time.perf_counter() - started
    finally:
        push.close()
        pull.close()
        log.close()
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        proc.wait(timeout=15)
    try:  # a kernel the runner started lives in the same session
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def own_import_ms(module: str) -> tuple[float, float, list[tuple[float, str]]]:
    """(the package's own self time, everything's self time, the package's modules by self time), in ms."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, check=True)
    rows = [(int(m[1]) / 1000, m[4]) for m in map(IMPORTTIME_LINE.match, done.stderr.splitlines()) if m]
    own = [(ms, name) for ms, name in rows if name == "kernel_runner" or name.startswith("kernel_runner.")]
    return sum(ms for ms, _ in own), sum(ms for ms, _ in rows), sorted(own, reverse=True)


def summary(samples: Sequence[float]) -> str:
    return f"median {statistics.median(samples):.3f} s  (min {min(samples):.3f}, max {max(samples):.3f})"


def main() -> None:
    silence_logs()
    print(machine_line())
    can_namespace = os.geteuid() == 0 and shutil.which("unshare") is not None
    upstream = upstream_python() if can_namespace else None
    if not can_namespace:
        print("unshare needs root: launching without the namespace, and without the 23.3.5 comparison")
    elif upstream is None:
        print(f"no 23.3.5 wheel at {UPSTREAM_WHEEL}: our figures only")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("config", "work", "defs"):
            (root / sub).mkdir()
        results: dict[str, list[float]] = {}
        launches = [("ours app", lambda p: ours("app", root, p)), ("ours python", lambda p: ours("python", root, p))]
        if upstream is not None:
            launches += [("23.3.5 app", lambda p: theirs(upstream, "app")),
                         ("23.3.5 python", lambda p: theirs(upstream, "python"))]
        for _name, command in launches:  # one warm-up each: page cache, .pyc files
            first_status(command, root)
        for _ in range(LAUNCHES):
            for name, command in launches:
                results.setdefault(name, []).append(first_status(command, root))
    print(f"launch → first status reply, {LAUNCHES} launches each, alternating:")
    for name, samples in results.items():
        print(f"  {name:14s} {summary(samples)}")
    app = statistics.median(results["ours app"])
    python = statistics.median(results["ours python"])
    print(f"  ours app ≤ 0.3 s: {'yes' if app <= 0.3 else 'NO'};  python / app: {python / app:.2f}x")
    if "23.3.5 app" in results:
        print(f"  ours app / 23.3.5 app: {app / statistics.median(results['23.3.5 app']):.2f}x  (target ≤ 0.35x)")
        print(f"  ours python / 23.3.5 python: {python / statistics.median(results['23.3.5 python']):.2f}x")

    # cli and client are what `kernel-runner` and `kernel-runner client` import; runtime is what starting a runner adds.
    for module in ("kernel_runner.cli.runner", "kernel_runner.client", "kernel_runner.runtime.root"):
        runs = [own_import_ms(module) for _ in range(IMPORT_RUNS)]
        own = [run[0] for run in runs]
        total = [run[1] for run in runs]
        print(f"-X importtime import {module}: own modules' self time median {statistics.median(own):.1f} ms "
              f"(range {min(own):.1f}-{max(own):.1f}; target for cli <= 120), everything "
              f"{statistics.median(total):.1f} ms, {len(runs[0][2])} own modules")
        typical = sorted(runs, key=lambda run: run[0])[len(runs) // 2][2]
        print("  heaviest own modules (self ms): "
              + ", ".join(f"{name.removeprefix('kernel_runner.')} {ms:.1f}" for ms, name in typical[:8]))

if __name__ == "__main__":
    main()
