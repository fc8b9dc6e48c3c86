"""Classes by what they own (docs/architecture.md §2): no class in the package grows past 400 lines, and the generic
supervisor's module stays within 400 lines (its bookkeeping lives in supervision/table.py and record.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import kernel_runner

PACKAGE_DIR = Path(kernel_runner.__file__).parent
MAX_CLASS_LINES = 400
MAX_SUPERVISOR_LINES = 400


def class_sizes(source: str) -> dict[str, int]:
    """Every class (nested ones too) by its lines, from its first decorator to its last line."""
    sizes: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
            assert node.end_lineno is not None
            sizes[node.name] = node.end_lineno - first + 1
    return sizes


def test_the_measure_counts_a_class_from_its_decorator_to_its_end() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_CLASS_LINES))
    source = f"import attrs\n\n@attrs.define\nclass Big:\n{body}\n\nclass Small:\n    pass\n"
    assert class_sizes(source) == {"Big": MAX_CLASS_LINES + 2, "Small": 2}


def test_no_class_is_over_400_lines() -> None:
    oversized = [
        f"{path.relative_to(PACKAGE_DIR.parent)}: {name} has {lines} lines"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for name, lines in class_sizes(path.read_text()).items()
        if lines > MAX_CLASS_LINES
    ]
    assert not oversized, "split these by what they own: " + "; ".join(oversized)


def test_the_supervisor_module_is_at_most_400_lines() -> None:
    lines = len((PACKAGE_DIR / "supervisor.py").read_text().splitlines())
    assert lines <= MAX_SUPERVISOR_LINES, f"supervisor.py has {lines} lines; bookkeeping belongs in supervision/"
