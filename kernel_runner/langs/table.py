"""The language table (docs/protocol.md §8.1) as data rows, one LangSpec per selectable key of docs/protocol.md §1.2."""

from __future__ import annotations

from kernel_runner.langs.spec import (
    POLLY_HANDLER,
    CompileAndRunQuery,
    CompileEachThenLink,
    ExternalQuery,
    Heuristic,
    JupyterQuery,
    LangSpec,
    NoQuery,
    Promote,
    PromoteFirstMatch,
    RunFirstExecutable,
    RunIfFile,
    RunWithSources,
    TerminalQuery,
    info_ok,
    missing,
    warn_ok,
)

# Each heuristic below is docs/protocol.md §8.1's column; the Makefile check for build `*` comes first for every
# language (docs/protocol.md §5.1) and lives in the planner, not here.


def _no_build(lang: str) -> Heuristic:
    return Heuristic(otherwise=info_ok(f"no build process for {lang} language"))


def _exec_main(path: str, command: str) -> Heuristic:
    return Heuristic(candidates=(RunIfFile(path=path, command=command),), otherwise=missing(f"cannot find {path}"))


def _c_family(*, name: str, log_prefix: str, compiler: str, suffix: str) -> LangSpec:
    libs = "-lrt -lm -lpthread -ldl"
    return LangSpec(
        name=name,
        log_prefix=log_prefix,
        default_runtime_path=compiler,
        query=CompileAndRunQuery(suffix=suffix, steps=(f"{{runtime}} {{src}} -Wall -o {{out}}/main {libs}", "{out}/main")),
        input_queue=name == "c",  # docs/protocol.md §8.1: c has an input queue, cpp does not
        clean=Heuristic(
            candidates=(RunIfFile(path="Makefile", command="make clean"),),
            otherwise=warn_ok("cannot find Makefile; nothing to clean"),
        ),
        build=Heuristic(
            candidates=(
                CompileEachThenLink(
                    if_file=f"main{suffix}",
                    sources=f"**/*{suffix}",
                    compile="{runtime} -c {source} -Wall -o {object}",
                    # Upstream linked without libraries; the query always had them, so batch builds get them too.
                    link=f"{{runtime}} {{objects}} -Wall -o ./main {libs}",
                ),
            ),
            otherwise=missing(f"cannot find main{suffix}"),
        ),
        exec=Heuristic(
            candidates=(RunIfFile(path="main", command="./main"), RunIfFile(path="a.out", command="./a.out")),
            otherwise=missing("cannot find an executable (./main or ./a.out)"),
        ),
    )


_UNSUPPORTED_BATCH = Heuristic(otherwise=missing("batch-mode heuristics are not supported by this kernel", exit_code=-1))
_APP_BATCH = Heuristic(otherwise=warn_ok("batch-mode execution is not supported"))
_PYTHON_BUILD = Heuristic(
    candidates=(RunIfFile(path="setup.py", command="{runtime} -m pip install --user -e ."),),
    otherwise=warn_ok('skipping the build phase due to missing "setup.py" file'),
)

