"""No module of the package reads another object's private (underscore) attribute.

The same rule as ruff's SLF001 (on in pyproject.toml), checked here without ruff so that
the test suite alone catches it: an attribute ``x._name`` is private unless ``x`` is
``self``, ``cls`` or ``super()``, or the name is a dunder.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lake_mesh_consul

PACKAGE_DIR = Path(lake_mesh_consul.__file__).parent
#: Receivers a class may read its own private attributes through.
_OWN = frozenset({"self", "cls", "mcs"})
#: Files with reads still being removed by their owners (issue 13 turned the rule on while
#: they were being edited). Each entry must shrink, never grow: a new file here needs a
#: reason in the same commit.
PENDING: dict[str, str] = {}


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _is_own(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in _OWN
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def _private_reads(source: str, label: str) -> list[str]:
    """``label:line: expr`` of every private read (dunder methods such as ``__eq__`` may
    read the other operand's fields, as ruff's SLF001 allows)."""
    found: list[str] = []

    def visit(node: ast.AST, in_dunder: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_dunder
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inside = _is_dunder(child.name)
            if (
                isinstance(child, ast.Attribute)
                and child.attr.startswith("_")
                and not _is_dunder(child.attr)
                and not _is_own(child.value)
                and not in_dunder
            ):
                found.append(f"{label}:{child.lineno}: {ast.unparse(child)}")
            visit(child, inside)

    visit(ast.parse(source), in_dunder=False)
    return found


def test_no_module_reads_another_objects_private_attributes() -> None:
    reads: list[str] = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative in PENDING:
            continue
        reads.extend(_private_reads(path.read_text(encoding="utf-8"), relative))
    assert reads == []


def test_the_checker_finds_a_private_read() -> None:
    code = (
        "class A:\n"
        "    def f(self, other):\n"
        "        return self._x + other._y + super()._z\n"
        "    def __eq__(self, other):\n"
        "        return other._x == self._x\n"
    )
    assert _private_reads(code, "sample.py") == ["sample.py:3: other._y"]
