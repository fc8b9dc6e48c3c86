"""Command line: argv → RunnerConfig, logging, start the tree, wait for a signal, stop within a bound, exit code.

The process's own life is here: the stop signals, the runner as its children's subreaper, and the shutdown
deadline, which is hard (docs/architecture.md §3.5 and §6).
"""

from __future__ import annotations

import argparse
import os
import select
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import pykka
from loguru import logger

from kernel_runner.config import ConfigError, RunnerConfig, port_number, read_intrinsic_ports
from kernel_runner.control.protocol import configured_socket_path
from kernel_runner.generations import AUTO, SETTING_ENV, check_setting
from kernel_runner.langs import REGISTRY, get_lang, resolve_runtime
from kernel_runner.observability.logs import configure_logging, install_thread_dump_signal
from kernel_runner.procs.reaper import OrphanReaper, become_subreaper, kill_descendants
from kernel_runner.procs.wakeup import WakeupPipe

if TYPE_CHECKING:
    from loguru import Logger

    from kernel_runner.runtime.root import RunnerHandle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernel-runner",
        description="Runs user code and services inside a compute container for a Backend.AI-compatible agent.",
        epilog="`kernel-runner ctl --help`: watch and steer a running runner (docs/operations.md §1). "
               "`kernel-runner client --help`: a test and debugging tool that speaks the agent's side of the protocol.",
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="debug-level logs")
    parser.add_argument("lang", metavar="LANG", help="runtime type, one of: " + ", ".join(REGISTRY))
    parser.add_argument("runtime_path", metavar="RUNTIME_PATH", nargs="?", default=None)
    parser.add_argument("--config-dir", type=Path, default=Path("/home/config"))
    parser.add_argument("--work-dir", type=Path, default=Path("/home/work"), help="the user's folder; must exist")
    parser.add_argument("--service-defs-dir", type=Path, default=Path("/etc/backend.ai/service-defs"))
    parser.add_argument("--port-in", type=port_number, default=None,
                        help="PULL port, 0-65535, 0 any free one (default: intrinsic-ports.json or 2000)")
    parser.add_argument("--port-out", type=port_number, default=None,
                        help="PUSH port, 0-65535, 0 any free one (default: intrinsic-ports.json or 2001)")
    parser.add_argument("--bind", default="*", help="address to bind the agent sockets on (default: all)")
    parser.add_argument("--log-json", action="store_true",
                        help="one flat JSON object per line on stderr instead of human lines; nothing on stdout")
    parser.add_argument("--child-log-dir", type=Path, default=None,
                        help="also write each child's log lines to <dir>/<child>.log, rotated (default: no files)")
    parser.add_argument("--child-log-rotation", default="10 MB",
                        help="when a child's log file is rotated: a size ('10 MB') or a period ('1 day')")
    parser.add_argument(
        "--forward-logs",
        choices=("none", "log", "stderr"),
        default="none",
        help="also send runner logs to the agent (upstream used stderr; default none)",
    )
    parser.add_argument("--user-input-socket", type=Path, default=Path("/tmp/bai-user-input.sock"))
    parser.add_argument("--control-socket", type=Path, default=None,
                        help="the control socket for `kernel-runner ctl` (default: $KERNEL_RUNNER_CONTROL_SOCKET, else "
                             "$XDG_RUNTIME_DIR/kernel-runner/control.sock or /tmp/kernel-runner-<uid>/control.sock, "
                             "or control-<pid>.sock beside it when another runner answers there)")
    parser.add_argument("--no-intrinsic-services", action="store_true", help="do not start sshd/ttyd at start-up")
    parser.add_argument("--no-intrinsic-probes", action="store_true",
                        help="do not probe sshd/ttyd's port (by default: restarted when it stops accepting connections)")
    parser.add_argument("--shutdown-deadline", type=float, default=15.0, help="seconds for the orderly stop")
    parser.add_argument("--service-launch-timeout", type=float, default=None,
                        help="seconds by which `service-result` is sent (default: before the agent gives up, 8 s or "
                             "30 s by its generation); a service slower than that keeps starting")
    parser.add_argument("--agent-generation", type=_generation_setting,
                        default=os.environ.get(SETTING_ENV, AUTO),
                        help=f"the Backend.AI agent release this runner serves: `auto` (the default: decided from "
                             f"what the runner sees), a release such as 23.09.1, or ${SETTING_ENV} "
                             "(docs/protocol.md §12)")
    parser.add_argument("--term-in-port", type=port_number, default=2002, help="git runner: terminal input (SUB) port")
    parser.add_argument("--term-out-port", type=port_number, default=2003, help="git runner: terminal output (PUB) port")
    parser.add_argument("--dropbear-dir", type=Path, default=Path("/opt/kernel"),
                        help="where dropbear, dropbearkey, dropbearconvert and tmux live")
    parser.add_argument("--ttyd-path", type=Path, default=None,
                        help="the ttyd binary (default: /opt/kernel/ttyd, else /opt/backend.ai/bin/ttyd)")
    parser.add_argument("--metrics-port", type=port_number, default=None,
                        help="serve Prometheus metrics over HTTP on this port, 0 any free one (default: off)")
    parser.add_argument("--metrics-bind", default="127.0.0.1",
                        help="address the metrics server binds (default: 127.0.0.1, this machine only)")
    return parser


