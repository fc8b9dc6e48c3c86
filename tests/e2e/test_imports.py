"""What each entry point imports (docs/architecture.md §2.1), checked in fresh interpreters: an `app` runner never
loads jupyter_client or a query delegate's actor, `kernel-runner client` loads no actor code, and `import kernel_runner`
loads nothing else. A `python` runner, which does need them, shows the check can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# Modules only a language with a query delegate, or a service / model request, may load.
DELEGATE_ONLY = ("jupyter_client", "kernel_runner.actors.kernel.actor", "kernel_runner.actors.kernel.channels",
                 "kernel_runner.actors.kernel.process", "kernel_runner.actors.kernel.connection",
                 "kernel_runner.actors.kernel.heartbeat", "kernel_runner.actors.terminal.actor",
                 "kernel_runner.actors.terminal.command_runner", "kernel_runner.actors.polly.actor",
                 "kernel_runner.actors.health.actor", "kernel_runner.probes.loop")

# Starts the runtime as the CLI does, answers one `status` and one `exec`, then prints the loaded module names.
RUN_AND_LIST = """
import json, sys
from pathlib import Path
from kernel_runner.config import RunnerConfig
from kernel_runner.runtime.root import start
from kernel_runner.client import AgentClient

lang, root, op = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(root / "work").mkdir(exist_ok=True)
config = RunnerConfig(lang=lang, config_dir=root, work_dir=root / "work", service_defs_dir=root / "defs",
                      bind="127.0.0.1", port_in=0, port_out=0, user_input_socket=root / "input.sock",
                      start_intrinsic_services=False, shutdown_deadline_s=5.0)
handle = start(config)
agent = AgentClient(port_in=handle.ports.port_in, port_out=handle.ports.port_out)
try:
    status = agent.status(timeout=30)
    result = agent.code("print(6 * 7)", timeout=60) if op == "code" else agent.run("exec", "true", timeout=30)
    report = {"ready": status["kernel_runner"]["ready"], "run": result.status, "exit_code": result.exit_code,
              "stdout": result.stdout.decode(), "modules": sorted(sys.modules)}
finally:
    agent.close()
    handle.stop(timeout=5)
print(json.dumps(report))
"""


def run_and_list(lang: str, tmp_path: Path, op: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST, lang, str(tmp_path), op], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def modules_after(statement: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_an_app_runner_does_not_import_jupyter_client_or_a_delegate(tmp_path: Path) -> None:
    report = run_and_list("app", tmp_path, "exec")
    assert (report["ready"], report["run"]) == (True, "finished")
    loaded = set(report["modules"])
    assert "kernel_runner.actors.lang_runner.actor" in loaded  # the list is the runner's own
    assert loaded.isdisjoint(DELEGATE_ONLY), sorted(loaded.intersection(DELEGATE_ONLY))
    # About 6 MB of idle RSS: loguru and pyzmq's monitor helpers would pull them in (architecture §2.1).
    assert loaded.isdisjoint({"asyncio", "ssl"}), sorted(loaded.intersection({"asyncio", "ssl"}))
    # Metrics are opt-in (--metrics-port): without them prometheus_client (about 40 ms, 7 MB) is never loaded.
    metrics = {"prometheus_client", "kernel_runner.observability.metrics"}
    assert loaded.isdisjoint(metrics), sorted(loaded.intersection(metrics))


def test_a_python_runner_loads_the_kernel_it_uses(tmp_path: Path) -> None:
    report = run_and_list("python", tmp_path, "code")
    assert (report["exit_code"], report["stdout"]) == (0, "42\n")
    assert {"jupyter_client", "kernel_runner.actors.kernel.actor"} <= set(report["modules"])


def test_the_client_and_the_package_load_no_actor_code() -> None:
    for statement in ("import kernel_runner.client", "import kernel_runner.cli.client",
                      "from kernel_runner.cli.runner import main"):
        loaded = modules_after(statement)
        actors = sorted(name for name in loaded if name.startswith("kernel_runner.actors") or name in {
            "kernel_runner.runtime.root", "kernel_runner.supervisor", "jupyter_client"})
        assert actors == [], f"{statement}: {actors}"
    # Only the loguru twin (observability/loguru_asyncio.py, standard library only) comes with the package.
    assert sorted(name for name in modules_after("import kernel_runner") if name.startswith("kernel_runner")) == [
        "kernel_runner", "kernel_runner.observability", "kernel_runner.observability.loguru_asyncio"]


def test_kernel_runner_client_runs_without_actor_code() -> None:
    """`kernel-runner client --help` through the console script's entry point, as ops call it."""
    probe = ("import sys\nfrom kernel_runner.cli.entry import main\nsys.argv = ['kernel-runner', 'client', '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('LOADED', ' '.join(m for m in sys.modules if m.startswith('kernel_runner.actors')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "usage" in done.stdout.lower()
    assert done.stdout.strip().splitlines()[-1] == "LOADED"


def test_loguru_coroutine_sinks_still_work_after_import_kernel_runner() -> None:
    """The package hands loguru a twin of its asyncio helper module (architecture §2.1); a coroutine sink, the one
    loguru feature that needs it, must behave as with loguru's own module."""
    probe = ("import kernel_runner, sys, asyncio\nfrom loguru import logger\nlogger.remove()\nseen = []\n"
             "async def sink(message):\n    seen.append(str(message))\n"
             "async def main():\n    logger.add(sink, format='{message}')\n    logger.info('hello')\n"
             "    await logger.complete()\n"
             "asyncio.run(main())\nprint(repr(seen), type(sys.modules['loguru._asyncio_loop'].__spec__).__name__)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["['hello\\n']", "NoneType"], done.stdout + done.stderr
