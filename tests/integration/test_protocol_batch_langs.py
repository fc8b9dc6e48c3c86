"""Every compile-and-run language of docs/protocol.md §8.1 for real, through the wire: a query, a batch build+exec, an interrupt.

Each test starts the whole runner for its language and drives it as the agent does. Toolchains come from
.ci/apt-packages.txt (heavy ones from .ci/apt-packages-heavy.txt, `make test-heavy`); a test whose toolchain
is missing is skipped with the reason. python's query is the Jupyter kernel's (its own tests); here python
is only batch mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_runner import RunnerConfig
from kernel_runner.actors.lang_runner.job import INTERRUPT_STEPS
from kernel_runner.client import AgentClient
from tests.support.procs import assert_gone, descendants
from tests.support.runners import LangRunners, interrupt_run, read_until

INTERRUPT_BOUND_S = 1.5  # below the 2 s SIGTERM escalation: SIGINT to the group alone stopped the program


@pytest.fixture
def langs(runner_config: RunnerConfig) -> Iterator[LangRunners]:
    runners = LangRunners(runner_config)
    yield runners
    runners.close()


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"toolchain not installed: {', '.join(missing)} (see .ci/apt-packages*.txt)")


def which(tool: str) -> str:
    path = shutil.which(tool)
    assert path is not None
    return path


def assert_query(agent: AgentClient, source: str, expected: bytes, *, timeout: float = 60) -> None:
    result = agent.code(source, timeout=timeout)
    assert (result.status, result.exit_code) == ("finished", 0), result.stderr.decode(errors="replace")
    assert result.stdout == expected


def assert_interrupts(
    agent: AgentClient,
    kind: str,
    text: str,
    *,
    timeout: float = 60,
    exit_codes: tuple[int, ...] = (130,),
    within: float = INTERRUPT_BOUND_S,
) -> None:
    """Start a program that prints `ready` and runs for ever; `interrupt` must end it at once with 128+SIGINT."""
    # Long-lived children of the runner (a Jupyter kernel for python) are not the program's and must stay.
    resident = {p.pid for p in descendants()}
    agent.send(kind, text)
    read_until(agent, b"ready", timeout=timeout)
    before = {p.pid for p in descendants()} - resident
    result, took = interrupt_run(agent)
    assert result.status == "finished"
    assert result.exit_code in exit_codes, (result.exit_code, result.stderr)
    assert took < within, f"took {took:.2f}s"
    # Nothing of the program survives (a process that shrugs SIGINT off meets the SIGTERM/SIGKILL escalation).
    assert_gone(before, timeout=sum(step.wait_s for step in INTERRUPT_STEPS) + 1.0)


def assert_batch(agent: AgentClient, *, build: str, exec: str, expected: bytes, timeout: float = 60) -> None:
    results = agent.batch(clean="", build=build, exec=exec, timeout=timeout)
    assert [(r.status, r.exit_code) for r in results] == [
        ("clean-finished", 0),
        ("build-finished", 0),
        ("finished", 0),
    ], [r.stderr for r in results]
    assert results[2].stdout == expected


def assert_no_leftovers(work_dir: Path, *keep: str) -> None:
    """Queries write their source next to the user's files and remove it afterwards (binaries go to a temp dir)."""
    extra = sorted(p.name for p in work_dir.iterdir() if p.name not in keep and not p.name.startswith("."))
    assert extra == [], extra


# ---- C family ------------------------------------------------------------------------------------------------

C_HELLO = '#include <stdio.h>\nint main(void) { printf("hello from c\\n"); return 0; }\n'
C_SPIN = (
    "#include <stdio.h>\n#include <unistd.h>\n"
    'int main(void) { puts("ready"); fflush(stdout); for (;;) pause(); }\n'
)


def test_c(langs: LangRunners, work_dir: Path) -> None:
    need("gcc")
    agent = langs.start("c")
    assert_query(agent, C_HELLO, b"hello from c\n")
    assert_no_leftovers(work_dir)
    # Build `*` without a Makefile: every **/*.c compiled on its own, then linked into ./main (docs/protocol.md §8.1).
    (work_dir / "lib").mkdir()
    (work_dir / "lib" / "util.c").write_text("int twice(int x) { return 2 * x; }\n")
    (work_dir / "main.c").write_text(
        '#include <stdio.h>\nint twice(int);\nint main(void) { printf("%d\\n", twice(21)); return 0; }\n'
    )
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert (work_dir / "lib" / "util.o").is_file()
    assert_interrupts(agent, "code", C_SPIN)


def test_c_compile_error_is_the_compilers_exit_code_and_nothing_runs(langs: LangRunners) -> None:
    need("gcc")
    agent = langs.start("c")
    result = agent.code("int main(void) { return oops; }\n", timeout=60)
    assert result.exit_code == 1
    assert b"oops" in result.stderr
    assert result.stdout == b""


