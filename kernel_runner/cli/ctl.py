"""`kernel-runner ctl ...`: watch and steer a running runner through its control socket (docs/operations.md §1).

Standard library only (plus kernel_runner.control's client side): a health check starts a fresh process each time,
so this loads no actor code, no pykka, no ZeroMQ and no jupyter_client.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernel_runner.cli.subcommands import parser_with_commands
from kernel_runner.control.client import ControlClient, ControlError, FoundRunner, NoRunner, runners_answering
from kernel_runner.control.protocol import (
    DEFAULT_TAIL_LINES,
    MAX_WAIT_S,
    SOCKET_ENV,
    default_socket_path,
    format_duration,
    runner_sockets,
)

# docs/operations.md §1.4
EXIT_FAILED = 1  # the runner refused or could not do it; `ready`: not ready (or no runner at all); `status`: no
#                  such child; `reload`: a definition is invalid
EXIT_USAGE = 2  # argparse's own code for usage errors; also: several runners answer and none was picked
EXIT_NO_RUNNER = 3  # nothing answers on the socket, no reply in time, or the connection broke
EXIT_NOT_RUNNING = 4  # `status`: a child shown is not running (supervisorctl says 3, which means no runner here)
# supervisorctl's running states count as running for `status`'s exit code: the tree is trying.
NOT_RUNNING_STATES = frozenset({"STOPPING", "EXITED", "STOPPED", "FATAL"})
DEFAULT_TIMEOUT_S = 15.0
READ_MARGIN_S = 5.0  # the runner waits up to --timeout for an outcome; the reply may take this much longer
PROBE_TIMEOUT_S = 2.0  # with several sockets in the default folder: how long each may take to say who it is

DESCRIPTION = """\
Watch and steer a running kernel-runner through its control socket (docs/operations.md §1). The socket is
separate from the agent's: using it never takes messages meant for the agent."""

EPILOG = """\
Options go before or after the command. Exit codes: 0 done (`start` of a running child too: "already started");
1 the command failed (`status`: no such child; `reload`: an invalid definition), or `ready`: not ready (also when
no runner answers, so it suits a Docker HEALTHCHECK); 2 usage error, or several runners answer and neither --socket
nor --pid says which; 3 no runner answering on the socket, or no reply within --timeout; 4 `status`: a child shown
is not running (STOPPING, EXITED, STOPPED, FATAL)."""


class SeveralRunners(Exception):
    """More than one runner answers in the default folder, and the command line did not say which."""

    def __init__(self, found: list[FoundRunner]) -> None:
        super().__init__(f"{len(found)} runners answer on this host; pick one with --socket PATH or --pid PID")
        self.found = found


def _add_common_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """On the top-level parser with defaults, and on every command's parser without (SUPPRESS), so an option
    given after the command sets the value and one given before it is not reset to the default."""

    def default(value: object) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    group = parser.add_argument_group("common options (before or after the command)")
    group.add_argument("--socket", type=Path, default=default(None), metavar="PATH",
                       help=f"the runner's control socket (default: ${SOCKET_ENV}, else the one runner answering in "
                            "$XDG_RUNTIME_DIR/kernel-runner/ or /tmp/kernel-runner-<uid>/)")
    group.add_argument("--pid", type=int, default=default(None), metavar="PID",
                       help="the runner with this pid, among those answering in that folder")
    group.add_argument("--timeout", type=_seconds, default=default(DEFAULT_TIMEOUT_S), metavar="S",
                       help=f"seconds to wait for the outcome (a restarted child running again; default "
                            f"{DEFAULT_TIMEOUT_S:g})")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the runner's reply as JSON (for machines)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, {MAX_WAIT_S:g}] seconds")
    return value


def _lines(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of lines: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} lines: must be >= 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser, command = parser_with_commands(prog="kernel-runner ctl", description=DESCRIPTION, epilog=EPILOG,
                                           add_options=_add_common_options)

    command("status", "the supervision tree: state, pid, uptime, restarts of every child (or of those named)") \
        .add_argument("children", nargs="*", metavar="CHILD")
    p = command("start", "start a child that gave up or waits to restart; `service:NAME` starts a defined service")
    p.add_argument("child", metavar="CHILD")
    p.add_argument("--port", type=_port, default=None, help="service:NAME only: the port to give the service")
    command("stop", "stop a service (or another non-core child) for good").add_argument("child", metavar="CHILD")
    command("restart", "restart a child now (not counted towards giving up)").add_argument("child", metavar="CHILD")
    p = command("signal", "send a signal to a child's process")
    p.add_argument("child", metavar="CHILD")
    p.add_argument("signal", metavar="SIG", help="a name (TERM, SIGHUP) or a number")
    p = command("tail", "a child's recent log lines")
    p.add_argument("child", metavar="CHILD")
    p.add_argument("-n", "--lines", type=_lines, default=DEFAULT_TAIL_LINES,
                   help=f"how many lines (default {DEFAULT_TAIL_LINES}, at most 500)")
    p.add_argument("-f", "--follow", action="store_true", help="then print new lines as they come (Ctrl-C ends)")
    command("ready", "exit 0 when the runner and its language's children are up (a Docker HEALTHCHECK)")
    command("reload", "reread the service definitions (as SIGHUP does)")
    command("version", "the runner's version")
    return parser


