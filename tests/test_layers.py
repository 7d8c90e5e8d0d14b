"""The layers of the design (design.md section 2) hold: imports point one way only.

Each package of service/ has a rank; a module may import its own package and lower ranks, never a higher
one (imports done inside functions count too: a lazy import is still a dependency). The HTTP layer reaches
the engine only through the backends' contract, and loadtest/ speaks HTTP only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RANKS = {
    "service.images": 0,
    "service.data": 0,
    "service.diffusion": 1,
    "service.model": 2,
    "service.engine": 3,
    "service.training": 3,
    "service.quality": 4,
    "service.backends": 5,
    "service.triton_worker": 6,
    "service.api": 6,
    "service.cli": 7,
}
FORBIDDEN = {  # beyond the ranks: which packages may not import which
    "service.api": ("service.engine", "service.triton_worker"),
    "service.backends": ("service.triton_worker",),
    "loadtest": ("service.engine", "service.backends", "service.model", "service.diffusion", "bench"),
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_of(module: str) -> str | None:
    return next((p for p in RANKS if module == p or module.startswith(p + ".")), None)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", sorted((ROOT / "service").rglob("*.py")), ids=lambda p: module_name(p))
def test_service_imports_point_down(path: Path) -> None:
    here = package_of(module_name(path))
    if here is None:
        return  # service/__init__.py
    upward = [m for m in imports(path) if (p := package_of(m)) and RANKS[p] > RANKS[here] and p != here]
    assert not upward, f"{module_name(path)} ({here}) imports a higher layer: {sorted(upward)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_forbidden_neighbours(package: str) -> None:
    folder = ROOT / package.replace(".", "/")
    found = [
        f"{module_name(path)} -> {m}"
        for path in sorted(folder.rglob("*.py"))
        for m in imports(path)
        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert not found, found
