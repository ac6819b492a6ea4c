"""The package's layering, as the README's architecture section states it: each unit of dyt_deploy
imports only the units listed for it here, and none imports the service (the service builds on dyt_deploy)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dyt_deploy"

# unit -> the other dyt_deploy units it may import (lazy imports included)
ALLOWED = {
    "errors": set(),
    "dtypes": {"errors"},
    "parity": set(),
    "specs": set(),
    "nn": {"errors"},
    "triton_config": {"dtypes", "errors"},
    "repository": {"errors", "triton_config"},
    "models": {"errors", "nn", "feeds", "specs"},
    "feeds": {"dtypes", "specs"},
    "checkpoint": {"errors", "hf", "loaded", "models", "pt2_safety", "repository"},
    "pt2_safety": {"errors"},  # .pt2 archives inspected before torch unpickles anything
    "hf": {"errors", "loaded", "models", "nn", "specs"},  # Hugging Face folders; checkpoint dispatches to it
    "loaded": set(),  # LoadedModel, what every reader returns
    "kernels": {"errors", "nn"},
    "tensorrt": {"dtypes", "errors", "kernels", "repository", "triton_config"},
    "runners": {"dtypes", "errors", "kernels", "models", "optimize_model", "pt2_safety", "repository", "tensorrt"},
    "export": {"checkpoint", "dtypes", "errors", "feeds", "generation", "models", "nn", "parity", "repository",
               "runners", "specs", "tokenizer"},
    "tokenizer": {"errors"},  # tokenizer.json and bytes, for generation
    "generation": {"errors", "tokenizer"},  # dyt_deploy.generate: KV-cache decoding of any causal LM
    "cli_common": {"errors", "parity"},  # the console, user errors, the parity table
    "check_data": {"errors", "parity", "specs"},  # dyt-check --data: a labelled .npz against the model's inputs
    "reference": {"errors", "models", "repository"},  # the trained reference twins (train-reference)
    "optimize_model": {"errors", "kernels", "nn"},  # optimize(model): fold, kernels, torch.compile
    # INT8: exports the fp32 model (export), judges it (check_data, parity, the reference twins' test set)
    "quantize": {"check_data", "checkpoint", "errors", "export", "feeds", "models", "parity", "reference",
                 "repository", "runners", "specs"},
}
TOP = {"cli", "check", "bench"}  # may import any unit; none imports the service (which builds on dyt_deploy)
ALLOWED_SERVICE: set[str] = set()
# command-line modules that belong to the top layer: dyt-build (TensorRT and AOTInductor), dyt-check --data's
# tables, dyt train-reference beside the reference twins, dyt quantize beside the quantize package
COMMAND_LINE = {"build_cli.py": "cli", "check_cli.py": "cli", "reference/cli.py": "cli", "quantize/cli.py": "cli"}


def unit_of(path: Path) -> str:
    if path.relative_to(PACKAGE).as_posix() in COMMAND_LINE:
        return COMMAND_LINE[path.relative_to(PACKAGE).as_posix()]
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    """dyt_deploy units (and "service") that ``path`` imports, absolute or relative, at any depth."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            module = base + (node.module.split(".") if node.module else [])
            found.add(module[0] if module else node.names[0].name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            head, _, rest = node.module.partition(".")
            if head == "dyt_deploy" and rest:
                found.add(rest.split(".")[0])
            elif head == "service":
                found.add("service")
        elif isinstance(node, ast.Import):
            found |= {"service" for alias in node.names if alias.name.split(".")[0] == "service"}
    return found


def test_every_unit_is_listed() -> None:
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= set(ALLOWED) | TOP, sorted(units - set(ALLOWED) - TOP)


def test_units_import_only_what_the_architecture_allows() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(path)
        imported = imported_units(path) - {unit, "__init__"}
        if unit in TOP:
            bad = {"service"} & imported if unit not in ALLOWED_SERVICE else set()
        else:
            bad = imported - ALLOWED.get(unit, set())
        problems += [f"{path.relative_to(PACKAGE)} imports {name}" for name in sorted(bad)]
    assert not problems, problems


def test_the_service_path_to_feeds_needs_no_torch() -> None:
    """The service makes warm-up feeds with ``feeds``; that must not pull torch into its processes
    (nor its app: a text-generation model imports torch when it loads, and only then)."""
    import subprocess
    import sys

    code = ("import sys; from dyt_deploy.feeds import random_feed; from dyt_deploy.specs import TensorSpec; "
            "random_feed([TensorSpec('x', ('batch', 3))], {'batch': 2}, 0); "
            "import dyt_deploy.runners, dyt_deploy.triton_config, dyt_deploy.repository; "
            "import service.http.app, service.http.generate_routes; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_checker_sees_relative_and_absolute_imports() -> None:
    source = PACKAGE / "runners" / "registry.py"
    assert {"errors", "repository"} <= imported_units(source)
