"""No import circles: the modules of dyt_deploy and service, as a graph of every import (at module
level and inside functions alike: a lazy import is still a dependency), have no cycle. A circle means
two modules share a piece that belongs one layer down; move it there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dyt_deploy", "service")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from . import x`` names the package)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: dict[str, Path], tree: ast.AST | None = None) -> set[str]:
    """The project modules ``path`` (parsed: ``tree``) imports (``from pkg import mod`` counts as
    ``pkg.mod`` when it is one)."""
    found = set()
    for node in ast.walk(tree or ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, path.name == "__init__.py", node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as sorted names;
    a package's ``__init__`` re-exporting its own modules is not a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def without_package_inits(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges into a package from its own submodules (``from . import x`` inside the package,
    ``from .. import errors`` naming a sibling through the parent): the package's __init__ re-exports."""
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}


def test_the_package_has_no_import_circles() -> None:
    found = cycles(without_package_inits(graph()))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


# service/'s layers, lowest first: a module may import service modules of its own layer or below
# (the subpackages' docstrings say the same); type-only imports (under ``if TYPE_CHECKING:``) aside.
SERVICE_LAYERS = (("service.errors", "service.settings"), ("service.protocol",), ("service.telemetry",),
                  ("service.models",), ("service.http",), ("service.engines",), ("service.cli", "service.demo"))
# the one import of service from dyt_deploy: the `dyt` command's `dyt serve` hands over to dyt-serve


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(SERVICE_LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def runtime_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """:func:`imports_of` without the imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = [ast.Pass()]
    return imports_of(name, path, known, tree)


def test_service_imports_only_downward_and_dyt_deploy_never_imports_service() -> None:
    known, upward = modules(), []
    for name, path in known.items():
        targets = runtime_imports(name, path, known)
        if name.startswith("dyt_deploy"):
            upward += [f"{name} -> {t}" for t in targets if t.startswith("service")]
        elif (rank := layer_of(name)) is not None:
            upward += [f"{name} -> {t}" for t in targets if (layer_of(t) or 0) > rank]
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))