LANGS: tuple[LangSpec, ...] = (
    LangSpec(
        name="app",
        log_prefix="app-kernel",
        default_runtime_path="/opt/backend.ai/bin/python",
        # Upstream ran `code` in whatever kernelspec came first (docs/protocol.md §10.2 #14); app is for services only.
        query=NoQuery(reason="query mode is not supported by the app kernel"),
        build=_APP_BATCH,
        exec=_APP_BATCH,
    ),
    LangSpec(
        name="python",
        log_prefix="python-kernel",
        # Agents since 24.09 run images without labels, so no RUNTIME_PATH: the krunner's own interpreter, where the
        # agent mounts one, else 23.3.5's default (docs/protocol.md §8.1).
        default_runtime_path="/usr/bin/python",
        runtime_glob="/opt/backend.ai/bin/python",
        query=JupyterQuery(kernelspec_name="python"),
        interrupt="jupyter",
        input_queue=True,
        python_input_hook=True,
        env_inherit=("PYTHONPATH",),
        build=_PYTHON_BUILD,
        exec=Heuristic(
            candidates=(RunIfFile(path="main.py", command="{runtime} main.py", batch_mode=True),),
            otherwise=missing("cannot find main.py"),
        ),
    ),
    # docs/protocol.md §10.6 #46: upstream compiled C with g++.
    _c_family(name="c", log_prefix="c-kernel", compiler="/usr/bin/gcc", suffix=".c"),
    _c_family(name="cpp", log_prefix="cpp-kernel", compiler="/usr/bin/g++", suffix=".cpp"),
    LangSpec(
        name="golang",
        log_prefix="go-kernel",
        default_runtime_path="/usr/local/bin/go",
        query=CompileAndRunQuery(suffix=".go", steps=("{runtime} run {src}",)),
        env_defaults={"GOPATH": "{home}"},
        path_promotions=(Promote(path="/go/bin"), Promote(path="/usr/local/go/bin"), Promote(path="{home}/bin")),
        build=Heuristic(
            # docs/protocol.md §10.6 #47: upstream also passed an empty-string argument to `go build`.
            candidates=(RunWithSources(if_file="main.go", sources="**/*.go", command="{runtime} build -o main {sources}"),),
            otherwise=missing("cannot find main.go"),
        ),
        exec=_exec_main("main", "./main"),
    ),
    LangSpec(
        name="rust",
        log_prefix="rust-kernel",
        # Upstream's /usr/bin/rustc was never used; the bare name follows the child PATH (cargo installs elsewhere).
        default_runtime_path="rustc",
        query=CompileAndRunQuery(suffix=".rs", steps=("{runtime} -o {out}/main {src}", "{out}/main")),
        build=Heuristic(
            candidates=(
                RunIfFile(path="Cargo.toml", command="cargo build"),
                RunIfFile(path="main.rs", command="{runtime} -o main main.rs"),
            ),
            otherwise=missing("cannot find Cargo.toml or main.rs"),
        ),
        exec=Heuristic(
            candidates=(RunFirstExecutable(dirs=("target/debug", "target/release")), RunIfFile(path="main", command="./main")),
            otherwise=missing("cannot find an executable in target/debug, target/release or ./main"),
        ),
    ),
    LangSpec(
        name="java",
        log_prefix="java-kernel",
        # Upstream fell back to the folder /usr/bin (docs/protocol.md §10.6 #46); `java` follows the promoted PATH.
        default_runtime_path="java",
        runtime_glob="/usr/lib/jvm/java-*/bin/java",
        query=CompileAndRunQuery(suffix=".java", hook="java"),
        input_queue=True,
        path_promotions=(
            PromoteFirstMatch(pattern="/usr/lib/jvm/java-*/jre/bin"),
            PromoteFirstMatch(pattern="/usr/lib/jvm/java-*/bin"),
        ),
        build=Heuristic(
            # docs/protocol.md §10.6 #47: upstream passed all sources as ONE argument, with JVM flags JDK >= 10 rejects.
            candidates=(RunWithSources(sources="**/*.java", command="javac -d . {sources}"),),
            otherwise=missing("cannot find any .java source file"),
        ),
        exec=Heuristic(
            candidates=(
                RunIfFile(path="main/Main.class", command="{runtime} main.Main"),
                RunIfFile(path="Main.class", command="{runtime} Main"),
            ),
            otherwise=missing("cannot find entry class (main.Main)."),
        ),
    ),
    LangSpec(
        name="haskell",
        log_prefix="haskell-kernel",
        default_runtime_path="ghc",  # upstream's /usr/bin/ghc was unused; ghc usually lives in /opt/ghc/*/bin
        query=CompileAndRunQuery(suffix=".hs", steps=("runhaskell {src}",)),
        path_promotions=(
            PromoteFirstMatch(pattern="/opt/happy/*/bin"),
            PromoteFirstMatch(pattern="/opt/alex/*/bin"),
            PromoteFirstMatch(pattern="/opt/cabal/*/bin"),
            PromoteFirstMatch(pattern="/opt/ghc/*/bin"),
            Promote(path="{home}/.cabal/bin"),
        ),
        build=Heuristic(
            candidates=(RunWithSources(sources="**/*.hs", command="{runtime} --make -o main {sources}"),),
            otherwise=missing("cannot find any .hs source file"),
        ),
        exec=_exec_main("main", "./main"),
    ),
    LangSpec(
        name="julia",
        log_prefix="julia-kernel",
        default_runtime_path="/usr/local/julia",
        query=JupyterQuery(kernelspec_name="julia"),
        interrupt="jupyter",
        input_queue=True,
        env_defaults={"JULIA_LOAD_PATH": "/opt/julia:/usr/local/julia"},
        path_promotions=(
            Promote(path="/usr/local/cuda/bin"),
            Promote(path="/usr/local/nvidia/bin"),
            Promote(path="/usr/local/julia/bin"),
            Promote(path="/opt/julia/bin"),
        ),
        build=_no_build("julia"),
        exec=_exec_main("main.jl", "julia main.jl"),
        init_commands=("/usr/local/bin/movecompiled.sh",),
    ),
    LangSpec(
        name="lua",
        log_prefix="lua-kernel",
        default_runtime_path="/usr/local/bin/lua",
        query=CompileAndRunQuery(suffix=".lua", steps=("{runtime} {src}",)),
        build=_no_build("lua"),
        exec=_exec_main("main.lua", "{runtime} main.lua"),
    ),
    LangSpec(
        name="nodejs",
        log_prefix="nodejs-kernel",
        default_runtime_path="/usr/local/bin/node",  # docs/protocol.md §10.6 #46: upstream had /usr/bin/local/node
        query=CompileAndRunQuery(suffix=".js", steps=("{runtime} {src}",)),
        build=_no_build("nodejs"),
        exec=_exec_main("main.js", "{runtime} main.js"),
    ),
    LangSpec(
        name="octave",
        log_prefix="octave-kernel",
        default_runtime_path="/usr/bin/octave-cli",
        query=CompileAndRunQuery(suffix=".m", steps=("{runtime} {src}",)),
        build=_no_build("octave"),
        exec=_exec_main("main.m", "{runtime} main.m"),  # docs/protocol.md §10.6 #47: upstream checked main.js
    ),
    LangSpec(
        name="php",
        log_prefix="php-kernel",
        default_runtime_path="/usr/bin/php",
        query=CompileAndRunQuery(suffix=".php", steps=("{runtime} {src}",), prologue="<?php\n\n"),
        build=_no_build("php"),
        exec=_exec_main("main.php", "{runtime} main.php"),
    ),
    LangSpec(
        name="r",
        log_prefix="r-kernel",
        default_runtime_path="/usr/bin/R",
        query=JupyterQuery(kernelspec_name="ir"),
        interrupt="jupyter",
        input_queue=True,
        build=_no_build("r"),
        exec=_exec_main("main.R", "Rscript main.R"),
    ),
    LangSpec(
        name="scheme",
        log_prefix="scheme-kernel",
        default_runtime_path="scheme",  # upstream's /usr/bin/rustc was a copy-paste slip (docs/protocol.md §10.6 #46)
        query=CompileAndRunQuery(suffix=".scm", steps=("{runtime} --quiet < {src}",)),
        build=Heuristic(),
        exec=Heuristic(),
    ),
    LangSpec(
        name="git",
        log_prefix="shell-kernel",
        default_runtime_path=None,
        query=TerminalQuery(),
        input_queue=True,
        build=_UNSUPPORTED_BATCH,
        exec=_UNSUPPORTED_BATCH,
    ),
    LangSpec(
        name="vendor.aws_polly",
        log_prefix="vendor.aws_polly-kernel",
        default_runtime_path=None,
        query=ExternalQuery(handler=POLLY_HANDLER),
        interrupt="worker",
        build=_UNSUPPORTED_BATCH,
        exec=_UNSUPPORTED_BATCH,
    ),
    LangSpec(
        name="vendor.h2o",
        log_prefix="h2o-kernel",
        default_runtime_path="/opt/h2oai/dai/python/bin/python",
        # Upstream's empty kspec name matched any kernel (docs/protocol.md §10.2 #14); H2O ships a Python kernel.
        query=JupyterQuery(kernelspec_name="python"),
        interrupt="jupyter",
        input_queue=True,
        build=_PYTHON_BUILD,
        exec=Heuristic(  # as python, but without the batch flag (docs/protocol.md §8.1)
            candidates=(RunIfFile(path="main.py", command="{runtime} main.py"),),
            otherwise=missing("cannot find main.py"),
        ),
        init_commands=("echo 'Daemonizing H2O (run-dai.sh)...' && mkdir -p /opt/h2oai/dai && /opt/h2oai/dai/run-dai.sh",),
    ),
)
