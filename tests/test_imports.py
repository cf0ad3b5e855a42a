"""Imports go one way (style §2): client never imports server; zo is pure math; the CLI only wires."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: Path) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[path] = names
    return out


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("client", ("fedmezo.server", "fedmezo.dashboard")),
        ("server", ("fedmezo.client", "fedmezo.dashboard")),
        ("dashboard", ("fedmezo.server", "fedmezo.client")),
    ],
)
def test_deployables_do_not_import_each_other(folder: str, forbidden: tuple[str, ...]) -> None:
    for path, names in _imports(ROOT / folder).items():
        bad = sorted(n for n in names if n.startswith(forbidden))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize(
    "folder", ["fedmezo/zo", "fedmezo/fl", "fedmezo/data", "fedmezo/models", "fedmezo/sim"]
)
def test_core_imports_no_deployable(folder: str) -> None:
    """The shared core sits under the deployables: it imports none of server, client, dashboard."""
    forbidden = ("fedmezo.server", "fedmezo.client", "fedmezo.dashboard")
    for path, names in _imports(ROOT / folder).items():
        bad = sorted(n for n in names if n.startswith(forbidden))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_fl_is_plain_protocol_code() -> None:
    """fedmezo/fl: no gRPC, no SQLite, no asyncio; only the core, torch, numpy, safetensors and protobuf."""
    allowed_roots = {"torch", "numpy", "safetensors", "tqdm", "fedmezo", *sys.stdlib_module_names}
    banned = {"grpc", "sqlite3", "asyncio"}
    for path, names in _imports(ROOT / "fedmezo" / "fl").items():
        bad = sorted(n for n in names if n.split(".")[0] in banned or n.split(".")[0] not in allowed_roots)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_zo_imports_only_torch_numpy_stdlib() -> None:
    allowed_roots = {"torch", "numpy", "fedmezo", "triton", "numba", *sys.stdlib_module_names}
    for path, names in _imports(ROOT / "fedmezo" / "zo").items():
        bad = sorted(n for n in names if n.split(".")[0] not in allowed_roots or
                     (n.startswith("fedmezo") and not n.startswith("fedmezo.zo")))  # fmt: skip
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_generated_stubs_import_nothing_of_ours_but_themselves() -> None:
    for path, names in _imports(ROOT / "fedmezo" / "v1").items():
        bad = sorted(n for n in names if n.startswith("fedmezo") and not n.startswith("fedmezo.v1"))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
