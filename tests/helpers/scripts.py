"""The repository's scripts (benchmarks/*.py) loaded as modules, so tests call their functions directly."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

__all__ = ["ROOT", "load_script", "script_module"]

ROOT = Path(__file__).resolve().parents[2]


def load_script(relative: str) -> ModuleType:
    """`relative` (from the repository root) as the module named by its stem, left in sys.modules: its
    dataclasses and pickles look their module up by name."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


@contextmanager
def script_module(relative: str) -> Iterator[ModuleType]:
    """`load_script`, removed from sys.modules again when the block ends."""
    module = load_script(relative)
    try:
        yield module
    finally:
        sys.modules.pop(module.__name__, None)
