"""dyt-deploy: take transformers that use Dynamic Tanh from model.pt to production.

``import dyt_deploy`` stays light: the submodules (and torch) load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "DytDeployError": "errors",
    "CheckpointError": "errors",
    "DynamicTanh": "nn",
    "Derf": "nn",
    "create_norm": "nn",
    "convert_norms": "nn",
    "create_model": "models",
    "list_models": "models",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_model": "checkpoint",
    "export_onnx": "export",
    "export_model": "export",
    "ExportConfig": "export",
    "create_runner": "runners",
    "runner_for_folder": "runners",
    "optimize": "optimize_model",
    "generate": "generation",
    "Generator": "generation",
    "GenerationSettings": "generation",
    "load_tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dyt_deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
