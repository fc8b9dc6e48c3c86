"""The language table and planners: every language resolves, `*` heuristics per language, queries, input hooks."""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import pytest

from kernel_runner.langs import (
    REGISTRY,
    CompileAndRunQuery,
    JupyterQuery,
    LangContext,
    NoStep,
    QueryPlan,
    ShellStep,
    UnknownLanguage,
    batch_site_dir,
    get_lang,
    plan_batch,
    plan_init,
    plan_query,
    resolve_runtime,
)
from kernel_runner.langs.spec import BATCH_MODE_VAR, INPUT_SOCKET_VAR
from kernel_runner.messages import BatchKind

# docs/protocol.md §1.2, in its order
SPEC_KEYS = [
    *("app", "python", "c", "cpp", "golang", "rust", "java", "haskell", "julia"),
    *("lua", "nodejs", "octave", "php", "r", "scheme", "git", "vendor.aws_polly", "vendor.h2o"),
]
WORK = Path("/home/work")
KINDS: tuple[BatchKind, ...] = ("clean", "build", "exec")


def _match(parts: tuple[str, ...], pats: tuple[str, ...]) -> bool:
    """glob.glob semantics for the fake: `**` spans folders, hidden names never match."""
    if not pats:
        return not parts
    if pats[0] == "**":
        return _match(parts, pats[1:]) or (bool(parts) and not parts[0].startswith(".") and _match(parts[1:], pats))
    return bool(parts) and not parts[0].startswith(".") and fnmatch.fnmatchcase(parts[0], pats[0]) and _match(parts[1:], pats[1:])


@attrs.define
class FakeFs:
    """A filesystem made of a few paths; relative ones are taken as under /home/work."""

    files: set[Path]
    executables: set[Path]

    @classmethod
    def of(cls, files: Iterable[str] = (), executables: Iterable[str] = ()) -> FakeFs:
        return cls(files={WORK / f for f in files}, executables={WORK / f for f in executables})

    def _dirs(self) -> set[Path]:
        return {parent for f in self.files | self.executables for parent in f.parents}

    def is_file(self, path: Path) -> bool:
        return path in self.files or path in self.executables

    def is_dir(self, path: Path) -> bool:
        return path in self._dirs()

    def is_executable(self, path: Path) -> bool:
        return path in self.executables

    def glob(self, root: Path, pattern: str) -> list[Path]:
        absolute = pattern.startswith("/")
        base = Path("/") if absolute else root
        found = []
        for path in self.files | self.executables | self._dirs():
            if path == base or base not in path.parents:
                continue
            rel = path.relative_to(base)
            if _match(rel.parts, tuple(pattern.lstrip("/").split("/"))):
                found.append(path if absolute else rel)
        return sorted(found)


