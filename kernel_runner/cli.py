"""Command line: argv → RunnerConfig, logging, start the tree, wait for a signal, stop within a bound, exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psutil
from loguru import logger

from kernel_runner.config import ConfigError, RunnerConfig, read_intrinsic_ports
from kernel_runner.langs import REGISTRY
from kernel_runner.logs import configure_logging, install_thread_dump_signal
from kernel_runner.runtime import RunnerStartError, start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernel-runner",
        description="Runs user code and services inside a compute container for a Backend.AI-compatible agent.",
        epilog="`kernel-runner client --help` talks to a running runner.",
    )
    parser.add_argument("--debug", action="store_true", help="debug-level logs")
    parser.add_argument("lang", metavar="LANG", help="runtime type, one of: " + ", ".join(REGISTRY))
    parser.add_argument("runtime_path", metavar="RUNTIME_PATH", nargs="?", default=None)
    parser.add_argument("--config-dir", type=Path, default=Path("/home/config"))
    parser.add_argument("--work-dir", type=Path, default=Path("/home/work"))
    parser.add_argument("--service-defs-dir", type=Path, default=Path("/etc/backend.ai/service-defs"))
    parser.add_argument("--port-in", type=int, default=None, help="PULL port (default: intrinsic-ports.json or 2000)")
    parser.add_argument("--port-out", type=int, default=None, help="PUSH port (default: intrinsic-ports.json or 2001)")
    parser.add_argument("--bind", default="*", help="address to bind the agent sockets on (default: all)")
    parser.add_argument("--log-json", action="store_true", help="JSON lines on stderr instead of human lines")
    parser.add_argument(
        "--forward-logs",
        choices=("none", "log", "stderr"),
        default="none",
        help="also send runner logs to the agent (upstream used stderr; default none)",
    )
    parser.add_argument("--user-input-socket", type=Path, default=Path("/tmp/bai-user-input.sock"))
    parser.add_argument("--no-intrinsic-services", action="store_true", help="do not start sshd/ttyd at start-up")
    parser.add_argument("--shutdown-deadline", type=float, default=15.0, help="seconds for the orderly stop")
    parser.add_argument("--service-launch-timeout", type=float, default=8.0,
                        help="seconds a service may take to open its port (the agent waits 10 s for the reply)")
    parser.add_argument("--term-in-port", type=int, default=2002, help="git runner: terminal input (SUB) port")
    parser.add_argument("--term-out-port", type=int, default=2003, help="git runner: terminal output (PUB) port")
    parser.add_argument("--dropbear-dir", type=Path, default=Path("/opt/kernel"),
                        help="where dropbear, dropbearkey, dropbearconvert and tmux live")
    parser.add_argument("--ttyd-path", type=Path, default=Path("/opt/kernel/ttyd"), help="the ttyd binary")
    return parser


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
        forward_logs=args.forward_logs,
        user_input_socket=args.user_input_socket,
        start_intrinsic_services=not args.no_intrinsic_services,
        shutdown_deadline_s=args.shutdown_deadline,
        service_launch_timeout_s=args.service_launch_timeout,
        term_in_port=args.term_in_port,
        term_out_port=args.term_out_port,
        dropbear_dir=args.dropbear_dir,
        ttyd_path=args.ttyd_path,
    )


def set_process_title(lang: str) -> None:
    """`ps` shows `kernel-runner: <lang>` so ops can find the runner among user processes (docs/protocol.md §9.3)."""
    try:
        import setproctitle

        setproctitle.setproctitle(f"kernel-runner: {lang}")
    except ImportError:  # pragma: no cover - setproctitle is a declared dependency
        pass


def reap_leftovers() -> list[int]:
    """Last safety net: anything still below us after the orderly stop is killed and named in the log."""
    leftovers = psutil.Process().children(recursive=True)
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return [proc.pid for proc in leftovers]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "client":
        from kernel_runner.client_cli import main as client_main

        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging(debug=args.debug, json_lines=args.log_json)
    log = logger.bind(child="runner")
    if args.lang not in REGISTRY:
        print(f"kernel-runner: unknown LANG {args.lang!r}; valid: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    config = config_from_args(args)
    try:
        file_ports = read_intrinsic_ports(config.intrinsic_ports_file)
    except ConfigError as exc:
        log.error("{}; using the default ports", exc)
        file_ports = {}
    set_process_title(config.lang)
    install_thread_dump_signal()

    wake = threading.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals_seen.append(signum)
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        handle = start(config, file_ports=file_ports)
    except RunnerStartError as exc:
        log.error("cannot start: {}", exc)
        return 1
    ports = handle.ports
    log.info("kernel-runner {} serving on :{} / :{} (pid {})", config.lang, ports.port_in, ports.port_out, os.getpid())
    # The main thread only waits on an Event with a timeout, so signals stay live (docs/architecture.md §7).
    while not wake.wait(timeout=0.5) and not handle.escalated.is_set():
        pass
    if signals_seen:
        log.info("received {}; shutting down", signal.Signals(signals_seen[0]).name)
    # A second signal during shutdown is noted, not fatal: the stop is bounded anyway.
    clean = handle.stop()
    left = reap_leftovers()
    if left:
        log.warning("killed {} process(es) left behind: {}", len(left), left)
    log.info("stopped ({})", "clean" if clean else "deadline passed")
    if handle.escalated.is_set() and not signals_seen:
        log.error("exiting after escalation: {}", handle.escalation_reason)
        return 1
    return 0
