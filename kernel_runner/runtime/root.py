"""The composition root: builds the actor tree for one RunnerConfig, and the handle that embeds or stops it.

This is the only module that knows every piece: it makes the child directory, the supervisor, the start-up gate and
the status board, and tells the supervisor the children runtime/tree.py declares (router, language runner, service
manager, then the language's query delegate). See docs/architecture.md §2 for the tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import pykka
from loguru import logger

from kernel_runner.actors.lang_runner.actor import BOOTSTRAP_STEP
from kernel_runner.actors.router.actor import BoundPorts
from kernel_runner.actors.service_manager.actor import INTRINSIC_STEP, ServicePlanner
from kernel_runner.config import RunnerConfig, resolve_ports
from kernel_runner.context import RunnerContext
from kernel_runner.control.server import ControlServer, ControlSocketError, start_control_server
from kernel_runner.generations import GenerationChoice, GenerationTracker, ModelReply, choose, mount_evidence
from kernel_runner.ids import LANG_CHILD, SERVICES_CHILD, ChildId
from kernel_runner.langs import get_lang, resolve_runtime
from kernel_runner.messages import LogRecord, Output, ReloadServiceDefinitions, ServiceDefinitionsReloaded
from kernel_runner.observability import debug_lines
from kernel_runner.observability.childlog import ChildLogBook, ChildLogFiles
from kernel_runner.observability.logs import add_agent_log_sink
from kernel_runner.procs.childenv import build_child_env
from kernel_runner.procs.oom import ProcessWatch
from kernel_runner.runtime import tree
from kernel_runner.runtime.service_planner import DefinitionPlanner, read_service_definitions
from kernel_runner.servicedefs import intrinsic_launchers
from kernel_runner.supervision.clock import REAL_CLOCK, Clock
from kernel_runner.supervision.directory import ChildDirectory
from kernel_runner.supervision.spec import (
    ChildInfo,
    ChildSpec,
    ChildState,
    ShutdownDone,
    ShutdownTree,
    StartChild,
    TreeSnapshot,
    WhichChildrenQuery,
)
from kernel_runner.supervision.timers import Ticker
from kernel_runner.supervisor import SupervisorActor
from kernel_runner.wire.answers import unknown_child_reject
from kernel_runner.wire.outbox import RouterLink
from kernel_runner.wire.status import StartupGate, StatusBoard

if TYPE_CHECKING:
    from kernel_runner.observability.metrics import RunnerMetrics

ASK_TIMEOUT_S = 2.0
BIND_WAIT_S = 10.0
# Of a stop's one deadline, the tree gets all but this much (at most a quarter): the supervisor, the ticker and
# what a forced stop left over are stopped in the rest.
STOP_RESERVE_S = 1.0

# A child a harness adds to the tree; it gets the runner's context to build its spec (rejects, router, env).
ChildPlan = Callable[[RunnerContext], ChildSpec]


class RunnerHandle:
    """A running actor tree: its bound ports, introspection, and an orderly bounded stop.

    A context manager: `with start(config) as handle:` stops the tree on exit (see also `run`).
    """

    def __init__(
        self,
        *,
        runner: RunnerContext,
        ports: BoundPorts,
        supervisor: pykka.ActorRef[SupervisorActor],
        board: StatusBoard,
        ticker: Ticker,
        log_book: ChildLogBook,
        process_watch: ProcessWatch,
        log_files: ChildLogFiles | None = None,
        metrics: RunnerMetrics | None = None,
        release_debug_lines: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        self.config = runner.config
        self.ports = ports
        self.supervisor = supervisor
        self.board = board
        # Each child's recent log lines and lifecycle events (what `kernel-runner ctl tail` shows).
        self.log_book = log_book
        self._log_files = log_files
        self._release_debug_lines = release_debug_lines
        self._ticker = ticker
        # The processes below the runner, for the report on the agent's `oom` event (docs/protocol.md §9.4).
        self.process_watch = process_watch
        self.escalated = threading.Event()
        self.escalation_reason: str | None = None
        # Called (from the escalating thread) right after `escalated` is set: the CLI wakes its main thread.
        self.escalation_listeners: list[Callable[[], None]] = []
        self.log_sink_id: int | None = None
        # With --metrics-port: the Prometheus metrics and their HTTP server (docs/operations.md §5).
        self.metrics = metrics
        # The server `kernel-runner ctl` talks to, when the config names a control socket (docs/operations.md §1).
        self.control: ControlServer | None = None
        # After stop(): the children the supervisor had to stop by force (they did not end within their grace).
        self.forced: list[ChildId] = []
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "ready" if self.runner.gate.is_open else "starting"
        return (f"RunnerHandle(lang={self.config.lang!r}, bind={self.config.bind!r}, ports={self.ports!r}, "
                f"state={state!r})")

    @property
    def router_link(self) -> RouterLink:
        """Where in-process producers (pumps, embedders) send output, with the runner's backpressure."""
        return self.runner.router

    @property
    def directory(self) -> ChildDirectory:
        return self.runner.directory

    def which_children(self, timeout: float = ASK_TIMEOUT_S) -> list[ChildInfo]:
        return cast(list[ChildInfo], self.supervisor.ask(WhichChildrenQuery(), timeout=timeout))

    def tell_child(self, child_id: ChildId, message: object) -> None:
        """Deliver to whichever incarnation of `child_id` is current (or its reject answer)."""
        self.runner.directory.tell(child_id, message)

    def __enter__(self) -> RunnerHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def wait_ready(self, timeout: float, *, kernel: bool = False) -> bool:
        """True once start-up is done: the steps `status` waits for (bootstrap.sh, the intrinsic services;
        docs/protocol.md §1.6). With `kernel=True` also the language's query delegate (the Jupyter kernel, the
        terminal) must be running, which `status` does not wait for; a language without one is ready without it."""
        deadline = time.monotonic() + timeout
        opened = threading.Event()
        self.runner.gate.when_open(opened.set)
        if not opened.wait(timeout):
            return False
        delegate = tree.delegate_child_id(self.config.lang)
        if not kernel or delegate is None:
            return True

        def delegate_running(snapshot: TreeSnapshot) -> bool | None:
            child = snapshot.get(delegate)
            return True if child is not None and child.state is ChildState.RUNNING else None

        return bool(self.board.wait_for(delegate_running, max(0.0, deadline - time.monotonic())))

    def reload_service_definitions(self, timeout: float | None = None) -> ServiceDefinitionsReloaded | None:
        """Reread the service-defs folder (what SIGHUP does, docs/protocol.md §1.3), once start-up is done.

        Running services keep running; new and changed definitions apply to the next start-service. With a
        `timeout`, waits for the summary (None if it did not come in time); without, returns at once.
        """
        done = threading.Event()
        box: list[ServiceDefinitionsReloaded] = []

        def reply(summary: ServiceDefinitionsReloaded) -> None:
            box.append(summary)
            done.set()

        request = ReloadServiceDefinitions(reply=reply)
        self.runner.gate.when_open(lambda: self.tell_child(SERVICES_CHILD, request))
        if timeout is None or not done.wait(timeout):
            return None
        return box[0]

    def escalate(self, reason: str) -> None:
        self.escalation_reason = reason
        self.escalated.set()
        for listener in list(self.escalation_listeners):
            listener()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop children in tier order, all of it within `timeout` (default: the configured shutdown deadline);
        True when everything stopped by itself in time."""
        if self._stopped:
            return True
        self._stopped = True
        if self.log_sink_id is not None:
            logger.remove(self.log_sink_id)
        metrics_closing = self.metrics.close() if self.metrics is not None else None  # in parallel with the rest
        budget_s = timeout if timeout is not None else self.config.shutdown_deadline_s
        deadline = time.monotonic() + budget_s
        reserve_s = min(STOP_RESERVE_S, budget_s / 4)

        def remaining(keep_s: float = 0.0) -> float:
            return max(0.01, deadline - keep_s - time.monotonic())

        self.process_watch.stop(timeout=min(1.0, remaining(reserve_s)))  # a look takes milliseconds; a report waits
        clean = True
        try:
            asked = self.supervisor.ask(ShutdownTree(grace_s=budget_s - reserve_s), timeout=remaining(reserve_s))
            done = cast(ShutdownDone, asked)
            # The supervisor forces what is left at its deadline; waiting a little past it covers a busy machine.
            clean = done.wait(timeout=remaining(reserve_s / 2)) and not done.forced
            self.forced = list(done.forced)
        except (pykka.ActorDeadError, pykka.Timeout) as exc:
            logger.bind(child="runner").error("the supervisor did not take the shutdown request: {!r}", exc)
            clean = False
        if not clean:
            for ref in self.runner.directory.live_refs():  # last resort: each child still cleans up after itself
                ref.stop(block=False)
        self.runner.router.closed.set()
        try:
            self.supervisor.stop(block=True, timeout=remaining())
        except (pykka.Timeout, pykka.ActorDeadError):
            clean = False
        self._ticker.stop(timeout=remaining())
        if metrics_closing is not None:
            metrics_closing.join(timeout=remaining())
        if self.control is not None:  # after the tree: `ctl status` and `ctl tail -f` still answer during the stop
            self.control.stop(timeout=min(1.0, remaining()))
        self.log_book.uninstall()
        if self._log_files is not None:
            self._log_files.uninstall()
        if self._release_debug_lines is not None:
            self._release_debug_lines()
        if self.config.temp_root is not None:  # made by RunnerConfig.for_embedding for this runner alone
            shutil.rmtree(self.config.temp_root, ignore_errors=True)
        return clean


def detect_generation(config: RunnerConfig) -> GenerationChoice:
    """The agent generation at start-up: the setting, else what the agent mounted (docs/protocol.md §12.1)."""
    evidence = mount_evidence(kernel_dir=config.dropbear_dir, config_dir=config.config_dir)
    return choose(config.agent_generation, evidence)


def announce_generation(choice: GenerationChoice) -> None:
    """One line whenever the choice is made or changes: ops see which agent the runner serves, and why."""
    row = choice.row
    logger.bind(child="runner").info(
        "serving Backend.AI agents {} ({}): model-service-result {}, service-result within {:g}s; {}",
        row.releases, "pinned" if choice.pinned else "detected", "after the health check"
        if row.model_reply is ModelReply.VERDICT else "once the server runs", row.service_reply_within_s, choice.reason,
    )


def start(
    config: RunnerConfig,
    *,
    services: Callable[[RunnerContext], ServicePlanner] | None = None,
    extra_children: Sequence[ChildPlan] = (),
    clock: Clock = REAL_CLOCK,
    file_ports: dict[str, int] | None = None,
) -> RunnerHandle:
    """Start the whole tree in this process (the CLI and test harnesses both come through here).

    `services` makes the service planner instead of the service-definition catalog (tests bring a table);
    `extra_children` adds children, and one with the id of a default child (a stand-in "kernel") replaces it.
    """
    config = resolve_ports(config, file_ports or {})
    assert config.port_in is not None and config.port_out is not None
    child_env, runner_env = build_environments(config)
    link = RouterLink(config.output_credits)
    gate = StartupGate({BOOTSTRAP_STEP: LANG_CHILD})
    directory = ChildDirectory()
    generations = GenerationTracker(detect_generation(config), on_change=announce_generation)
    announce_generation(generations.choice)
    runner = RunnerContext(config=config, router=link, env=child_env, runner_env=runner_env, gate=gate,
                           directory=directory, generations=generations)
    directory.set_unknown(unknown_child_reject(directory))
    start_intrinsics = services is None and config.start_intrinsic_services
    planner = build_service_directory(runner) if services is None else services(runner)
    if start_intrinsics:
        gate.add(INTRINSIC_STEP, SERVICES_CHILD)
    board = StatusBoard(gate)
    # Installed before the first child starts, so `ctl tail` has each child's whole story (docs/operations.md §3).
    log_level = "DEBUG" if config.debug else "INFO"
    # The runner makes DEBUG records only when asked (docs/operations.md §6): a host that embeds it hears no more.
    release_debug_lines = debug_lines.hold() if config.debug else None
    log_book = ChildLogBook().install(level=log_level)
    log_files: ChildLogFiles | None = None
    if config.child_log_dir is not None:
        try:
            log_files = ChildLogFiles(config.child_log_dir, rotation=config.child_log_rotation,
                                      retention=config.child_log_retention, level=log_level).install()
        except (ValueError, OSError) as exc:
            log_book.uninstall()
            if release_debug_lines is not None:
                release_debug_lines()
            raise RunnerStartError(f"per-child log files in {config.child_log_dir}: {exc}") from exc
    metrics: RunnerMetrics | None = None
    if config.metrics_port is not None:  # opt-in: only then is prometheus_client imported (docs/operations.md §5)
        from kernel_runner.observability.metrics import RunnerMetrics

        # Counting before the first child starts, so no exit is missed; served once the router has bound.
        metrics = RunnerMetrics(snapshot=lambda: board.snapshot, ready=lambda: gate.is_open, clock=clock,
                                lang=config.lang).install()
    handle_box: list[RunnerHandle] = []
    # Without timers nothing is restarted or stopped on time: a ticker that gives up takes the runner down.
    ticker = Ticker(clock, on_give_up=lambda reason: handle_box[0].escalate(reason) if handle_box else None)
    process_watch = ProcessWatch(os.getpid()).start()
    supervisor = SupervisorActor.start(
        directory=directory,
        clock=clock,
        ticker=ticker,
        on_tree_change=board.publish,
        on_child_added=log_files.open_for if log_files is not None else None,
        on_escalate=lambda reason: handle_box[0].escalate(reason) if handle_box else None,
    )
    ports = BoundPorts(config.port_in, config.port_out)
    specs = tree.first_children(runner, ports=ports, board=board, started_at=clock.monotonic(),
                                on_event=process_watch.tell, metrics=metrics, planner=planner,
                                start_intrinsics=start_intrinsics)
    extra = [plan(runner) for plan in extra_children]
    replaced = {spec.child_id for spec in extra}
    delegate = tree.delegate_child_id(config.lang)
    if delegate is not None and delegate not in replaced:
        directory.register(delegate, None)  # a `code` that comes early waits for the delegate (§3.3)
    specs += extra
    for spec in specs:  # held messages wait for these ids from now on, even before the supervisor starts them
        directory.register(spec.child_id, spec.reject)
    for spec in specs:
        supervisor.tell(StartChild(spec=spec))
    handle = RunnerHandle(runner=runner, ports=ports, supervisor=supervisor, board=board, ticker=ticker,
                          log_book=log_book, process_watch=process_watch, log_files=log_files, metrics=metrics,
                          release_debug_lines=release_debug_lines)
    handle_box.append(handle)
    if config.forward_logs != "none":
        handle.log_sink_id = add_agent_log_sink(
            _log_sender(link, config.forward_logs), prefix=get_lang(config.lang).log_prefix
        )
    # The router binds in its on_start; wait (bounded) so the handle reports the real ports, or fails loudly.
    if not ports.bound.wait(timeout=BIND_WAIT_S) or ports.error is not None:
        handle.stop(timeout=2.0)
        raise RunnerStartError(ports.error or f"the router did not bind its sockets within {BIND_WAIT_S:g} s")
    if metrics is not None and config.metrics_port is not None:
        try:
            metrics.serve(config.metrics_port, config.metrics_bind)
        except OSError as exc:  # the port is taken, or the address is not this machine's
            handle.stop(timeout=2.0)
            raise RunnerStartError(f"cannot serve metrics on {config.metrics_bind}:{config.metrics_port} "
                                   f"(--metrics-port, --metrics-bind): {exc.strerror or exc}") from None
    try:
        handle.control = start_control_server(handle, delegate=delegate, clock=clock)
    except ControlSocketError as exc:
        handle.stop(timeout=2.0)
        raise RunnerStartError(str(exc)) from None
    if delegate is not None and delegate not in replaced:
        threading.Thread(target=_start_delegate, args=(runner, delegate, supervisor), name="delegate-start",
                         daemon=True).start()
    return handle


@contextlib.contextmanager
def run(config: RunnerConfig, *, stop_timeout: float | None = None, **start_kwargs: Any) -> Iterator[RunnerHandle]:
    """`with kernel_runner.run(config) as handle:` starts the tree and stops it on the way out, within
    `stop_timeout` (default: the configured shutdown deadline), also when the block raises."""
    handle = start(config, **start_kwargs)
    try:
        yield handle
    finally:
        handle.stop(timeout=stop_timeout)


def _start_delegate(runner: RunnerContext, child_id: ChildId, supervisor: pykka.ActorRef[SupervisorActor]) -> None:
    """Build the query delegate's spec and start it, off the start path: the kernelspec lookup imports
    jupyter_client (a few hundred ms), and the first `status` does not wait for the kernel (docs/protocol.md §1.6)."""
    try:
        specs = tree.delegate_children(runner)
    except Exception as exc:  # noqa: BLE001 - a bug here must not leave `code` requests held for ever
        logger.bind(child=child_id).exception("cannot plan the query delegate")
        runner.directory.close(child_id, f"the query delegate could not be planned: {exc!r}")
        return
    if not specs:
        runner.directory.close(child_id, "this runner has no query delegate")
    for spec in specs:
        try:
            supervisor.tell(StartChild(spec=spec))
        except pykka.ActorDeadError:
            return  # the runner stopped meanwhile


def build_environments(config: RunnerConfig) -> tuple[dict[str, str], dict[str, str]]:
    """The child env (docs/protocol.md §1.4) and the runner env (os.environ + environ.txt), computed once."""
    log = logger.bind(child="runner")
    built = build_child_env(
        base_environ=os.environ, lang=get_lang(config.lang), environ_file=config.environ_file, home=str(config.work_dir)
    )
    for problem in built.problems:
        log.warning("{}", problem)
    # Upstream writes environ.txt into its own os.environ; we keep our process environment untouched and hand the
    # combination to the children that upstream gives os.environ (the Jupyter kernel, the terminal shell).
    runner_env = {**os.environ, **built.runner_env_additions}
    return dict(built.env), runner_env


def _log_sender(link: RouterLink, mode: str) -> Callable[[str], None]:
    """`log` is the agent's console type for runner lines; `stderr` is upstream's (mixed into user output)."""
    if mode == "stderr":
        return lambda text: link.tell(Output(stream="stderr", data=text.encode("utf-8", errors="replace")))
    return lambda text: link.tell(LogRecord(text=text))


def build_service_directory(runner: RunnerContext) -> DefinitionPlanner:
    """Load the service definitions once; a broken file is logged with its JSON path and skipped (§10.2 #11)."""
    config = runner.config
    log = logger.bind(child="services")
    runtime_path = resolve_runtime(get_lang(config.lang), config.runtime_path)
    loaded = read_service_definitions(config.service_defs_dir, runtime_path)
    for problem in loaded.problems:
        log.error("service definition skipped: {}", problem)
    intrinsics = intrinsic_launchers(config)
    for warning in intrinsics.warnings:
        debug_lines.log_at(log, "WARNING" if config.start_intrinsic_services else "DEBUG", "{}", warning)
    return DefinitionPlanner(runner=runner, catalog=loaded.catalog, intrinsics=intrinsics, runtime_path=runtime_path)


class RunnerStartError(RuntimeError):
    """The tree could not come up (for example the agent ports are taken)."""


__all__ = ["ChildPlan", "RunnerHandle", "RunnerStartError", "run", "start"]
