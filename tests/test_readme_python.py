"""Every Python name README.md and docs/*.md show exists: each ```python block's imports resolve
(``from m import a`` -> ``m.a``), and every attribute read off an imported project module
(``dyt_deploy.optimize``, ``kernels.use_kernels``) is there. Names of other libraries are imported
only when they are installed (the blocks may show optional clients)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PROJECT = ("dyt_deploy", "service")


def blocks() -> list[tuple[str, str]]:
    return [(f"{page.relative_to(ROOT)} block {i + 1}", text) for page in PAGES
            for i, text in enumerate(BLOCK.findall(page.read_text(encoding="utf-8")))]


def shown_names(source: str) -> set[str]:
    """Dotted names the block imports or reads off a module it imported (``a.b.c``)."""
    tree = ast.parse(source)
    names, modules = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                bound = alias.asname or alias.name.split(".")[0]  # `import a.b` binds a; `import a.b as c`, c
                modules[bound] = alias.name if alias.asname else bound
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names.add(f"{node.module}.{alias.name}")
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in modules and modules[inner.id].startswith(PROJECT):
                names.add(".".join([modules[inner.id], *chain[:1]]))
    return names


def resolve(dotted: str) -> object:
    """The object ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize(("where", "source"), blocks(), ids=[w for w, _ in blocks()])
def test_every_python_name_the_pages_show_exists(where: str, source: str) -> None:
    for name in sorted(shown_names(source)):
        if not name.startswith(PROJECT):
            pytest.importorskip(name.split(".")[0])
        try:
            resolve(name)
        except (ImportError, AttributeError) as err:
            raise AssertionError(f"{where}: {name} does not exist ({err})") from None


def test_the_name_finder_sees_imports_and_module_attributes() -> None:
    found = shown_names("import dyt_deploy\nfrom dyt_deploy import kernels as k\nimport json\n"
                        "dyt_deploy.optimize(m)\nk.use_kernels(m)\njson.dumps(1)\nx.y\n")
    assert found == {"dyt_deploy", "dyt_deploy.kernels", "json", "dyt_deploy.optimize",
                     "dyt_deploy.kernels.use_kernels"}
    with pytest.raises(AttributeError):
        resolve("dyt_deploy.no_such_name")
