"""Dtype names, one table: how each layer of the project spells a tensor's element type.

* a *precision* is what ``--dtype`` takes for a whole model: ``fp32``, ``fp16``, ``bf16``;
* a *numpy name* is what dyt.json stores per tensor: ``float32``, ``int64``, ``bool`` ...;
* an *OIP datatype* is the Open Inference Protocol's (``FP32``, ``BYTES``), mapped by
  ``tritonclient.utils``; a *Triton config type* is config.pbtxt's (``TYPE_FP32``, ``TYPE_STRING``).

Functions take a precision or a numpy name alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import DytDeployError

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
FLOAT_NAMES = frozenset(PRECISIONS.values()) | {"float64"}


def numpy_name(name: str) -> str:
    """``"fp16"`` -> ``"float16"``; numpy names pass through."""
    return PRECISIONS.get(name, name)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a precision or numpy name; bfloat16 comes from ml_dtypes."""
    name = numpy_name(name)
    if name == "bfloat16":
        from ml_dtypes import bfloat16

        return np.dtype(bfloat16)
    if name in ("string", "bytes"):
        return np.dtype(object)
    try:
        return np.dtype(name)
    except TypeError:
        raise DytDeployError(f"unknown dtype {name!r}") from None


def torch_dtype(name: str) -> Any:
    """The torch dtype of a precision or numpy name (``"fp16"`` -> ``torch.float16``)."""
    import torch

    dtype = getattr(torch, numpy_name(name), None)
    if not isinstance(dtype, torch.dtype):
        raise DytDeployError(f"dtype {name!r} has no torch equivalent")
    return dtype


def oip_datatype(name: str) -> str:
    """The Open Inference Protocol datatype of a precision or numpy name (``"float32"`` -> ``"FP32"``)."""
    from tritonclient.utils import np_to_triton_dtype

    datatype = np_to_triton_dtype(numpy_dtype(name))
    if datatype is None:
        raise DytDeployError(f"dtype {name!r} has no Open Inference Protocol datatype")
    return datatype


def triton_type(name: str) -> str:
    """The config.pbtxt data type of a precision or numpy name (``"float32"`` -> ``"TYPE_FP32"``)."""
    datatype = oip_datatype(name)
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def cast_floats(feed: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """``feed`` with its floating-point arrays cast to ``name``'s dtype; other arrays unchanged."""
    dtype = numpy_dtype(name)
    return {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in feed.items()}
