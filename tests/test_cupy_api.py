"""Every ``xp.<name>`` the library calls must exist in CuPy, and only backend.py may import CuPy.

The layers are written once for NumPy and CuPy (``xp = get_array_module(x)``).  NumPy has
functions CuPy lacks (``put_along_axis``, ``lib.stride_tricks`` ...); using one would
work on the CPU and fail only on a GPU machine, long after the tests passed.  CuPy
imports without a GPU, so this check runs everywhere CuPy is installed.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minisegnet"
RUNTIME_DEPENDENCIES = {"numpy", "matplotlib", "PIL", "tqdm", "minisegnet"}


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def xp_attribute_uses(tree: ast.AST) -> set[tuple[str, ...]]:
    """``("zeros",)`` for ``xp.zeros``, ``("random", "default_rng")`` for ``xp.random.default_rng``."""
    uses = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id == "xp":
            uses.add((node.attr,))
        elif (
            isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "xp"
        ):
            uses.add((node.value.attr, node.attr))
    return uses


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of absolute imports (``import a.b`` and ``from a.b import c`` give ``a``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def parsed_package():
    return [(path, ast.parse(path.read_text(), filename=str(path))) for path in package_files()]


def test_every_xp_function_exists_in_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: cannot check the names against it")
    missing, seen = [], set()
    for path, tree in parsed_package():
        for chain in sorted(xp_attribute_uses(tree)):
            seen.add(chain)
            obj = cupy
            for part in chain:
                obj = getattr(obj, part, None)
                if obj is None:
                    missing.append(f"{path.relative_to(PACKAGE.parent)}: xp.{'.'.join(chain)}")
                    break
    assert not missing, "not in CuPy (the code would fail on a GPU):\n" + "\n".join(missing)
    assert len(seen) >= 5, f"the scan found only {sorted(seen)}: is the package using `xp = get_array_module(...)`?"


def test_the_scan_sees_nested_names():
    tree = ast.parse("y = xp.linalg.norm(xp.random.default_rng(0).random(3)) + xp.zeros(2)")
    assert xp_attribute_uses(tree) == {("linalg",), ("linalg", "norm"), ("random",), ("random", "default_rng"),
                                       ("zeros",)}


def test_only_backend_imports_cupy():
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path, tree in parsed_package()
        if "cupy" in imported_modules(tree) and path.name != "backend.py"
    ]
    assert not offenders, f"only minisegnet/backend.py may import CuPy; also imported in: {offenders}"


def test_library_imports_only_runtime_dependencies():
    """numpy, matplotlib, pillow, tqdm and the standard library: no torch, scipy, cupy (except via backend)."""
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for path, tree in parsed_package():
        allowed = RUNTIME_DEPENDENCIES | stdlib | ({"cupy"} if path.name == "backend.py" else set())
        extra = imported_modules(tree) - allowed
        if extra:
            problems.append(f"{path.relative_to(PACKAGE.parent)}: {sorted(extra)}")
    assert not problems, "imports outside the runtime dependencies:\n" + "\n".join(problems)
