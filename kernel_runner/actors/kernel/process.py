"""KernelProcess: what one kernel incarnation runs besides its actor, started, signalled and torn down together.

It owns the launch directory and the KernelStarter that spawns the kernel into it (channels.py), the ProcessWatcher
that reports the kernel's exit and logs what the kernel itself prints, and the KernelChannels thread that carries its
traffic. KernelActor decides when (its phases, docs/protocol.md §4); this object knows how, and never blocks: each
call returns at once, and what the threads learn comes back to the actor as messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka

from kernel_runner.actors.kernel.channels import (
    KernelChannels,
    KernelStarter,
    LaunchBox,
    RequestShutdownCommand,
    SendInterruptCommand,
)
from kernel_runner.context import RunnerContext
from kernel_runner.excerpts import excerpt
from kernel_runner.ids import RunId
from kernel_runner.messages import KernelLaunched, StreamName
from kernel_runner.procs.process import OutputSink, ProcessHandle, ProcessWatcher, StopStep, stop_process, watch_process
from kernel_runner.supervision.clock import Clock

if TYPE_CHECKING:
    from loguru import Logger

KERNEL_LOG_LINE_CHARS = 4096  # what the kernel process itself prints goes to our log, a line at most this long
JOIN_TIMEOUT_S = 1.0


class KernelProcess:
    """The kernel process of one incarnation, its watcher and its channel thread."""

    def __init__(
        self,
        *,
        owner: pykka.ActorRef[Any],
        runner: RunnerContext,
        kernel_name: str,
        env: Mapping[str, str] | None,
        clock: Clock,
        run_done: Callable[[RunId, int], None],
        ready_timeout_s: float,
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
        heartbeat_idle_interval_s: float,
    ) -> None:
        """`env`: the kernel's environment (None: the runner's own, as upstream gives the kernel os.environ)."""
        self._owner = owner
        self._runner = runner
        self.kernel_name = kernel_name
        self._env_override = env
        self._clock = clock
        self._run_done = run_done
        self._ready_timeout_s = ready_timeout_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeat_idle_interval_s = heartbeat_idle_interval_s
        self._box: LaunchBox | None = None
        self._starter: KernelStarter | None = None
        self.channels: KernelChannels | None = None
        self._watcher: ProcessWatcher | None = None
        self.launched: KernelLaunched | None = None  # what KernelStarter spawned (its interrupt mode)

    @property
    def handle(self) -> ProcessHandle | None:
        return self._box.handle if self._box is not None else None

    @property
    def pid(self) -> int | None:
        handle = self.handle
        return handle.pid if handle is not None else None

    def start(self) -> None:
        """KernelStarter finds the kernelspec and spawns the kernel; the owner hears KernelLaunched or KernelStartFailed."""
        directory = Path(tempfile.mkdtemp(prefix="kernel-runner-"))
        self._box = LaunchBox(directory)
        env = self._kernel_env()
        work_dir = self._runner.config.work_dir
        cwd = work_dir if work_dir.is_dir() else None
        self._starter = KernelStarter(kernel_name=self.kernel_name, box=self._box, env=env, cwd=cwd, owner=self._owner)
        self._starter.start()

    def _kernel_env(self) -> dict[str, str]:
        # docs/protocol.md §4.1: upstream gives the kernel the runner's own environment (plus environ.txt here), not child_env.
        if self._env_override is not None:
            return dict(self._env_override)
        if self._runner.runner_env:
            return dict(self._runner.runner_env)
        return dict(os.environ)

    def launched_as(self, message: KernelLaunched) -> ProcessHandle:
        box = self._box
        assert box is not None and box.handle is not None and box.connection is not None
        self.launched = message
        return box.handle

    def watch(self, log: Logger) -> None:
        """The kernel's exit comes to the owner as ProcessExited; what it prints goes to `log`."""
        handle = self.handle
        assert handle is not None
        stdout = handle.popen.stdout
        kernel_log = log.bind(stream="kernel")

        def log_kernel_output(_stream: StreamName, data: bytes) -> None:
            try:
                for line in data.decode("utf-8", errors="replace").splitlines():
                    if line.strip():
                        kernel_log.info("kernel says: {}", excerpt(line, KERNEL_LOG_LINE_CHARS, quote=False))
            except Exception as exc:  # noqa: BLE001 - the watcher must go on reading, or the kernel's exit is lost
                kernel_log.error("kernel output of {} bytes not logged: {!r}; it starts {}", len(data), exc, excerpt(data))

        sink: OutputSink | None = log_kernel_output if stdout is not None else None
        self._watcher = watch_process(handle, self._owner, sink=sink, clock=self._clock)

    def connect(self, log: Logger) -> None:
        """The channel thread: it tells the owner KernelReady once the kernel answers (or why it did not)."""
        box = self._box
        assert box is not None and box.handle is not None and box.connection is not None
        self.channels = KernelChannels(
            connection=box.connection,
            owner=self._owner,
            router=self._runner.router,
            run_done=self._run_done,
            pid=box.handle.pid,
            ready_timeout_s=self._ready_timeout_s,
            heartbeat_interval_s=self._heartbeat_interval_s,
            heartbeat_timeout_s=self._heartbeat_timeout_s,
            heartbeat_idle_interval_s=self._heartbeat_idle_interval_s,
            log=log,
        )
        self.channels.start()

    def interrupt(self, log: Logger) -> None:
        """As the kernelspec asks: an interrupt_request (interrupt_mode message), or SIGINT to its process group."""
        launched, handle = self.launched, self.handle
        if launched is not None and launched.interrupt_mode == "message" and self.channels is not None:
            self.channels.submit(SendInterruptCommand())
        elif handle is not None:
            # Like jupyter_client's provisioner: SIGINT to the kernel's process group.
            handle.signal_group(signal.SIGINT)
            log.info("interrupt: SIGINT to the kernel's process group")

    def stop(self, grace_s: float, *, polite: bool, log: Logger) -> bool:
        """Stop the kernel within `grace_s`; False when there is no kernel process to stop. `polite`: it answered and
        runs no cell, so Jupyter's shutdown_request goes first (a cell would delay it, docs/protocol.md §1.7)."""
        handle = self.handle
        if handle is None or handle.poll() is not None:
            return False
        if polite and self.channels is not None:
            # Jupyter's polite way first (a shutdown_request), then SIGTERM to the group, then SIGKILL to the tree.
            self.channels.submit(RequestShutdownCommand())
            steps: tuple[StopStep, ...] = (StopStep((), grace_s * 0.5), StopStep((signal.SIGTERM,), grace_s * 0.4))
        else:
            steps = (StopStep((signal.SIGTERM,), grace_s * 0.9),)
        stop_process(handle, steps, log=log, what=f"the {self.kernel_name} kernel")
        return True

    def close(self) -> None:
        """Tear everything down (the owner's cleanup): no spawn slips past it, the kernel's tree is killed."""
        box = self._box
        handle: ProcessHandle | None = None
        if box is not None:
            with box.lock:
                box.closing = True
                handle = box.handle
        if self.channels is not None:
            self.channels.close()
            self.channels.join(timeout=JOIN_TIMEOUT_S)
        if handle is not None:
            handle.kill_tree()
            if self._watcher is not None:
                self._watcher.join(timeout=JOIN_TIMEOUT_S)
        if box is not None:
            shutil.rmtree(box.directory, ignore_errors=True)


__all__ = ["KernelProcess"]
