"""`kernel-runner ctl status`: a fresh process to its answer, against a bare `python -c pass` in the same run.

A Docker HEALTHCHECK or an operator's shell starts `ctl` afresh every time, so its cost is interpreter start-up plus
imports plus one round trip on the control socket (docs/operations.md §1). The runner is its own process
(common.RunnerProcess). Both the console script (`kernel-runner ctl`, when installed) and `python -m kernel_runner ctl`
are timed, in alternating blocks with the baseline, so a noisy moment hits them alike.
Target: ≤ 0.25 s wall time; it must import no actor code, pykka, zmq or jupyter_client (checked here with
`python -X importtime`).
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RunnerProcess, machine_line, median_p99, silence_logs

BLOCKS = int(os.environ.get("BENCH_BLOCKS", "10"))
PER_BLOCK = 10
TARGET_S = 0.25
FORBIDDEN = ("pykka", "zmq", "jupyter_client", "kernel_runner.actors", "kernel_runner.runtime.root", "kernel_runner.cli.runner")
IMPORTTIME_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def console_script() -> Path | None:
    """The installed `kernel-runner` next to this interpreter, if it goes through the light entry point."""
    script = Path(sys.executable).parent / "kernel-runner"
    if script.exists() and "kernel_runner.cli.entry" in script.read_text(errors="replace"):
        return script
    return None


def imports(sock: Path) -> tuple[float, list[str]]:
    """(the self time of every module `ctl status` imports, in ms; the forbidden ones it imported)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kernel_runner", "ctl", "--socket", str(sock),
                           "status"], capture_output=True, text=True, check=True)
    rows = [(int(m[1]) / 1000, m[2]) for m in map(IMPORTTIME_LINE.match, done.stderr.splitlines()) if m]
    return sum(ms for ms, _ in rows), sorted(name for _, name in rows if name.startswith(FORBIDDEN))


def main() -> None:
    silence_logs()
    print(machine_line())
    root = Path(tempfile.mkdtemp(prefix="krbench-"))
    sock = root / "control.sock"
    runner = RunnerProcess("app", root, "--control-socket", str(sock))
    try:
        commands = {"python -c pass": [sys.executable, "-c", "pass"],
                    "python -m kernel_runner ctl status": [sys.executable, "-m", "kernel_runner", "ctl", "--socket",
                                                           str(sock), "status"]}
        script = console_script()
        if script is not None:
            commands["kernel-runner ctl status"] = [str(script), "ctl", "--socket", str(sock), "status"]
        else:
            print("no `kernel-runner` console script through kernel_runner.cli.entry here (pip install -e . makes it)")
        deadline = time.monotonic() + 30
        while subprocess.run(commands["python -m kernel_runner ctl status"], capture_output=True,
                             check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the runner's control socket did not answer; see {runner.log_path}")
        for argv in commands.values():  # warm-up: page cache, .pyc files
            timed(argv)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(BLOCKS):
            for name, argv in commands.items():
                samples[name] += [timed(argv) for _ in range(PER_BLOCK)]
        import_ms, forbidden = imports(sock)
    finally:
        runner.stop()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(samples["python -c pass"])
    print(f"a fresh process to its exit, {BLOCKS} alternating blocks of {PER_BLOCK}:")
    for name, values in samples.items():
        median, p99 = median_p99(values)
        ratio = "" if name == "python -c pass" else f"  = {median / base:.2f}x the baseline, +{(median - base) * 1000:.1f} ms"
        print(f"  {name:36s} median {median * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms{ratio}")
    worst = max(statistics.median(values) for name, values in samples.items() if name != "python -c pass")
    print(f"  ctl status <= {TARGET_S} s: {'yes' if worst <= TARGET_S else 'NO'}")
    print(f"-X importtime of `ctl status`: every module's self time {import_ms:.1f} ms; forbidden modules loaded: "
          f"{', '.join(forbidden) or 'none'}")


if __name__ == "__main__":
    main()
