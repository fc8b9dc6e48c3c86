"""The language layer's entry points: the registry, runtime resolution, and the batch/query/init planners."""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from kernel_runner.langs.hooks import QUERY_HOOKS, batch_site_dir, sitecustomize_source
from kernel_runner.langs.spec import (
    BATCH_MODE_VAR,
    INPUT_SOCKET_VAR,
    LOCAL_FS,
    POLLY_HANDLER,
    Candidate,
    CompileAndRunQuery,
    CompileEachThenLink,
    ExternalQuery,
    FileToWrite,
    FsView,
    Heuristic,
    JupyterQuery,
    LangContext,
    LangSpec,
    LocalFs,
    NoQuery,
    NoStep,
    QueryMode,
    QueryPlan,
    RunFirstExecutable,
    RunIfFile,
    RunWithSources,
    ShellStep,
    StepPlan,
    TerminalQuery,
    missing,
)
from kernel_runner.langs.table import LANGS
from kernel_runner.messages import BatchKind

__all__ = [
    "POLLY_HANDLER",
    "REGISTRY",
    "CompileAndRunQuery",
    "ExternalQuery",
    "FileToWrite",
    "FsView",
    "JupyterQuery",
    "LangContext",
    "LangSpec",
    "LocalFs",
    "NoQuery",
    "NoStep",
    "QueryMode",
    "QueryPlan",
    "ShellStep",
    "StepPlan",
    "TerminalQuery",
    "UnknownLanguage",
    "batch_env",
    "batch_site_dir",
    "get_lang",
    "plan_batch",
    "plan_init",
    "plan_query",
    "resolve_runtime",
    "sitecustomize_source",
]

REGISTRY: Mapping[str, LangSpec] = MappingProxyType({spec.name: spec for spec in LANGS})


class UnknownLanguage(LookupError):
    """The command line named a language the runner does not have (docs/protocol.md §1.2)."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(name, self.known)

    def __str__(self) -> str:
        return f"unknown language {self.name!r}; valid names are: {', '.join(self.known)}"


def get_lang(name: str) -> LangSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownLanguage(name, REGISTRY) from None


def resolve_runtime(spec: LangSpec, override: str | None, fs: FsView = LOCAL_FS) -> str | None:
    """The command-line RUNTIME_PATH if given, else the first `runtime_glob` match, else the default (docs/protocol.md §1.2)."""
    if override is not None:
        return override
    if spec.runtime_glob is not None:
        for match in fs.glob(Path("/"), spec.runtime_glob):
            if fs.is_executable(match):
                return str(match)
    return spec.default_runtime_path


def batch_env(spec: LangSpec, ctx: LangContext) -> dict[str, str]:
    """Extra env of batch-flagged children (docs/protocol.md §5.4), plus the python input hook's folder (§5.6)."""
    env = {BATCH_MODE_VAR: "1"}
    if spec.python_input_hook and ctx.python_site_dir is not None:
        current = ctx.env.get("PYTHONPATH", "")
        # No trailing ':' when PYTHONPATH was empty: that would add the cwd to sys.path (docs/protocol.md §10.3 #28).
        env["PYTHONPATH"] = f"{ctx.python_site_dir}:{current}" if current else str(ctx.python_site_dir)
        env[INPUT_SOCKET_VAR] = str(ctx.input_socket)
    return env


def plan_batch(spec: LangSpec, kind: BatchKind, command: str, ctx: LangContext) -> StepPlan:
    """What a `clean`/`build`/`exec` op runs (docs/protocol.md §5.1); the caller still applies the failed-build rule (§5.2)."""
    if not command.strip():
        return NoStep(exit_code=0)  # docs/protocol.md §5.1: nothing runs, the op still finishes with 0
    if command != "*":
        return ShellStep(command=command, env_extra=batch_env(spec, ctx) if kind == "exec" else {})
    if kind == "build" and ctx.fs.is_file(ctx.work_dir / "Makefile"):
        return ShellStep(command="make")  # docs/protocol.md §5.1: before the language's own heuristic, whatever the language
    heuristic: Heuristic = {"clean": spec.clean, "build": spec.build, "exec": spec.exec}[kind]
    try:
        for candidate in heuristic.candidates:
            step = _try_candidate(spec, candidate, ctx)
            if step is not None:
                return step
    except _NoRuntime:
        return missing(f"no runtime path is set for the {spec.name} kernel")
    return heuristic.otherwise


