"""The package's import graph keeps the architecture's rules (docs/architecture.md §2).

- no import cycles between kernel_runner modules (lazy imports inside functions count too);
- no actor module imports the supervisor or another actor's module (an actor's private helper-thread modules
  belong to it, and every actor may use actors.base);
- the supervisor and the supervision vocabulary know nothing of services, languages or the wire.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import kernel_runner

PACKAGE_DIR = Path(kernel_runner.__file__).parent
ACTOR_HELPERS = {
    "kernel_runner.actors.agent_link": "kernel_runner.actors.router",
    "kernel_runner.actors.job": "kernel_runner.actors.lang_runner",
    "kernel_runner.actors.user_input": "kernel_runner.actors.lang_runner",
    "kernel_runner.actors.kernel_channels": "kernel_runner.actors.kernel",
    "kernel_runner.actors.terminal_io": "kernel_runner.actors.terminal",
    "kernel_runner.actors.polly_worker": "kernel_runner.actors.polly",
}
SHARED_ACTOR_MODULES = {"kernel_runner.actors", "kernel_runner.actors.base"}
# What the generic supervisor may build on, directly or through its imports: no domain module in here.
SUPERVISION_LAYER = {
    "kernel_runner.child_record", "kernel_runner.clock", "kernel_runner.debug_lines", "kernel_runner.directory",
    "kernel_runner.events",
    "kernel_runner.exits", "kernel_runner.ids", "kernel_runner.policy", "kernel_runner.refs", "kernel_runner.supervision",
    "kernel_runner.supervisor", "kernel_runner.timers",
}

Graph = Mapping[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every kernel_runner module this file imports when it runs (`if TYPE_CHECKING:` blocks do not run).

    `from kernel_runner import wire` counts as importing kernel_runner.wire: a parent package is imported before any
    of its modules anyway, so counting it would make every module depend on kernel_runner/__init__.py.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
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


def package_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


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


def owner(module: str) -> str:
    return ACTOR_HELPERS.get(module, module)


def actor_rule_breaks(graph: Graph) -> list[str]:
    """An actor module (or its helper) importing the supervisor, or another actor's module."""
    breaks = []
    for module, targets in sorted(graph.items()):
        if not module.startswith("kernel_runner.actors.") or module in SHARED_ACTOR_MODULES:
            continue
        for target in sorted(targets):
            if target == "kernel_runner.supervisor":
                breaks.append(f"{module} imports the supervisor")
            elif target.startswith("kernel_runner.actors") and target not in SHARED_ACTOR_MODULES \
                    and owner(target) != owner(module):
                breaks.append(f"{module} imports {target}, another actor's module")
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


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycles(package_graph()) == []


def test_no_actor_module_imports_the_supervisor_or_another_actor() -> None:
    assert actor_rule_breaks(package_graph()) == []


def test_the_supervisor_knows_nothing_of_the_domain() -> None:
    graph = package_graph()
    assert reachable(graph, ["kernel_runner.supervisor"]) - SUPERVISION_LAYER == set()
    assert reachable(graph, ["kernel_runner.supervision"]) - SUPERVISION_LAYER == set()


def test_every_actor_helper_module_still_exists() -> None:
    # A renamed helper would silently stop being checked as its actor's.
    assert set(ACTOR_HELPERS) <= set(package_graph())


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
        "kernel_runner.actors.health": {"kernel_runner.actors.service", "kernel_runner.actors.base"},
        "kernel_runner.actors.kernel": {"kernel_runner.supervisor", "kernel_runner.actors.kernel_channels"},
    }
    assert actor_rule_breaks(graph) == [
        "kernel_runner.actors.health imports kernel_runner.actors.service, another actor's module",
        "kernel_runner.actors.kernel imports the supervisor",
    ]


def test_type_only_imports_do_not_count_and_a_package_import_names_its_module(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from kernel_runner import wire, __version__\n"
        "if TYPE_CHECKING:\n"
        "    from kernel_runner.supervisor import SupervisorActor\n"
        "def later():\n"
        "    from kernel_runner.actors import base\n"
    )
    modules = {"kernel_runner", "kernel_runner.wire", "kernel_runner.supervisor", "kernel_runner.actors",
               "kernel_runner.actors.base"}
    assert imports_of(source, modules) == {"kernel_runner", "kernel_runner.wire", "kernel_runner.actors.base"}