def main(argv: Sequence[str]) -> int:
    # `kernel-runner ctl status | head` should end quietly, as other Unix tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.socket is not None and args.pid is not None:
        parser.error("--socket and --pid both pick the runner: give one of them")
    try:
        path: Path = args.socket or pick_socket(args.pid, timeout=min(args.timeout, PROBE_TIMEOUT_S))
        with ControlClient(path, timeout=args.timeout + READ_MARGIN_S) as client:
            return _run(client, args)
    except SeveralRunners as exc:
        _list_runners(exc, json_out=args.json)
        return EXIT_FAILED if args.command == "ready" else EXIT_USAGE
    except NoRunner as exc:
        _error(f"{exc}: is it running? (--socket PATH or ${SOCKET_ENV} names another socket)")
    except ControlError as exc:
        _error(str(exc))
    except KeyboardInterrupt:
        return 130
    return EXIT_FAILED if args.command == "ready" else EXIT_NO_RUNNER


def pick_socket(pid: int | None, *, timeout: float, environ: Mapping[str, str] | None = None) -> Path:
    """The socket to talk to when --socket is not given: ${SOCKET_ENV}, else the one runner answering in the default
    folder (docs/operations.md §1.1). With several it refuses to guess (SeveralRunners) unless `pid` picks one; a
    socket nobody listens on (a dead runner's) does not count."""
    env = os.environ if environ is None else environ
    given = env.get(SOCKET_ENV)
    if given and pid is None:
        return Path(given)
    default = default_socket_path(env)
    candidates = runner_sockets(default.parent)
    if given and Path(given) not in candidates:
        candidates.append(Path(given))
    if pid is None and len(candidates) <= 1:
        return candidates[0] if candidates else default  # nothing to choose from: no need to ask first
    found = runners_answering(candidates, timeout=timeout)
    if pid is not None:
        found = [runner for runner in found if runner.version.get("pid") == pid]
        if not found:
            raise ControlError(f"no runner with pid {pid} answers in {default.parent}"
                               + (f" or on {given}" if given else ""))
    if len(found) > 1:
        raise SeveralRunners(found)
    return found[0].path if found else default


def _list_runners(several: SeveralRunners, *, json_out: bool) -> None:
    rows = [{"socket": str(runner.path), "pid": runner.version.get("pid"), "lang": runner.version.get("lang"),
             "version": runner.version.get("version")} for runner in several.found]
    if json_out:
        print(json.dumps({"ok": False, "error": str(several), "runners": rows}, indent=2))
        return
    _error(f"{several}:")
    for row in rows:
        print(f"  pid {row['pid']}  {row['lang']}  {row['version']}  {row['socket']}", file=sys.stderr)


def _error(line: str) -> None:
    print(f"kernel-runner ctl: {line}", file=sys.stderr)


def _run(client: ControlClient, args: argparse.Namespace) -> int:
    request: dict[str, Any] = {}
    if args.command == "status" and args.children:
        request["children"] = args.children
    if args.command in ("start", "stop", "restart", "signal", "tail"):
        request["child"] = args.child
    if args.command in ("start", "stop", "restart", "reload"):
        request["timeout"] = args.timeout
    match args.command:
        case "start" if args.port is not None:
            request["port"] = args.port
        case "signal":
            request["signal"] = args.signal
        case "tail":
            request.update(lines=args.lines, follow=args.follow)
    reply = client.request(args.command, request)
    if args.json:
        print(json.dumps(reply, indent=2))
    if not reply["ok"]:
        if not args.json:
            _error(f"{args.command} failed: {reply.get('error', 'no reason given')}")
        return EXIT_FAILED
    if args.command == "tail" and args.follow:
        return _follow(client, reply, json_lines=args.json)
    if not args.json:
        text = render(args.command, reply)
        if text:  # `tail -n 0` prints nothing, not an empty line
            print(text)
    return _exit_code(args.command, reply, quiet=args.json)


def _exit_code(command: str, reply: dict[str, Any], *, quiet: bool) -> int:
    """0, or what went wrong in a reply that was answered (docs/operations.md §1.4); the reasons go to stderr."""
    complaints: list[str] = []
    code = 0
    match command:
        case "ready" if not reply.get("ready"):
            code = EXIT_FAILED
        case "status" if reply.get("unknown"):
            complaints = [f"no child {name} (`kernel-runner ctl status` lists them)" for name in reply["unknown"]]
            code = EXIT_FAILED
        case "status" if any(row["state"] in NOT_RUNNING_STATES for row in _rows(reply["children"])):
            code = EXIT_NOT_RUNNING
        case "reload" if reply.get("invalid"):
            complaints = [f"invalid service definition: {problem}" for problem in reply.get("problems") or []] or [
                f"invalid service definition: {name}" for name in reply["invalid"]]
            code = EXIT_FAILED
    if not quiet:
        for line in complaints:
            _error(line)
    return code


