"""`kernel-runner client ...`: drive a running runner from a shell, as the agent would."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from kernel_runner.client import AgentClient, ReplyTimeout, RunResult


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernel-runner client", description="Talk to a running kernel-runner.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-in", type=int, default=2000)
    parser.add_argument("--port-out", type=int, default=2001)
    parser.add_argument("--timeout", type=float, default=30.0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="print the status reply (with the supervision tree)")
    for kind in ("exec", "build", "clean"):
        p = sub.add_parser(kind, help=f"send one {kind} op and print its output")
        p.add_argument("text", nargs="?", default="")
    p = sub.add_parser("code", help="run code in query mode")
    p.add_argument("text")
    p = sub.add_parser("batch", help="clean, build and exec, as the agent's batch mode")
    p.add_argument("--clean", default="")
    p.add_argument("--build", default="")
    p.add_argument("--exec", dest="exec_", default="")
    p = sub.add_parser("start-service", help="start a service port")
    p.add_argument("name")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", default="http")
    p.add_argument("--options", default="{}", help="JSON options object")
    p = sub.add_parser("shutdown-service", help="stop a service")
    p.add_argument("name")
    p = sub.add_parser("get-apps", help="list the service definitions")
    p.add_argument("name", nargs="?", default="")
    p = sub.add_parser("complete", help="ask for completions")
    p.add_argument("code")
    sub.add_parser("interrupt", help="interrupt the running op")
    p = sub.add_parser("input", help="answer a waiting-input")
    p.add_argument("text")
    p = sub.add_parser("start-model-service", help="start a model service from a JSON model entry")
    p.add_argument("model_json")
    return parser


def main(argv: Sequence[str]) -> int:
    # `kernel-runner client status | head` should end quietly, as other Unix tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(list(argv))
    with AgentClient(host=args.host, port_in=args.port_in, port_out=args.port_out) as client:
        try:
            return _run(client, args)
        except ReplyTimeout as exc:
            print(f"kernel-runner client: {exc}", file=sys.stderr)
            return 3


def _run(client: AgentClient, args: argparse.Namespace) -> int:
    timeout = args.timeout
    match args.command:
        case "status":
            print(json.dumps(client.status(timeout), indent=2, default=str))
        case "exec" | "build" | "clean" | "code":
            result = client.run(args.command, args.text, timeout)
            _print_run(result)
            return result.exit_code if isinstance(result.exit_code, int) and 0 <= result.exit_code < 256 else 1
        case "batch":
            for result in client.batch(clean=args.clean, build=args.build, exec=args.exec_, timeout=timeout):
                _print_run(result)
        case "start-service":
            info = {"name": args.name, "port": args.port, "ports": [args.port], "protocol": args.protocol,
                    "options": json.loads(args.options)}
            print(json.dumps(client.start_service(info, timeout)))
        case "shutdown-service":
            client.shutdown_service(args.name)
        case "get-apps":
            print(json.dumps(client.get_apps(args.name, timeout), indent=2))
        case "complete":
            print(json.dumps(client.complete(args.code, timeout=timeout)))
        case "interrupt":
            client.interrupt()
        case "input":
            client.feed_input(args.text)
        case "start-model-service":
            print(json.dumps(client.start_model_service(json.loads(args.model_json), timeout)))
    return 0
