"""The package's import graph keeps the architecture's rules (docs/architecture.md §2).

- no import cycles between kernel_runner modules, counting lazy imports inside functions and type-only imports;
- every import points to a package of the same layer or a lower one (LAYERS: packages, not file lists);
- no actor package imports another actor's package, the supervisor, the composition root or the command line;
- the generic supervision library and the supervisor know nothing of services, languages or the wire.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import kernel_runner

PACKAGE_DIR = Path(kernel_runner.__file__).parent
# Each package (or module) by its layer, lowest first; the longest matching prefix decides. The package root imports
# nothing (its names load lazily), so it is the lowest.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kernel_runner", "kernel_runner.ids", "kernel_runner.excerpts", "kernel_runner.notices",
     "kernel_runner.generations", "kernel_runner.messages", "kernel_runner.langs", "kernel_runner.drawing",
     "kernel_runner.observability.loguru_asyncio"),  # the root runs it before anything imports loguru
    ("kernel_runner.observability",),  # log set-up, events, log books: what everything above may log through
    ("kernel_runner.supervision", "kernel_runner.supervisor"),
    ("kernel_runner.config", "kernel_runner.procs", "kernel_runner.wire", "kernel_runner.servicedefs",
     "kernel_runner.context", "kernel_runner.control", "kernel_runner.probes"),
    ("kernel_runner.actors",),
    # The metrics exporter reads the whole tree's snapshot, so it sits with the composition root that starts it.
    ("kernel_runner.runtime", "kernel_runner.observability.metrics", "kernel_runner.cli", "kernel_runner.client",
     "kernel_runner.testing", "kernel_runner.__main__"),
)
# What the generic supervisor may build on, directly or through its imports: no domain package in here.
SUPERVISION_PACKAGES = ("kernel_runner.supervision", "kernel_runner.supervisor", "kernel_runner.observability.events",
                        "kernel_runner.observability.debug_lines", "kernel_runner.ids")
# An actor package may not import these (nor another actor's package).
ABOVE_ACTORS = ("kernel_runner.supervisor", "kernel_runner.runtime", "kernel_runner.cli", "kernel_runner.control")

Graph = Mapping[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], *, type_only_too: bool = False) -> set[str]:
    """Every kernel_runner module this file imports when it runs (`if TYPE_CHECKING:` blocks do not run, unless
    `type_only_too`: a cycle through type hints is still a cycle for the reader).

    `from kernel_runner import wire` counts as importing kernel_runner.wire.frames: a parent package is imported before any
    of its modules anyway, so counting it would make every module depend on kernel_runner/__init__.py.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = set() if type_only_too else {
        id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
        for stmt in node.body for inner in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def package_graph(*, type_only_too: bool = False) -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules, type_only_too=type_only_too) - {name} for name, path in files.items()}


def layer_of(module: str) -> int:
    """The layer of the longest LAYERS prefix that holds `module`."""
    best, found = -1, None
    for layer, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), layer
    if found is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS")
    return found


def layer_breaks(graph: Graph) -> list[str]:
    return [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer_of(target) > layer_of(module)]


def actor_package(module: str) -> str | None:
    """`kernel_runner.actors.kernel` for any module of that actor's package; None outside the actors."""
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 and parts[1] == "actors" else None


def find_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def actor_rule_breaks(graph: Graph) -> list[str]:
    """An actor package importing another actor's package, or anything that builds or steers the tree."""
    breaks = []
    for module, targets in sorted(graph.items()):
        mine = actor_package(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = actor_package(target)
            if any(target == above or target.startswith(above + ".") for above in ABOVE_ACTORS):
                breaks.append(f"{module} imports {target}, above the actors")
            elif theirs is not None and theirs != mine:
                breaks.append(f"{module} imports {target}, another actor's package")
    return breaks


def reachable(graph: Graph, roots: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def test_the_package_has_no_import_cycle_not_even_through_type_hints() -> None:
    graph = package_graph(type_only_too=True)
    # The package root's type-only imports only name its lazy public API for type checkers (nothing is imported).
    graph["kernel_runner"] = package_graph()["kernel_runner"]
    assert find_cycles(graph) == []


def test_every_import_points_to_the_same_layer_or_below() -> None:
    assert layer_breaks(package_graph()) == []


def test_no_actor_package_imports_another_actor_or_what_steers_the_tree() -> None:
    assert actor_rule_breaks(package_graph()) == []


def test_the_supervisor_knows_nothing_of_the_domain() -> None:
    graph = package_graph()
    roots = ["kernel_runner.supervisor"] + [m for m in graph if m.startswith("kernel_runner.supervision.")]
    outside = {m for m in reachable(graph, roots)
               if not any(m == p or m.startswith(p + ".") for p in SUPERVISION_PACKAGES)}
    assert outside == set()


def test_every_package_has_a_layer_and_each_actor_its_own_package() -> None:
    graph = package_graph()
    for module in graph:
        layer_of(module)  # raises for a module in no layer
    actors = {m for m in graph if m.startswith("kernel_runner.actors.")}
    assert actors and all(actor_package(m) != m or m.count(".") == 2 for m in actors)
    assert not [m for m in actors if m.count(".") == 2 and not (PACKAGE_DIR / "actors" / m.split(".")[2]).is_dir()]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: Graph, expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_the_actor_rule_catches_a_sibling_import_and_a_supervisor_import() -> None:
    graph = {
        "kernel_runner.actors.health.actor": {"kernel_runner.actors.service.actor", "kernel_runner.supervision.actor"},
        "kernel_runner.actors.kernel.actor": {"kernel_runner.supervisor", "kernel_runner.actors.kernel.channels"},
    }
    assert actor_rule_breaks(graph) == [
        "kernel_runner.actors.health.actor imports kernel_runner.actors.service.actor, another actor's package",
        "kernel_runner.actors.kernel.actor imports kernel_runner.supervisor, above the actors",
    ]


def test_the_layer_rule_catches_an_upward_import() -> None:
    graph = {"kernel_runner.messages": {"kernel_runner.wire.frames"}, "kernel_runner.wire.frames": {"kernel_runner.ids"}}
    assert layer_breaks(graph) == ["kernel_runner.messages (layer 0) imports kernel_runner.wire.frames (layer 3)"]


def test_type_only_imports_do_not_count_and_a_package_import_names_its_module(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from kernel_runner import messages, __version__\n"
        "if TYPE_CHECKING:\n"
        "    from kernel_runner.supervisor import SupervisorActor\n"
        "def later():\n"
        "    from kernel_runner.wire import frames\n"
    )
    modules = {"kernel_runner", "kernel_runner.messages", "kernel_runner.supervisor", "kernel_runner.wire",
               "kernel_runner.wire.frames"}
    assert imports_of(source, modules) == {"kernel_runner", "kernel_runner.messages", "kernel_runner.wire.frames"}
    assert "kernel_runner.supervisor" in imports_of(source, modules, type_only_too=True)