def plan_query(spec: LangSpec, source: str, ctx: LangContext, tmp_dir: Path) -> QueryPlan | NoStep:
    """Files and steps of a compile-and-run `code` request (docs/protocol.md §8.1).

    `tmp_dir` must be a fresh directory private to this run (e.g. from tempfile.mkdtemp); binaries go there.
    The source itself goes into the work dir, as upstream did, so relative imports and includes still work;
    its name is derived from `tmp_dir` so concurrent runners cannot collide. Raises ValueError for languages
    whose queries do not compile and run (a caller bug, not bad input).
    """
    query = spec.query
    if not isinstance(query, CompileAndRunQuery):
        raise ValueError(f"the {spec.name} kernel answers queries with {type(query).__name__}, not a plan")
    if query.hook is not None:
        return QUERY_HOOKS[query.hook](spec, source, ctx, tmp_dir)
    # Letters and digits only: rustc wants an identifier, and go reads `_linux`/`_test` name endings as constraints.
    src_name = "tmp" + re.sub(r"[^A-Za-z0-9]", "", tmp_dir.name) + query.suffix
    src = ctx.work_dir / src_name
    values = {"src": shlex.quote(src_name), "out": shlex.quote(str(tmp_dir))}
    try:
        steps = tuple(ShellStep(command=_render(template, ctx, values)) for template in query.steps)
    except _NoRuntime:
        return missing(f"no runtime path is set for the {spec.name} kernel")
    return QueryPlan(files=(FileToWrite(path=src, content=query.prologue + source),), steps=steps, cleanup=(src, tmp_dir))


def plan_init(spec: LangSpec) -> tuple[ShellStep, ...]:
    """Language-init commands (docs/protocol.md §8.1); run once before serving, a failure only shows in its exit code."""
    return tuple(ShellStep(command=command) for command in spec.init_commands)


# --------------------------------------------------------------------------------------------


class _NoRuntime(Exception):
    """A template needs {runtime} but none is set (git and vendor.aws_polly have none)."""


def _render(template: str, ctx: LangContext, values: Mapping[str, str]) -> str:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if "runtime" in fields:
        if ctx.runtime_path is None:
            raise _NoRuntime
        values = {**values, "runtime": shlex.quote(ctx.runtime_path)}
    return template.format_map(values)


def _quote_all(paths: Iterable[Path]) -> str:
    return " ".join(shlex.quote(str(path)) for path in paths)


def _sources(ctx: LangContext, pattern: str) -> list[Path]:
    return [path for path in ctx.fs.glob(ctx.work_dir, pattern) if ctx.fs.is_file(ctx.work_dir / path)]


def _try_candidate(spec: LangSpec, candidate: Candidate, ctx: LangContext) -> ShellStep | None:
    """The step this candidate gives, or None when its files are not there."""
    fs, work = ctx.fs, ctx.work_dir
    match candidate:
        case RunIfFile(path=path, command=template, batch_mode=batch_mode):
            if not fs.is_file(work / path):
                return None
            return ShellStep(command=_render(template, ctx, {}), env_extra=batch_env(spec, ctx) if batch_mode else {})
        case RunWithSources(sources=pattern, command=template, if_file=if_file):
            sources = _sources(ctx, pattern)
            if (if_file is not None and not fs.is_file(work / if_file)) or not sources:
                return None
            return ShellStep(command=_render(template, ctx, {"sources": _quote_all(sources)}))
        case CompileEachThenLink(if_file=if_file, sources=pattern, compile=compile_template, link=link_template):
            sources = _sources(ctx, pattern)
            if not fs.is_file(work / if_file) or not sources:
                return None
            objects = [source.with_suffix(".o") for source in sources]
            compiles = [
                _render(compile_template, ctx, {"source": shlex.quote(str(s)), "object": shlex.quote(str(o))})
                for s, o in zip(sources, objects, strict=True)
            ]
            link = _render(link_template, ctx, {"objects": _quote_all(objects)})
            return ShellStep(command=" && ".join([*compiles, link]))  # && stops at the first failing compile
        case RunFirstExecutable(dirs=dirs):
            for folder in dirs:
                for found in fs.glob(work, f"{folder}/*"):
                    if fs.is_executable(work / found):
                        return ShellStep(command=shlex.quote(f"./{found}"))
            return None
