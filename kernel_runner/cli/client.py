"""`kernel-runner client ...`: a test and debugging tool that speaks the agent's side of the protocol from a shell.

It connects like an agent, so with a real agent connected it takes messages meant for the agent: the runner's
output socket is a PUSH socket, which deals messages round-robin to every connected reader (docs/protocol.md §2.1).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import zmq

from kernel_runner.cli.subcommands import parser_with_commands
from kernel_runner.client import AgentClient, ReplyTimeout, RunResult
from kernel_runner.config import connect_port

EXIT_FAILED = 1  # a service or model service answered `failed`, or a run ended without an exit code
EXIT_USAGE = 2  # argparse's own code for usage errors; also a bad JSON argument
EXIT_NO_ANSWER = 3  # nothing answered within --timeout
# Commands whose timeout was already a `status` that got no answer; for the others one more `status`, bounded by this
# and --timeout, tells a missing runner from a slow op.
STATUS_ALREADY_ASKED = frozenset({"status", "interrupt", "input", "shutdown-service"})
STATUS_PROBE_S = 5.0

DESCRIPTION = """\
A test and debugging tool: it speaks the agent's side of the protocol (docs/protocol.md §2-§3), for tests and
debugging. It connects like an agent, so with a real agent connected it takes messages meant for the agent (the
runner's output socket is a PUSH socket, which deals messages round-robin to every connected reader): do not use
it next to a live agent."""

EPILOG = """\
Options go before or after the command. Exit codes: 0 done; exec/build/clean/code: the run's exit code (outside
0-255: 255); batch: the first step that ended non-zero; 1 a service or model service answered `failed`, or a run
ended without an exit code (waiting for input); 2 usage error or a bad argument; 3 no answer within --timeout."""


class ClientUsageError(Exception):
    """A bad argument found after parsing (a JSON value): one line on stderr, exit 2, no traceback."""


def _add_connection_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """On the top-level parser with defaults, and on every command's parser without (SUPPRESS), so an option
    given after the command sets the value and one given before it is not reset to the default."""

    def default(value: object) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection (before or after the command)")
    group.add_argument("--host", default=default("127.0.0.1"), help="the runner's host (default 127.0.0.1)")
    group.add_argument("--port-in", type=connect_port, default=default(2000), help="its input (PULL) port (default 2000)")
    group.add_argument("--port-out", type=connect_port, default=default(2001),
                       help="its output (PUSH) port (default 2001)")
    group.add_argument("--timeout", type=float, default=default(30.0), help="seconds to wait for answers (default 30)")


def build_parser() -> argparse.ArgumentParser:
    parser, command = parser_with_commands(prog="kernel-runner client", description=DESCRIPTION, epilog=EPILOG,
                                           add_options=_add_connection_options)

    command("status", "print the status reply (with the supervision tree)")
    for kind in ("exec", "build", "clean"):
        command(kind, f"send one {kind} op and print its output").add_argument("text", nargs="?", default="")
    command("code", "run code in query mode").add_argument("text")
    p = command("batch", "clean, build and exec, as the agent's batch mode")
    p.add_argument("--clean", default="")
    p.add_argument("--build", default="")
    p.add_argument("--exec", dest="exec_", default="")
    p = command("start-service", "start a service port")
    p.add_argument("name")
    p.add_argument("--port", type=connect_port, required=True)
    p.add_argument("--protocol", default="http")
    p.add_argument("--options", default="{}", help="JSON options object")
    command("shutdown-service", "stop a service").add_argument("name")
    command("get-apps", "list the service definitions").add_argument("name", nargs="?", default="")
    command("complete", "ask for completions").add_argument("code")
    command("interrupt", "interrupt the running op")
    command("input", "answer a waiting-input").add_argument("text")
    command("start-model-service", "start a model service from a JSON model entry").add_argument("model_json")
    return parser


def main(argv: Sequence[str]) -> int:
    # `kernel-runner client status | head` should end quietly, as other Unix tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(list(argv))
    try:
        with AgentClient(host=args.host, port_in=args.port_in, port_out=args.port_out) as client:
            try:
                return _run(client, args)
            except ReplyTimeout as exc:
                if exc.heard_from_runner or _answers_status(client, args):
                    _error(f"{exc} (--timeout {args.timeout:g})")
                else:
                    _error(f"no runner answering on {client.endpoint} (is it running? --port-in/--port-out)")
                return EXIT_NO_ANSWER
    except ClientUsageError as exc:
        _error(f"error: {exc}")
        return EXIT_USAGE
    except zmq.ZMQError as exc:
        _error(f"error: cannot connect: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _answers_status(client: AgentClient, args: argparse.Namespace) -> bool:
    """After a timeout with nothing heard: is a runner there at all (a run that prints nothing is silent too)?"""
    if args.command in STATUS_ALREADY_ASKED:
        return False
    try:
        client.status(min(args.timeout, STATUS_PROBE_S))
    except ReplyTimeout:
        return False
    return True


def _error(line: str) -> None:
    print(f"kernel-runner client: {line}", file=sys.stderr)


def _run(client: AgentClient, args: argparse.Namespace) -> int:
    timeout = args.timeout
    match args.command:
        case "status":
            print(json.dumps(client.status(timeout), indent=2, default=str))
        case "exec" | "build" | "clean" | "code":
            result = client.run(args.command, args.text, timeout)
            _print_run(result)
            return run_exit_code(result)
        case "batch":
            codes = []
            for result in client.batch(clean=args.clean, build=args.build, exec=args.exec_, timeout=timeout):
                _print_run(result)
                codes.append(run_exit_code(result))
            return next((code for code in codes if code != 0), 0)
        case "start-service":
            options = _json_object(args.options, "--options")
            info = {"name": args.name, "port": args.port, "ports": [args.port], "protocol": args.protocol,
                    "options": options}
            return _print_result(client.start_service(info, timeout))
        case "start-model-service":
            return _print_result(client.start_model_service(_json_object(args.model_json, "the model entry"), timeout))
        case "get-apps":
            print(json.dumps(client.get_apps(args.name, timeout), indent=2))
        case "complete":
            print(json.dumps(client.complete(args.code, timeout=timeout)))
        # These three have no reply: a `status` after them tells whether a runner is there to get them.
        case "shutdown-service":
            client.shutdown_service(args.name)
            client.status(timeout)
        case "interrupt":
            client.interrupt()
            client.status(timeout)
        case "input":
            client.feed_input(args.text)
            client.status(timeout)
    return 0


def run_exit_code(result: RunResult) -> int:
    """The run's exit code as a process exit status: 0-255 as is, anything else 255, none (waiting for input) 1."""
    code = result.exit_code
    if not isinstance(code, int) or isinstance(code, bool):
        return EXIT_FAILED
    return code if 0 <= code <= 255 else 255


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ClientUsageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ClientUsageError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _print_result(reply: Any) -> int:
    print(json.dumps(reply))
    return EXIT_FAILED if isinstance(reply, dict) and reply.get("status") == "failed" else 0


def _print_run(result: RunResult) -> None:
    for record in result.records:
        if record.type == "stdout":
            sys.stdout.buffer.write(record.payload)
        elif record.type == "stderr":
            sys.stderr.buffer.write(record.payload)
        else:
            print(f"[{record.type}] {record.text}", file=sys.stderr)
    sys.stdout.flush()
    print(f"[{result.status}] exitCode={result.exit_code}", file=sys.stderr)
