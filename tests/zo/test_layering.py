"""fedmezo.zo reads bottom-up: its modules import each other without a cycle, at module or function level.

A cycle used to be held together by imports deferred into function bodies; this test reads every import
statement wherever it stands, so neither a cycle nor such a dodge can come back unnoticed.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = "fedmezo.zo"
ZO = Path(__file__).resolve().parents[2] / "fedmezo" / "zo"
MODULES = {path.stem: path for path in ZO.glob("*.py")}
# Deferred on purpose: triton is optional, slow to import, and must see TRITON_INTERPRET before it loads.
OPTIONAL_KERNELS = {f"{PACKAGE}._triton_kernels", f"{PACKAGE}._triton_fingerprint"}


def module_name(stem: str) -> str:
    return PACKAGE if stem == "__init__" else f"{PACKAGE}.{stem}"


def from_package(node: ast.ImportFrom) -> set[str]:
    """`from fedmezo.zo import x`: the submodule x, or the package (__init__) for any other name."""
    return {f"{PACKAGE}.{alias.name}" if alias.name in MODULES else PACKAGE for alias in node.names}


def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The fedmezo.zo modules an import statement loads (the package itself for names from __init__)."""
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif node.level:  # relative: from . import x, from .x import y
        names = {f"{PACKAGE}.{node.module}"} if node.module else from_package(node)
    elif node.module == PACKAGE:
        names = from_package(node)
    else:
        names = {node.module or ""}
    return {n for n in names if n == PACKAGE or n.startswith(f"{PACKAGE}.")}


def imports(stem: str) -> tuple[set[str], set[str]]:
    """(all intra-package imports, those inside a function body) of one module."""
    tree = ast.parse(MODULES[stem].read_text())
    everywhere: set[str] = set()
    deferred: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    deferred |= targets(inner)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            everywhere |= targets(node)
    return everywhere - {module_name(stem)}, deferred


def graph() -> dict[str, set[str]]:
    return {module_name(stem): imports(stem)[0] for stem in MODULES}


def test_the_parser_sees_the_layers():
    """Guards the test itself: known edges appear, so an acyclic verdict is not an empty graph's."""
    edges = graph()
    assert f"{PACKAGE}.backend" in edges[f"{PACKAGE}.params"]
    assert f"{PACKAGE}.interface" in edges[f"{PACKAGE}.cpu_kernel"]
    assert f"{PACKAGE}._triton_kernels" in edges[f"{PACKAGE}.triton_kernel"]  # a function-level import
    assert f"{PACKAGE}.delta" in edges[PACKAGE]


def test_intra_package_imports_are_acyclic():
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle in {PACKAGE}: {' imports '.join(reversed(error.args[1]))}")
    assert set(order) >= set(graph())


def test_only_optional_kernels_are_imported_inside_functions():
    for stem in MODULES:
        deferred = imports(stem)[1] - OPTIONAL_KERNELS
        assert not deferred, f"{module_name(stem)} defers imports of {sorted(deferred)} into a function"