def _rows(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield row
        yield from _rows(row.get("children", []))


def _follow(client: ControlClient, first: dict[str, Any], *, json_lines: bool) -> int:
    if not json_lines:
        for line in first.get("lines", []):
            print(line)
    sys.stdout.flush()
    client.wait_forever()
    try:
        while True:
            reply = client.read_reply()
            if json_lines:
                print(json.dumps(reply))
            elif "line" in reply:
                print(reply["line"])
            elif "dropped" in reply:
                print(f"[… {reply['dropped']} lines dropped: this reader was too slow]")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0  # the usual way to end `tail -f`


def render(command: str, reply: dict[str, Any]) -> str:
    """The human form of a successful reply."""
    match command:
        case "status":
            return status_table(reply)
        case "start" | "stop" | "restart":
            return _outcome_line(reply)
        case "signal":
            return f"{reply['child']}: sent {reply['signal']} to pid {reply['pid']}"
        case "tail":
            return "\n".join(reply.get("lines", []))
        case "ready":
            return "ready" if reply["ready"] else "not ready: " + "; ".join(reply.get("not_ready", []))
        case "reload":
            invalid = reply["invalid"]
            return (f"reloaded: {reply['loaded']} loaded; added {_names(reply['added'])}, changed "
                    f"{_names(reply['changed'])}, removed {_names(reply['removed'])}, {len(invalid)} invalid"
                    + (f" {_names(invalid)}" if invalid else "")
                    + (f" (kept the previous {_names(reply['kept'])})" if reply.get("kept") else ""))
        case "version":
            from kernel_runner import __version__

            runner = f"runner {reply['version']} ({reply['lang']}, pid {reply['pid']}, python {reply['python']})"
            return runner if reply["version"] == __version__ else f"{runner}; this ctl {__version__}"
    return json.dumps(reply)


def _names(names: Sequence[str]) -> str:
    return "[" + ", ".join(names) + "]"


def _outcome_line(reply: dict[str, Any]) -> str:
    action = reply["action"]
    if action == "already-started":
        return f"{reply['child']}: already started ({reply.get('state', 'RUNNING')})"
    if action == "already-stopped":
        return f"{reply['child']}: already stopped"
    details = [f"generation {reply['generation']}"] if reply.get("generation") is not None else []
    if action != "stopped" and reply.get("pid") is not None:
        details.append(f"pid {reply['pid']}")
    return f"{reply['child']}: {action}" + (f" ({', '.join(details)})" if details else "")


STATUS_COLUMNS = ("CHILD", "STATE", "HEALTH", "PID", "UPTIME", "GEN", "RESTARTS", "SINCE", "LAST EXIT / DETAILS")


def status_table(reply: dict[str, Any]) -> str:
    """One line per child, nested ones indented under the child they are bound to (supervisorctl's `status`)."""
    runner = reply["runner"]
    ready = "ready" if runner["ready"] else "NOT READY (" + "; ".join(runner.get("not_ready", [])) + ")"
    ports = runner.get("ports") or {}
    header = (f"kernel-runner {runner['version']}  {runner['lang']}  pid {runner['pid']}  {ready}  "
              f"agent ports {ports.get('in')}/{ports.get('out')}")
    if runner.get("command"):  # `ps` shows the process title; this is the command line as given (protocol §9.3)
        header += "\ncommand: " + shlex.join(runner["command"])
    rows: list[tuple[str, ...]] = [STATUS_COLUMNS]

    def add(child: dict[str, Any], depth: int) -> None:
        uptime = child.get("uptime_s")
        since = child.get("since")
        details = [child["last_exit"]] if child.get("last_exit") else []
        # Health has its column; nested figures (a probe's last answer) are for --json, not for one line.
        details += [f"{key}={value}" for key, value in (child.get("extra") or {}).items()
                    if key != "health" and not isinstance(value, dict | list)]
        extra_health = (child.get("extra") or {}).get("health")
        health = child.get("health") or (extra_health if isinstance(extra_health, str) else None)
        rows.append((
            "  " * depth + child["id"], child["state"], health or "-",
            str(child["pid"]) if child.get("pid") else "-",
            format_duration(uptime) if uptime is not None else "-", str(child["generation"]), str(child["restarts"]),
            since.replace("T", " ")[:19] if since else "-", "; ".join(details) or "-",
        ))
        for nested in child.get("children", []):
            add(nested, depth + 1)

    for child in reply["children"]:
        add(child, 0)
    widths = [max(len(row[i]) for row in rows) for i in range(len(STATUS_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
             for row in rows]
    return "\n".join([header, *(line.rstrip() for line in lines)])


__all__ = ["SeveralRunners", "build_parser", "main", "pick_socket", "render", "status_table"]
