"""Lazy access to TensorRT and CUDA, with one-line errors that say what to install or where to run.

Nothing here imports tensorrt or torch at module import time.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import MissingBackendError

INSTALL_HINT = "pip install 'dyt-deploy[tensorrt]' on a host with an NVIDIA GPU and driver"


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or MissingBackendError naming the ``tensorrt`` extra."""
    try:
        return importlib.import_module("tensorrt")
    except ModuleNotFoundError as err:
        if err.name == "tensorrt":
            raise MissingBackendError(f"TensorRT is not installed: {INSTALL_HINT}") from None
        raise MissingBackendError(f"TensorRT is installed but does not load ({err}); {INSTALL_HINT}") from None
    except ImportError as err:
        raise MissingBackendError(f"TensorRT is installed but does not load ({err}); {INSTALL_HINT}") from None


def tensorrt_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def make_logger(trt: ModuleType, verbose: bool = False) -> Any:
    """A TensorRT logger printing warnings and errors (everything with ``verbose``)."""
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def no_device_error(what: str, err: Exception) -> MissingBackendError:
    return MissingBackendError(
        f"TensorRT could not create its {what}: no usable CUDA device or driver ({err}); "
        "build and run engines on a host with an NVIDIA GPU"
    )


def _create(factory: Any, what: str, logger: Any) -> Any:
    """``factory(logger)``; without a CUDA device TensorRT raises TypeError ("factory function
    returned nullptr") or returns None: both become the one-line no-device error."""
    try:
        made = factory(logger)
    except TypeError as err:
        raise no_device_error(what, err) from None
    if made is None:
        raise no_device_error(what, RuntimeError(f"TensorRT returned no {what}"))
    return made


def create_builder(trt: ModuleType, logger: Any) -> Any:
    """``trt.Builder``, or MissingBackendError without a usable CUDA device."""
    return _create(trt.Builder, "builder", logger)


def create_runtime(trt: ModuleType, logger: Any) -> Any:
    """``trt.Runtime``, or MissingBackendError without a usable CUDA device."""
    return _create(trt.Runtime, "runtime", logger)


def require_cuda_torch() -> ModuleType:
    """``torch`` with a usable CUDA device, or MissingBackendError saying which is missing."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no visible CUDA device"
        raise MissingBackendError(f"TensorRT inference needs a CUDA device and a CUDA build of PyTorch; found {build}")
    return torch