def _ctx(lang: str, fs: FakeFs | None = None, **kw: object) -> LangContext:
    fs = fs or FakeFs.of()
    spec = get_lang(lang)
    fields: dict[str, object] = {
        "runtime_path": resolve_runtime(spec, None, fs),
        "work_dir": WORK,
        "env": {"PYTHONPATH": ""},
        "fs": fs,
        **kw,
    }
    return LangContext(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_has_exactly_the_spec_keys() -> None:
    assert list(REGISTRY) == SPEC_KEYS


@pytest.mark.parametrize("name", SPEC_KEYS)
def test_every_language_resolves(name: str) -> None:
    spec = get_lang(name)
    assert spec.name == name
    assert spec.log_prefix.endswith(("-kernel", "-server"))


def test_unknown_language_lists_valid_names() -> None:
    with pytest.raises(UnknownLanguage) as info:
        get_lang("nope")
    message = str(info.value)
    assert "'nope'" in message
    assert all(name in message for name in SPEC_KEYS)
    assert info.value.known == tuple(SPEC_KEYS)
    assert isinstance(info.value, LookupError)


def test_log_prefixes_follow_the_spec_table() -> None:
    assert get_lang("golang").log_prefix == "go-kernel"
    assert get_lang("git").log_prefix == "shell-kernel"
    assert get_lang("vendor.h2o").log_prefix == "h2o-kernel"
    assert get_lang("vendor.aws_polly").log_prefix == "vendor.aws_polly-kernel"


def test_input_queue_languages() -> None:
    # docs/protocol.md §4.4: python, julia, r, c, java, git, vendor.h2o
    assert {n for n, s in REGISTRY.items() if s.input_queue} == {"python", "julia", "r", "c", "java", "git", "vendor.h2o"}


def test_only_jupyter_languages_interrupt_the_kernel() -> None:
    assert {n for n, s in REGISTRY.items() if s.interrupt == "jupyter"} == {"python", "julia", "r", "vendor.h2o"}
    assert get_lang("vendor.aws_polly").interrupt == "worker"


# --------------------------------------------------------------------------------------------
# Runtime paths (docs/protocol.md §10.6 #46)
# --------------------------------------------------------------------------------------------


def test_fixed_default_runtime_paths() -> None:
    assert get_lang("c").default_runtime_path == "/usr/bin/gcc"
    assert get_lang("cpp").default_runtime_path == "/usr/bin/g++"
    assert get_lang("nodejs").default_runtime_path == "/usr/local/bin/node"
    assert get_lang("scheme").default_runtime_path == "scheme"
    assert get_lang("rust").default_runtime_path == "rustc"
    assert get_lang("git").default_runtime_path is None


def test_command_line_runtime_path_wins() -> None:
    assert resolve_runtime(get_lang("python"), "/opt/py/bin/python3", FakeFs.of()) == "/opt/py/bin/python3"


def test_java_runtime_is_first_jvm_binary_then_plain_java() -> None:
    fs = FakeFs(files=set(), executables={Path("/usr/lib/jvm/java-17-x/bin/java"), Path("/usr/lib/jvm/java-11-x/bin/java")})
    assert resolve_runtime(get_lang("java"), None, fs) == "/usr/lib/jvm/java-11-x/bin/java"
    assert resolve_runtime(get_lang("java"), None, FakeFs.of()) == "java"  # never the folder /usr/bin


def test_python_runtime_is_the_krunner_interpreter_where_the_agent_mounts_one() -> None:
    # docs/protocol.md §8.1: 24.09 and later agents mount /opt/backend.ai; older containers keep 23.3.5's default.
    krunner = Path("/opt/backend.ai/bin/python")
    assert resolve_runtime(get_lang("python"), None, FakeFs(files=set(), executables={krunner})) == str(krunner)
    assert resolve_runtime(get_lang("python"), None, FakeFs.of()) == "/usr/bin/python"
    assert resolve_runtime(get_lang("python"), None, FakeFs(files={krunner}, executables=set())) == "/usr/bin/python"
    assert resolve_runtime(get_lang("python"), "/usr/bin/python3", FakeFs(files=set(), executables={krunner})) == \
        "/usr/bin/python3"


# --------------------------------------------------------------------------------------------
# Batch planning (docs/protocol.md §5.1)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SPEC_KEYS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["", "   "])
def test_empty_command_finishes_with_zero(name: str, kind: BatchKind, command: str) -> None:
    plan = plan_batch(get_lang(name), kind, command, _ctx(name, FakeFs.of(["Makefile", "main.py"])))
    assert plan == NoStep(exit_code=0)


@pytest.mark.parametrize("name", SPEC_KEYS)
def test_explicit_exec_runs_in_shell_with_batch_flag(name: str) -> None:
    plan = plan_batch(get_lang(name), "exec", "echo hi && ./x", _ctx(name))
    assert isinstance(plan, ShellStep)
    assert plan.command == "echo hi && ./x"
    assert plan.env_extra[BATCH_MODE_VAR] == "1"


@pytest.mark.parametrize("kind", ["clean", "build"])
def test_explicit_clean_and_build_have_no_batch_flag(kind: BatchKind) -> None:
    plan = plan_batch(get_lang("python"), kind, "make", _ctx("python"))
    assert plan == ShellStep(command="make", env_extra={})


@pytest.mark.parametrize("name", SPEC_KEYS)
def test_build_star_runs_make_when_makefile_exists_whatever_the_language(name: str) -> None:
    plan = plan_batch(get_lang(name), "build", "*", _ctx(name, FakeFs.of(["Makefile", "main.c", "setup.py"])))
    assert plan == ShellStep(command="make")


def test_makefile_must_be_a_regular_file() -> None:
    fs = FakeFs.of(["Makefile/inner", "setup.py"])  # Makefile is a folder here
    plan = plan_batch(get_lang("python"), "build", "*", _ctx("python", fs))
    assert isinstance(plan, ShellStep)
    assert plan.command == "/usr/bin/python -m pip install --user -e ."


@pytest.mark.parametrize("kind", ["build", "exec"])
def test_app_batch_heuristics_warn_and_succeed(kind: BatchKind) -> None:
    plan = plan_batch(get_lang("app"), kind, "*", _ctx("app", FakeFs.of(["main.py"])))
    assert isinstance(plan, NoStep)
    assert plan.exit_code == 0
    assert plan.log_level == "WARNING"
    assert plan.log_text == "batch-mode execution is not supported"


HEURISTIC_CASES: list[tuple[str, BatchKind, list[str], str | int]] = [
    ("python", "build", ["setup.py"], "/usr/bin/python -m pip install --user -e ."),
    ("python", "build", [], 0),
    ("python", "exec", ["main.py"], "/usr/bin/python main.py"),
    ("python", "exec", [], 127),
    ("python", "clean", ["Makefile"], 0),
    ("c", "clean", ["Makefile"], "make clean"),
    ("c", "clean", [], 0),
    (
        "c",
        "build",
        ["main.c", "lib/util.c", ".hidden/x.c"],
        "/usr/bin/gcc -c lib/util.c -Wall -o lib/util.o && /usr/bin/gcc -c main.c -Wall -o main.o"
        " && /usr/bin/gcc lib/util.o main.o -Wall -o ./main -lrt -lm -lpthread -ldl",
    ),
    ("c", "build", ["util.c"], 127),
    ("c", "exec", ["a.out"], "./a.out"),
    ("c", "exec", ["main", "a.out"], "./main"),
    ("c", "exec", [], 127),
    ("cpp", "clean", ["Makefile"], "make clean"),
    (
        "cpp",
        "build",
        ["main.cpp"],
        "/usr/bin/g++ -c main.cpp -Wall -o main.o && /usr/bin/g++ main.o -Wall -o ./main -lrt -lm -lpthread -ldl",
    ),
    ("cpp", "build", ["main.c"], 127),
    ("cpp", "exec", ["main"], "./main"),
    ("golang", "build", ["main.go", "pkg/a.go"], "/usr/local/bin/go build -o main main.go pkg/a.go"),
    ("golang", "build", ["pkg/a.go"], 127),
    ("golang", "exec", ["main"], "./main"),
    ("golang", "exec", [], 127),
    ("golang", "clean", ["Makefile"], 0),
    ("rust", "build", ["Cargo.toml", "main.rs"], "cargo build"),
    ("rust", "build", ["main.rs"], "rustc -o main main.rs"),
    ("rust", "build", [], 127),
    ("rust", "exec", ["main"], "./main"),
    ("rust", "exec", [], 127),
    ("java", "build", ["Main.java", "util/Helper.java"], "javac -d . Main.java util/Helper.java"),
    ("java", "build", [], 127),
    ("java", "exec", ["main/Main.class", "Main.class"], "java main.Main"),
    ("java", "exec", ["Main.class"], "java Main"),
    ("haskell", "build", ["main.hs", "Lib.hs"], "ghc --make -o main Lib.hs main.hs"),
    ("haskell", "exec", ["main"], "./main"),
    ("julia", "build", [], 0),
    ("julia", "exec", ["main.jl"], "julia main.jl"),
    ("julia", "exec", [], 127),
    ("lua", "build", [], 0),
    ("lua", "exec", ["main.lua"], "/usr/local/bin/lua main.lua"),
    ("lua", "exec", [], 127),
    ("nodejs", "exec", ["main.js"], "/usr/local/bin/node main.js"),
    ("nodejs", "exec", [], 127),
    ("octave", "exec", ["main.m"], "/usr/bin/octave-cli main.m"),
    ("octave", "exec", ["main.js"], 127),  # docs/protocol.md §10.6 #47: upstream looked for main.js
    ("php", "exec", ["main.php"], "/usr/bin/php main.php"),
    ("php", "exec", [], 127),
    ("r", "build", [], 0),
    ("r", "exec", ["main.R"], "Rscript main.R"),
    ("r", "exec", [], 127),
    ("scheme", "build", ["main.scm"], 0),
    ("scheme", "exec", ["main.scm"], 0),
    ("git", "build", ["main.py"], -1),
    ("git", "exec", ["main.py"], -1),
    ("git", "clean", [], 0),
    ("vendor.aws_polly", "build", [], -1),
    ("vendor.aws_polly", "exec", [], -1),
    ("vendor.h2o", "build", ["setup.py"], "/opt/h2oai/dai/python/bin/python -m pip install --user -e ."),
    ("vendor.h2o", "exec", ["main.py"], "/opt/h2oai/dai/python/bin/python main.py"),
    ("vendor.h2o", "exec", [], 127),
]


@pytest.mark.parametrize(("name", "kind", "files", "expected"), HEURISTIC_CASES)
def test_star_heuristics(name: str, kind: BatchKind, files: list[str], expected: str | int) -> None:
    plan = plan_batch(get_lang(name), kind, "*", _ctx(name, FakeFs.of(files)))
    if isinstance(expected, str):
        assert isinstance(plan, ShellStep), plan
        assert plan.command == expected
    else:
        assert isinstance(plan, NoStep), plan
        assert plan.exit_code == expected
        if expected != 0:
            assert plan.log_level == "ERROR"
            assert plan.stderr_text is not None
            assert plan.stderr_text.endswith("\n")


def test_failed_heuristics_name_what_is_missing() -> None:
    java = plan_batch(get_lang("java"), "exec", "*", _ctx("java"))
    assert isinstance(java, NoStep)
    assert java.log_text == "cannot find entry class (main.Main)."
    octave = plan_batch(get_lang("octave"), "exec", "*", _ctx("octave", FakeFs.of(["main.js"])))
    assert isinstance(octave, NoStep)
    assert "main.m" in (octave.log_text or "")
    python = plan_batch(get_lang("python"), "build", "*", _ctx("python"))
    assert python == NoStep(
        exit_code=0,
        stderr_text='skipping the build phase due to missing "setup.py" file\n',
        log_text='skipping the build phase due to missing "setup.py" file',
        log_level="WARNING",
    )


def test_python_exec_heuristic_sets_batch_flag_and_input_hook() -> None:
    ctx = _ctx("python", FakeFs.of(["main.py"]), env={"PYTHONPATH": "/opt/mine"}, input_socket=Path("/tmp/x.sock"))
    plan = plan_batch(get_lang("python"), "exec", "*", ctx)
    assert isinstance(plan, ShellStep)
    assert plan.env_extra == {
        BATCH_MODE_VAR: "1",
        "PYTHONPATH": f"{batch_site_dir()}:/opt/mine",
        INPUT_SOCKET_VAR: "/tmp/x.sock",
    }


def test_python_input_hook_adds_no_trailing_colon_to_empty_pythonpath() -> None:
    plan = plan_batch(get_lang("python"), "exec", "python3 x.py", _ctx("python", env={"PYTHONPATH": ""}))
    assert isinstance(plan, ShellStep)
    assert plan.env_extra["PYTHONPATH"] == str(batch_site_dir())


def test_h2o_exec_heuristic_has_no_batch_flag() -> None:
    plan = plan_batch(get_lang("vendor.h2o"), "exec", "*", _ctx("vendor.h2o", FakeFs.of(["main.py"])))
    assert plan == ShellStep(command="/opt/h2oai/dai/python/bin/python main.py", env_extra={})


def test_non_python_exec_gets_only_the_flag() -> None:
    plan = plan_batch(get_lang("c"), "exec", "./main", _ctx("c"))
    assert isinstance(plan, ShellStep)
    assert plan.env_extra == {BATCH_MODE_VAR: "1"}


def test_golang_build_passes_no_empty_argument() -> None:
    plan = plan_batch(get_lang("golang"), "build", "*", _ctx("golang", FakeFs.of(["main.go"])))
    assert isinstance(plan, ShellStep)
    assert shlex.split(plan.command) == ["/usr/local/bin/go", "build", "-o", "main", "main.go"]


def test_java_build_passes_each_source_as_its_own_argument() -> None:
    plan = plan_batch(get_lang("java"), "build", "*", _ctx("java", FakeFs.of(["A.java", "my dir/B.java"])))
    assert isinstance(plan, ShellStep)
    assert shlex.split(plan.command) == ["javac", "-d", ".", "A.java", "my dir/B.java"]
    assert "UseCGroupMemoryLimitForHeap" not in plan.command


def test_rust_exec_runs_first_executable_in_debug_then_release() -> None:
    fs = FakeFs.of(files=["target/debug/app.d", "main"], executables=["target/debug/app", "target/release/app"])
    plan = plan_batch(get_lang("rust"), "exec", "*", _ctx("rust", fs))
    assert plan == ShellStep(command="./target/debug/app")
    release_only = FakeFs.of(files=["target/debug/app.d"], executables=["target/release/zed"])
    assert plan_batch(get_lang("rust"), "exec", "*", _ctx("rust", release_only)) == ShellStep(command="./target/release/zed")


def test_runtime_override_is_quoted_in_commands() -> None:
    ctx = attrs.evolve(_ctx("lua", FakeFs.of(["main.lua"])), runtime_path="/opt/my lua/lua")
    plan = plan_batch(get_lang("lua"), "exec", "*", ctx)
    assert isinstance(plan, ShellStep)
    assert shlex.split(plan.command) == ["/opt/my lua/lua", "main.lua"]


def test_missing_runtime_is_a_clear_error_not_a_crash() -> None:
    ctx = attrs.evolve(_ctx("lua", FakeFs.of(["main.lua"])), runtime_path=None)
    plan = plan_batch(get_lang("lua"), "exec", "*", ctx)
    assert isinstance(plan, NoStep)
    assert plan.exit_code == 127
    assert "runtime" in (plan.log_text or "")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_build_and_exec_plans_run_in_a_real_shell(tmp_path: Path) -> None:
    (tmp_path / "my lib").mkdir()
    (tmp_path / "my lib" / "util.c").write_text("int twice(int x) { return 2 * x; }\n")
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint twice(int);\nint main(void) { printf("%d\\n", twice(21)); }\n')
    ctx = LangContext(runtime_path="gcc", work_dir=tmp_path, env=dict(os.environ))
    for kind in ("build", "exec"):
        plan = plan_batch(get_lang("c"), kind, "*", ctx)
        assert isinstance(plan, ShellStep)
        done = _sh(plan, tmp_path)
        assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"
    assert (tmp_path / "my lib" / "util.o").is_file()


# --------------------------------------------------------------------------------------------
# Query planning (docs/protocol.md §8.1, §8.2)
# --------------------------------------------------------------------------------------------


def _sh(step: ShellStep, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **step.env_extra}
    return subprocess.run(["/bin/sh", "-c", step.command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _write(plan: QueryPlan) -> None:
    for file in plan.files:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_text(file.content)


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if not isinstance(s.query, CompileAndRunQuery)])
def test_plan_query_refuses_non_compiled_languages(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        plan_query(get_lang(name), "x", _ctx(name), Path("/tmp/q"))


def test_c_query_keeps_the_binary_out_of_the_work_dir() -> None:
    tmp = Path("/tmp/krq_ab12")
    plan = plan_query(get_lang("c"), "int main(){}", _ctx("c"), tmp)
    assert isinstance(plan, QueryPlan)
    (source,) = plan.files
    assert source.path.parent == WORK  # relative #include "x.h" keeps working (docs/protocol.md §8.1)
    assert source.path.suffix == ".c"
    assert [s.command for s in plan.steps] == [
        f"/usr/bin/gcc {source.path.name} -Wall -o /tmp/krq_ab12/main -lrt -lm -lpthread -ldl",
        "/tmp/krq_ab12/main",
    ]
    assert plan.cleanup == (source.path, tmp)


def test_php_query_source_starts_with_open_tag() -> None:
    plan = plan_query(get_lang("php"), "echo 1;", _ctx("php"), Path("/tmp/q1"))
    assert isinstance(plan, QueryPlan)
    assert plan.files[0].content == "<?php\n\necho 1;"


def test_query_source_name_is_an_identifier_and_unique_per_tmp_dir() -> None:
    a = plan_query(get_lang("rust"), "", _ctx("rust"), Path("/tmp/kr_test.1"))
    b = plan_query(get_lang("rust"), "", _ctx("rust"), Path("/tmp/kr_test.2"))
    assert isinstance(a, QueryPlan)
    assert isinstance(b, QueryPlan)
    assert a.files[0].path.stem.isidentifier()
    assert "_" not in a.files[0].path.stem
    assert a.files[0].path != b.files[0].path


def test_scheme_query_feeds_the_file_on_stdin() -> None:
    plan = plan_query(get_lang("scheme"), "(display 1)", _ctx("scheme"), Path("/tmp/q"))
    assert isinstance(plan, QueryPlan)
    assert plan.steps[0].command == f"scheme --quiet < {plan.files[0].path.name}"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_query_plan_runs(tmp_path: Path) -> None:
    work, tmp = tmp_path / "work", tmp_path / "q"
    work.mkdir()
    tmp.mkdir()
    ctx = LangContext(runtime_path="gcc", work_dir=work, env=dict(os.environ))
    plan = plan_query(get_lang("c"), '#include <stdio.h>\nint main(void) { puts("hi"); return 3; }\n', ctx, tmp)
    assert isinstance(plan, QueryPlan)
    _write(plan)
    results = [_sh(step, work) for step in plan.steps]
    assert [r.returncode for r in results] == [0, 3]
    assert results[1].stdout == "hi\n"
    assert not (work / "main").exists()


JAVA_GREETER = """\
package demo;

import java.io.BufferedReader;
import java.io.InputStreamReader;

public class Greeter extends Object {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.print("name? ");
        String first = in.readLine();
        String second = in.readLine();
        System.out.println("hello, " + first + " and " + second);
    }
}
"""


def test_java_query_discovers_class_and_package(tmp_path: Path) -> None:
    plan = plan_query(get_lang("java"), JAVA_GREETER, _ctx("java"), tmp_path)
    assert isinstance(plan, QueryPlan)
    (source,) = plan.files
    assert source.path == tmp_path / "Greeter.java"
    assert "BackendAiKernelStdin.install();" in source.content.split("public class Greeter extends Object {")[1].splitlines()[0]
    assert shlex.split(plan.steps[1].command)[-1] == "demo.Greeter"
    assert plan.cleanup == (tmp_path,)


def test_java_query_without_public_class_uses_main_java(tmp_path: Path) -> None:
    plan = plan_query(get_lang("java"), "class A {}", _ctx("java"), tmp_path)
    assert isinstance(plan, QueryPlan)
    assert plan.files[0].path.name == "main.java"
    assert "install();" not in plan.files[0].content.split("final class")[0]


def _unix_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(60)
    return server


def _answer(server: socket.socket, text: bytes) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(text)


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK")
def test_java_query_reads_input_ops_through_the_socket(tmp_path: Path) -> None:
    work, tmp, sock = tmp_path / "work", tmp_path / "q", tmp_path / "in.sock"
    work.mkdir()
    ctx = LangContext(runtime_path="java", work_dir=work, env=dict(os.environ), input_socket=sock)
    plan = plan_query(get_lang("java"), JAVA_GREETER, ctx, tmp)
    assert isinstance(plan, QueryPlan)
    _write(plan)
    compiled = _sh(plan.steps[0], work)
    assert compiled.returncode == 0, compiled.stderr
    run = plan.steps[1]
    with _unix_server(sock) as server:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", run.command],
            cwd=work,
            env={**os.environ, **run.env_extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _answer(server, b"alice")  # no newline: the stream adds one so readLine() returns
            _answer(server, b"bob\n")
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "name? hello, alice and bob\n"


# --------------------------------------------------------------------------------------------
# Init and Jupyter selection
# --------------------------------------------------------------------------------------------


def test_init_commands() -> None:
    assert plan_init(get_lang("julia")) == (ShellStep(command="/usr/local/bin/movecompiled.sh"),)
    assert "/opt/h2oai/dai/run-dai.sh" in plan_init(get_lang("vendor.h2o"))[0].command
    assert plan_init(get_lang("python")) == ()


def test_kernelspec_names() -> None:
    names = {n: s.query.kernelspec_name for n, s in REGISTRY.items() if isinstance(s.query, JupyterQuery)}
    assert names == {"python": "python", "julia": "julia", "r": "ir", "vendor.h2o": "python"}


def test_kernelspec_pick_prefers_exact_then_prefix_then_substring() -> None:
    python = JupyterQuery(kernelspec_name="python")
    assert python.pick(["mypython", "python3", "python"]) == "python"
    assert python.pick(["mypython", "python3"]) == "python3"
    assert python.pick(["mypython", "ir"]) == "mypython"
    assert python.pick(["ir"]) is None
    assert JupyterQuery(kernelspec_name="").pick(["python3"]) is None  # upstream matched anything (§10.2 #14)


# --------------------------------------------------------------------------------------------
# Batch-mode input() hook (docs/protocol.md §5.6), run in a real interpreter
# --------------------------------------------------------------------------------------------


def _python_child(code: str, env_extra: Mapping[str, str], **kw: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in (BATCH_MODE_VAR, "PYTHONPATH")}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", code],
        env={**env, **env_extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _batch_env(sock: Path) -> dict[str, str]:
    plan = plan_batch(get_lang("python"), "exec", "x", _ctx("python", env={"PYTHONPATH": ""}, input_socket=sock))
    assert isinstance(plan, ShellStep)
    return dict(plan.env_extra)


def test_input_goes_through_the_socket_in_batch_mode(tmp_path: Path) -> None:
    sock = tmp_path / "in.sock"
    with _unix_server(sock) as server:
        proc = _python_child("print(repr(input('name? ')))", _batch_env(sock))
        try:
            _answer(server, b"alice\n")
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert out == "name? 'alice'\n", err


def test_input_without_socket_returns_the_unavailable_marker(tmp_path: Path) -> None:
    proc = _python_child("print(repr(input()))", _batch_env(tmp_path / "missing.sock"))
    out, err = proc.communicate(timeout=30)
    assert out == "'<user-input-unavailable>'\n", err


def test_hook_is_dormant_without_the_batch_flag(tmp_path: Path) -> None:
    env = _batch_env(tmp_path / "missing.sock")
    env[BATCH_MODE_VAR] = "0"
    proc = _python_child("print(repr(input('q? ')))", env, stdin=subprocess.PIPE)
    out, err = proc.communicate("bob\n", timeout=30)
    assert out == "q? 'bob'\n", err


def test_hook_runs_the_sitecustomize_it_shadows(tmp_path: Path) -> None:
    other = tmp_path / "image-site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.IMAGE_HOOK_RAN = True\n")
    env = _batch_env(tmp_path / "missing.sock")
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{other}"
    proc = _python_child("import builtins; print(builtins.IMAGE_HOOK_RAN, input())", env)
    out, err = proc.communicate(timeout=30)
    assert out == "True <user-input-unavailable>\n", err
