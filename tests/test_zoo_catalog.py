"""``dyt-zoo list`` prints a table kept in dyt_deploy.cli (no torch import): every row must match
the zoo's built models, and the command must stay fast."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from dyt_deploy.cli import ZOO_CATALOG
from dyt_deploy.models import create_model, get_arch, list_models


def test_the_catalog_matches_the_built_models() -> None:
    built = []
    for name in list_models():
        with torch.device("meta"):  # shapes only
            model = create_model(name, init_weights=False)
        built.append((name, get_arch(name).family, model.config["norm"], sum(p.numel() for p in model.parameters())))
    assert list(ZOO_CATALOG) == built


def test_zoo_list_does_not_import_torch_and_is_fast() -> None:
    code = ("import sys, time; t = time.perf_counter(); from dyt_deploy.cli import zoo_app; "
            "zoo_app(['list'], standalone_mode=False); "
            "print('torch' in sys.modules, time.perf_counter() - t, file=sys.stderr)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    torch_loaded, took = done.stderr.split()
    assert "vit_small" in done.stdout and "22.1 M" in done.stdout
    assert torch_loaded == "False"
    assert float(took) < 1.0 and elapsed < 3.0  # the whole process, interpreter start included, on a busy machine
