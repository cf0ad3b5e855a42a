"""Packaging: every package folder is listed in pyproject.toml, and public names exist."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]


def package_folders() -> dict[str, Path]:
    """Package name -> folder for every folder with an __init__.py, following the package-dir map."""
    found: dict[str, Path] = {}
    for name, rel in PACKAGE_DIRS.items():
        base = ROOT / rel
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            if "__pycache__" in parts or "static" in parts:
                continue
            found[".".join((name, *parts))] = init.parent
    # subpackages of fedmezo that are mapped elsewhere are listed under their own key
    return found


def test_every_package_folder_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = sorted(set(package_folders()) - listed)
    assert not missing, f"add these to [tool.setuptools] packages: {missing}"


@pytest.mark.parametrize(
    "module_name", sorted(set(PYPROJECT["tool"]["setuptools"]["packages"]) - {"fedmezo.v1"})
)
def test_public_names_exist(module_name):
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"{module_name}.__all__ names {name!r}, which does not exist"


def test_torch_range_admits_the_pinned_cpu_build():
    deps = PYPROJECT["project"]["dependencies"]
    torch_spec = next(d for d in deps if d.startswith("torch"))
    from packaging.specifiers import SpecifierSet

    assert "2.13.0" in SpecifierSet(torch_spec.removeprefix("torch"))