def test_cpp_with_a_makefile(langs: LangRunners, work_dir: Path) -> None:
    need("g++", "make")
    agent = langs.start("cpp")
    assert_query(agent, '#include <iostream>\nint main() { std::cout << "hello from c++" << std::endl; }\n',
                 b"hello from c++\n")
    (work_dir / "main.cpp").write_text('#include <iostream>\nint main() { std::cout << "made" << std::endl; }\n')
    (work_dir / "Makefile").write_text("main: main.cpp\n\tg++ -o main main.cpp\nclean:\n\trm -f main\n")
    assert_batch(agent, build="*", exec="*", expected=b"made\n")
    cleaned = agent.run("clean", "*")
    assert (cleaned.status, cleaned.exit_code) == ("clean-finished", 0)
    assert not (work_dir / "main").exists()
    assert_interrupts(agent, "code", "#include <cstdio>\n#include <unistd.h>\n"
                      'int main() { std::puts("ready"); std::fflush(stdout); for (;;) pause(); }\n')


# ---- JVM, node, rust, go -------------------------------------------------------------------------------------

JAVA_GREET = """import java.util.Scanner;

public class Greeter {
    public static void main(String[] args) {
        Scanner in = new Scanner(System.in);
        System.out.print("name? ");
        String name = in.nextLine();
        System.out.println("hello " + name);
    }
}
"""


def test_java(langs: LangRunners, work_dir: Path) -> None:
    need("javac", "java")
    agent = langs.start("java")
    # docs/protocol.md §8.2: System.in of a query reads the agent's `input` (through the user-input socket).
    first = agent.code(JAVA_GREET, timeout=60)
    assert first.status == "waiting-input", first.stderr
    assert first.stdout == b"name? "
    agent.feed_input("duke")
    result = agent.collect_run(timeout=30)
    assert (result.exit_code, result.stdout) == (0, b"hello duke\n")
    assert_no_leftovers(work_dir)
    (work_dir / "Main.java").write_text(
        'public class Main { public static void main(String[] a) { System.out.println("batch java"); } }\n'
    )
    assert_batch(agent, build="*", exec="*", expected=b"batch java\n")
    (work_dir / "Spin.java").write_text(
        "public class Spin { public static void main(String[] a) throws Exception {"
        ' System.out.println("ready"); while (true) Thread.sleep(100); } }\n'
    )
    assert_interrupts(agent, "exec", "java Spin.java")


def test_nodejs(langs: LangRunners, work_dir: Path) -> None:
    need("node")
    agent = langs.start("nodejs", runtime_path=which("node"))
    assert_query(agent, "console.log('hello from node');", b"hello from node\n")
    (work_dir / "main.js").write_text("console.log(6 * 7);\n")
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(agent, "code", "console.log('ready'); setInterval(() => {}, 1000);")


def real_rustc() -> str:
    """The compiler binary itself: rustup's proxy cannot find its toolchain under the child's HOME (the work dir)."""
    sysroot = subprocess.run([which("rustc"), "--print", "sysroot"], capture_output=True, text=True, check=True)
    return str(Path(sysroot.stdout.strip()) / "bin" / "rustc")


def test_rust(langs: LangRunners, work_dir: Path) -> None:
    need("rustc")
    agent = langs.start("rust", runtime_path=real_rustc())
    assert_query(agent, 'fn main() { println!("hello from rust"); }\n', b"hello from rust\n")
    assert_no_leftovers(work_dir)
    (work_dir / "main.rs").write_text('fn main() { println!("{}", 6 * 7); }\n')
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(
        agent,
        "code",
        'fn main() { println!("ready"); loop { std::thread::sleep(std::time::Duration::from_millis(100)); } }\n',
    )


def test_golang(langs: LangRunners, work_dir: Path) -> None:
    need("go")
    agent = langs.start("golang", runtime_path=which("go"))
    assert_query(agent, 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello from go") }\n',
                 b"hello from go\n")
    assert_no_leftovers(work_dir)
    (work_dir / "main.go").write_text('package main\nimport "fmt"\nfunc main() { fmt.Println(6 * 7) }\n')
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(
        agent,
        "code",
        'package main\nimport ("fmt"; "time")\nfunc main() { fmt.Println("ready"); for { time.Sleep(time.Second) } }\n',
    )


# ---- interpreters -----------------------------------------------------------------------------------------------


def lua() -> str:
    for name in ("lua", "lua5.4", "lua5.3"):
        if shutil.which(name):
            return which(name)
    pytest.skip("toolchain not installed: lua (see .ci/apt-packages.txt)")


def test_lua(langs: LangRunners, work_dir: Path) -> None:
    agent = langs.start("lua", runtime_path=lua())
    assert_query(agent, "print('hello from lua')", b"hello from lua\n")
    (work_dir / "main.lua").write_text("print(6 * 7)\n")
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(agent, "code", "print('ready'); io.stdout:flush(); while true do end")