def _generation_setting(text: str) -> str:
    try:
        return check_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> RunnerConfig:
    return RunnerConfig(
        lang=args.lang,
        runtime_path=args.runtime_path,
        debug=args.debug,
        config_dir=args.config_dir,
        work_dir=args.work_dir,
        service_defs_dir=args.service_defs_dir,
        port_in=args.port_in,
        port_out=args.port_out,
        bind=args.bind,
        log_json=args.log_json,
        child_log_dir=args.child_log_dir,
        child_log_rotation=args.child_log_rotation,
        forward_logs=args.forward_logs,
        user_input_socket=args.user_input_socket,
        control_socket=args.control_socket or configured_socket_path(),
        start_intrinsic_services=not args.no_intrinsic_services,
        intrinsic_probes=not args.no_intrinsic_probes,
        shutdown_deadline_s=args.shutdown_deadline,
        service_launch_timeout_s=args.service_launch_timeout,
        agent_generation=args.agent_generation,
        term_in_port=args.term_in_port,
        term_out_port=args.term_out_port,
        dropbear_dir=args.dropbear_dir,
        ttyd_path=args.ttyd_path,
        metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
    )


def config_problems(config: RunnerConfig) -> tuple[list[str], list[str]]:
    """What is wrong with the configuration, as (errors, warnings), each one line (docs/protocol.md §1.3 step 3).

    An error is something the runner cannot serve without; a warning leaves it serving what it can (`status` and
    services, say), told once at start-up rather than through a failing op later.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if not config.work_dir.is_dir():
        what = "is not a folder" if config.work_dir.exists() else "does not exist"
        errors.append(f"the work dir {config.work_dir} {what} (--work-dir): ops, services and the kernel run in it")
    runtime = resolve_runtime(get_lang(config.lang), config.runtime_path)
    # A bare name (`rustc`, `ghc`) is looked up on the children's PATH when an op runs; only a path is checked here.
    if runtime is not None and "/" in runtime and not Path(runtime).exists():
        found = shutil.which(Path(runtime).name)
        hint = f"; `{Path(runtime).name}` on PATH is {found}" if found else ""
        warnings.append(f"the {config.lang} runtime {runtime} does not exist: ops that run it will fail "
                        f"(give RUNTIME_PATH{hint})")
    if not config.service_defs_dir.is_dir():
        warnings.append(f"the service-defs dir {config.service_defs_dir} does not exist (--service-defs-dir): "
                        "no service definitions are loaded")
    return errors, warnings


TITLE_PREFIX = "kernel-runner: "


def process_title(args: Sequence[str]) -> str:
    """What `ps` shows for the runner: its arguments, each `python` in them written `Python` (docs/protocol.md §9.3).

    User code that runs `pkill -f python` must not take the runner down with its own processes: that match is
    case-sensitive, so it no longer finds the runner, and the title still reads as the command line it was given
    (the command line itself, interpreter included, is in `kernel-runner ctl status`).
    """
    return TITLE_PREFIX + shlex.join(args).replace("python", "Python")


def set_process_title(args: Sequence[str]) -> None:
    """The command line in /proc/<pid>/cmdline and the process name in /proc/<pid>/comm (what `pkill NAME` reads)."""
    try:
        import setproctitle

        setproctitle.setproctitle(process_title(args))
    except ImportError:  # pragma: no cover - setproctitle is a declared dependency
        pass


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
RELOAD_SIGNAL = signal.SIGHUP  # rereads the service definitions (supervisord's `reread`; docs/protocol.md §1.3)
# Of the shutdown deadline, the actor tree gets all but this much (at most a quarter of it): killing what is left
# below us, the leftover actors and the last log lines fit in the rest.
FINAL_RESERVE_S = 2.0
# Past the deadline a watchdog thread logs and exits; this much later SIGALRM ends the process from the kernel's
# side, for the case where no Python thread can run any more (a hang in interpreter teardown).
ALARM_AFTER_S = 1.0
EXIT_STOP_OVERRAN = 1


class StopSignals:
    """SIGINT, SIGTERM and SIGQUIT each ask for the orderly stop; SIGHUP asks for a reload of the service
    definitions. The main thread logs and acts on them.

    The handlers only record (the wakeup fd wakes the main thread): they run between two bytecodes of whatever the
    main thread is doing, maybe inside a log call, so they must not log themselves.
    """

    def __init__(self) -> None:
        self.seen: list[signal.Signals] = []
        self.reloads: list[signal.Signals] = []

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(RELOAD_SIGNAL, self._on_reload)

    def take_reloads(self) -> int:
        """How many reloads were asked for since the last call (several SIGHUPs in a row make one reload)."""
        count = len(self.reloads)
        del self.reloads[:count]  # one operation: a SIGHUP arriving meanwhile stays for the next call
        return count

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.seen.append(signal.Signals(signum))

    def _on_reload(self, signum: int, _frame: FrameType | None) -> None:
        self.reloads.append(signal.Signals(signum))


class HardDeadline:
    """The stop's deadline is hard: once it passes, whatever is still alive is logged, everything below us is
    killed and the process exits, whatever hangs (a non-daemon thread stuck in a handler would otherwise hold
    interpreter shutdown, and the ports, for ever)."""

    def __init__(self, deadline_s: float, *, log: Logger) -> None:
        self._deadline_s = deadline_s
        self._log = log
        self._thread = threading.Thread(target=self._run, name="HardDeadline", daemon=True)

    def arm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self._deadline_s + ALARM_AFTER_S)  # SIGALRM's default: terminate
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self._deadline_s)  # this thread only marks the time: nothing ever wakes it earlier
        self._log.error("the stop did not finish within {:g}s; still alive: {}; exiting now", self._deadline_s,
                        describe_alive() or "nothing we know of")
        kill_descendants()
        _exit_now(EXIT_STOP_OVERRAN)


def describe_alive() -> str:
    """The actors and the non-daemon threads still running: what would keep the interpreter from exiting."""
    actors = [ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all()]
    threads = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    return "; ".join(part for part in (
        f"actors {', '.join(actors)}" if actors else "",
        f"threads {', '.join(threads)}" if threads else "",
    ) if part)


def stop_leftover_actors(timeout_s: float) -> None:
    """Actors a forced stop left behind (their threads are not daemons): ask each to stop, wait within one bound."""
    futures = [ref.stop(block=False) for ref in pykka.ActorRegistry.get_all()]
    deadline = time.monotonic() + timeout_s
    for future in futures:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
        except (pykka.Timeout, pykka.ActorDeadError):
            pass  # a stuck actor is reported by the caller; a dead one is what we wanted


def _exit_now(code: int) -> NoReturn:
    """Leave without interpreter teardown (it would join the stuck threads); the logs are written first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The runner itself; `kernel-runner ctl` and `kernel-runner client` are picked earlier, in kernel_runner.cli.entry."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    set_process_title(argv)  # first: from here on user code may run (bootstrap.sh), and the title is what it sees
    configure_logging(debug=args.debug, json_lines=args.log_json)
    log = logger.bind(child="runner")
    if args.lang not in REGISTRY:
        print(f"kernel-runner: unknown LANG {args.lang!r}; valid: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    config = config_from_args(args)
    errors, warnings = config_problems(config)
    for line in warnings:
        log.warning("{}", line)
    for line in errors:
        log.error("cannot start: {}", line)
    if errors:
        return 1
    try:
        file_ports = read_intrinsic_ports(config.intrinsic_ports_file)
    except ConfigError as exc:
        log.error("{}; using the default ports", exc)
        file_ports = {}
    install_thread_dump_signal()
    stop_signals = StopSignals()
    stop_signals.install()
    wakeups = WakeupPipe()
    signal.set_wakeup_fd(wakeups.write_fd, warn_on_full_buffer=False)  # every handled signal wakes the main thread
    # Orphans of our children (a user's daemon) stay ours: reaped when they end, killed at the stop (§6).
    reaper = OrphanReaper() if become_subreaper() or os.getpid() == 1 else None
    if reaper is not None:
        reaper.install()
    from kernel_runner.runtime.root import RunnerStartError, start  # not for `kernel-runner client` (architecture §2.1)

    try:
        handle = start(config, file_ports=file_ports)
    except RunnerStartError as exc:
        log.error("cannot start: {}", exc)
        kill_descendants()
        return 1
    handle.escalation_listeners.append(wakeups.wake)
    ports = handle.ports
    if not config.log_json:  # with --log-json, stdout stays empty: only JSON lines, on stderr (operations §2)
        # Upstream prints these two lines to stdout once its sockets are bound (docs/protocol.md §1.6); ops scripts
        # grep for them. The command prints them, not the runtime: embedded, the runner writes nothing to stdout.
        for port in (ports.port_in, ports.port_out):
            print(f"binding to tcp://{config.bind}:{port}", flush=True)
    log.info("kernel-runner {} serving on :{} / :{} (pid {})", config.lang, ports.port_in, ports.port_out, os.getpid())
    # The main thread sleeps in poll() until a signal or the escalation writes the pipe (docs/architecture.md §7).
    poller = select.poll()
    poller.register(wakeups.fd, select.POLLIN)
    while not stop_signals.seen and not handle.escalated.is_set():
        if stop_signals.take_reloads():  # also a SIGHUP that came during start(): the reload waits for start-up
            log.info("received SIGHUP; rereading the service definitions in {}", config.service_defs_dir)
            handle.reload_service_definitions()
        poller.poll()
        wakeups.drain()
        if reaper is not None:
            reaper.reap_adopted()
    return stop(handle, config.shutdown_deadline_s, stop_signals, reaper, log)


def stop(handle: RunnerHandle, deadline_s: float, stop_signals: StopSignals, reaper: OrphanReaper | None,
         log: Logger) -> NoReturn:
    """The orderly stop, all of it within `deadline_s` of the signal: the tree, what is left below us, the rest.

    It ends the process itself: once the tree and everything below us are gone, interpreter teardown (collecting
    every module and object, with 100 services a few hundred ms on a busy machine) would only delay the exit the
    agent waits for. The logs are unbuffered sinks (flushed first), and the agent sockets closed with the router.
    """
    started = time.monotonic()
    HardDeadline(deadline_s, log=log).arm()
    if stop_signals.seen:
        log.info("received {}; shutting down within {:g}s", stop_signals.seen[0].name, deadline_s)
    clean = handle.stop(timeout=deadline_s - min(FINAL_RESERVE_S, deadline_s / 4))
    killed = kill_descendants()
    if killed:
        log.warning("killed {} process(es) left behind: {}", len(killed), killed)
    if reaper is not None:
        reaper.reap_adopted()  # the orphans just killed: no zombie is handed on to whoever adopts them next
    stop_leftover_actors(timeout_s=max(0.0, deadline_s - (time.monotonic() - started)) / 2)
    later = stop_signals.seen[1:]
    if later:  # a second signal during the stop is noted, not obeyed: the stop is bounded anyway
        log.info("also received {} during the stop", ", ".join(sig.name for sig in later))
    code = 0
    if handle.escalated.is_set() and not stop_signals.seen:
        log.error("exiting after escalation: {}", handle.escalation_reason)
        code = 1
    alive = describe_alive()
    outcome = "clean" if clean else f"forced: {', '.join(handle.forced) or 'the tree did not stop in time'}"
    log.info("stopped ({}) in {:.2f}s", outcome, time.monotonic() - started)
    if alive:
        log.error("still alive after the stop: {}; exiting without waiting for them", alive)
    _exit_now(code)
