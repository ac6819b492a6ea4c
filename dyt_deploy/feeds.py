"""Seeded random inputs for a model's signature: the one place example feeds are made.

Export verification, ``dyt-check``, ``dyt-bench``, ONNX form conversion, the zoo's
``example_inputs`` and the service's warm-up and comparisons all draw their inputs here, so the
same seed and sizes give the same arrays everywhere. numpy only: the service imports this without
torch; :func:`random_tensors` hands the same values over as torch tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .dtypes import numpy_dtype
from .specs import TensorSpec


def random_array(spec: TensorSpec, sizes: Mapping[str, int], rng: np.random.Generator,
                 default_dim: int | None = None) -> np.ndarray:
    """A random array for ``spec``: standard normal floats, or integers in ``[low, high)``
    (attention masks start with 1, so every sequence attends to something). Named dims take
    ``sizes[name]``, or ``default_dim`` when it is given and the name is missing."""
    shape = tuple(d if isinstance(d, int) else sizes.get(d, default_dim) if default_dim else sizes[d]
                  for d in spec.shape)
    dtype = numpy_dtype(spec.dtype)
    if dtype.kind == "f" or spec.dtype in ("bfloat16", "bf16"):
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    values = rng.integers(spec.low, spec.high, shape).astype(dtype)
    if spec.name == "attention_mask" and values.ndim == 2:
        values[:, 0] = 1
    return values


def random_feed(specs: Sequence[TensorSpec], sizes: Mapping[str, int], seed: int,
                default_dim: int | None = None) -> dict[str, np.ndarray]:
    """One seeded array per spec, drawn in order from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return {spec.name: random_array(spec, sizes, rng, default_dim) for spec in specs}


def random_tensors(specs: Sequence[TensorSpec], sizes: Mapping[str, int], seed: int,
                   default_dim: int | None = None) -> dict[str, Any]:
    """:func:`random_feed` as torch tensors (the same values)."""
    import torch

    feed = random_feed(specs, sizes, seed, default_dim)
    return {name: _to_torch(torch, array) for name, array in feed.items()}


def _to_torch(torch: Any, array: np.ndarray) -> Any:
    if array.dtype.kind not in "biuf":  # bfloat16 (ml_dtypes) has no torch.from_numpy path
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(array)