def test_php(langs: LangRunners, work_dir: Path) -> None:
    need("php")
    agent = langs.start("php", runtime_path=which("php"))
    # docs/protocol.md §8.1: the query gets `<?php` and a blank line put in front.
    assert_query(agent, 'echo "hello from php\\n";', b"hello from php\n")
    (work_dir / "main.php").write_text("<?php\necho 6 * 7, \"\\n\";\n")
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(agent, "code", 'echo "ready\\n"; flush(); while (true) { usleep(100000); }')


def test_scheme(langs: LangRunners, work_dir: Path) -> None:
    need("scheme")
    agent = langs.start("scheme")
    assert_query(agent, '(display "hello from scheme")\n(newline)\n', b"hello from scheme\n")
    # docs/protocol.md §8.1: build and exec `*` are no-ops for scheme; explicit commands run as for any language.
    (work_dir / "main.scm").write_text("(display (* 6 7))\n(newline)\n")
    assert_batch(agent, build="*", exec="scheme --quiet < main.scm", expected=b"42\n")
    assert [(r.status, r.exit_code) for r in agent.batch(build="*", exec="*")] == [
        ("clean-finished", 0), ("build-finished", 0), ("finished", 0),
    ]
    # Chez Scheme answers SIGINT with its `break>` REPL, which reads EOF from the source file and resumes the
    # loop: scheme survives SIGINT and the runner's escalation (SIGTERM 2 s later) stops it. `sh` (which does
    # not exec a command with a redirection) may die of the SIGINT first (130; the op finishes at once and
    # scheme still gets its SIGTERM), or wait for scheme (143).
    assert_interrupts(
        agent,
        "code",
        '(display "ready")(newline)(flush-output-port (current-output-port))\n(let loop () (loop))\n',
        exit_codes=(130, 128 + 15),
        within=INTERRUPT_STEPS[0].wait_s + 1.0,
    )


def test_python_batch(langs: LangRunners, work_dir: Path) -> None:
    agent = langs.start("python", runtime_path=sys.executable)
    (work_dir / "main.py").write_text("print(6 * 7)\n")
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(agent, "exec", f"{sys.executable} -c \"import time; print('ready', flush=True); time.sleep(60)\"")


def test_julia_runs_up_to_spawning_its_command(langs: LangRunners, work_dir: Path, log_lines: list[str]) -> None:
    # julia cannot be installed from Debian here: check everything up to the spawn of `julia main.jl`.
    if shutil.which("julia"):
        pytest.skip("julia is installed; this test checks the runner without it")
    agent = langs.start("julia")
    assert "started_at" in agent.status(timeout=10)  # language init (movecompiled.sh) ran, failed, and was logged
    assert any("init job finished with exit code 127" in line for line in log_lines)
    (work_dir / "main.jl").write_text('println("hi")\n')
    result = agent.run("exec", "*")
    assert result.exit_code == 127
    assert b"julia" in result.stderr and b"not found" in result.stderr
    build = agent.run("build", "*")
    assert (build.status, build.exit_code) == ("build-finished", 0)


# ---- heavy toolchains (make test-heavy) -------------------------------------------------------------------------


@pytest.mark.heavy
def test_haskell(langs: LangRunners, work_dir: Path) -> None:
    need("ghc", "runhaskell")
    agent = langs.start("haskell")
    assert_query(agent, 'main = putStrLn "hello from haskell"\n', b"hello from haskell\n", timeout=120)
    (work_dir / "main.hs").write_text("main = print (6 * 7)\n")
    # Not build `*`: its `ghc --make main <all .hs>` names main.hs twice, which GHC >= 9 rejects (langs table).
    assert_batch(agent, build="ghc -o main main.hs", exec="*", expected=b"42\n", timeout=120)
    assert_interrupts(
        agent,
        "code",
        "import System.IO\nimport Control.Concurrent\n"
        'main = do { putStrLn "ready"; hFlush stdout; let loop = threadDelay 100000 >> loop in loop }\n',
        timeout=120,
    )


@pytest.mark.heavy
def test_octave(langs: LangRunners, work_dir: Path) -> None:
    need("octave-cli")
    agent = langs.start("octave", runtime_path=which("octave-cli"))
    assert_query(agent, 'disp("hello from octave")\n', b"hello from octave\n")
    (work_dir / "main.m").write_text("disp(6 * 7)\n")
    assert_batch(agent, build="*", exec="*", expected=b"42\n")
    assert_interrupts(agent, "code", 'disp("ready"); fflush(stdout); while true; pause(0.1); end\n')


@pytest.mark.heavy
def test_r_batch(langs: LangRunners, work_dir: Path) -> None:
    # R's query mode is the Jupyter IRkernel (docs/protocol.md §8.1); its batch mode is Rscript.
    need("Rscript")
    agent = langs.start("r")
    (work_dir / "main.R").write_text("cat(6 * 7, '\\n')\n")
    assert_batch(agent, build="*", exec="*", expected=b"42 \n")
    (work_dir / "spin.R").write_text('cat("ready\\n"); flush(stdout()); while (TRUE) Sys.sleep(0.1)\n')
    assert_interrupts(agent, "exec", "Rscript spin.R")
