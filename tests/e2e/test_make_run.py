"""`make run` and the README's first minutes agree: its own folders under .run/, the agent's default ports, and the
control socket the README's `ctl` lines name (README.md "The first minutes"). Read from `make -n run`, so nothing is
installed or started here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import kernel_runner

REPO = Path(kernel_runner.__file__).parent.parent


def make_run_argv(*variables: str) -> list[str]:
    """The runner's command line as `make run` would start it (dry run; make's own variables left out)."""
    env = {name: value for name, value in os.environ.items() if name not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    done = subprocess.run(["make", "--no-print-directory", "-n", "run", *variables], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    commands = done.stdout.replace("\\\n", " ").splitlines()
    line = next(command for command in commands if "-m kernel_runner " in command)
    return shlex.split(line)


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def readme_first_minutes() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### The first minutes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the first minutes have a copy-paste block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_make_run_keeps_to_its_own_folders_and_the_default_ports() -> None:
    argv = make_run_argv()
    assert option(argv, "--work-dir") == str(REPO / ".run" / "work")
    assert option(argv, "--config-dir") == str(REPO / ".run" / "config")  # no machine's intrinsic-ports.json
    assert option(argv, "--bind") == "127.0.0.1"
    assert "--port-in" not in argv and "--port-out" not in argv  # 2000/2001: the defaults, with no ports file
    assert option(argv, "--control-socket") == ".run/control.sock"
    container = make_run_argv("WORK_DIR=/home/work", "CONFIG_DIR=/home/config")  # a container's folders, on request
    assert (option(container, "--work-dir"), option(container, "--config-dir")) == ("/home/work", "/home/config")


def test_the_readmes_first_minutes_reach_what_make_run_starts() -> None:
    socket = option(make_run_argv(), "--control-socket")
    lines = readme_first_minutes()
    assert [shlex.split(line)[1] for line in lines] == ["ctl", "client", "ctl"]
    for line in lines:
        words = shlex.split(line)
        assert words[0] == ".venv/bin/kernel-runner"  # what `make run` installs; not on PATH
        if words[1] == "ctl":
            assert option(words, "--socket") == socket, line
        else:
            assert "--port-in" not in words  # the client's default ports are `make run`'s
