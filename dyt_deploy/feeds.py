"""Seeded random inputs for a model's signature: the one place example feeds are made.

Export verification, ``dyt-check``, ``dyt-bench``, ONNX form conversion and the service's warm-up
all draw their inputs here, so the same seed and sizes give the same tensors everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .dtypes import torch_dtype
from .models.base import TensorSpec


def random_tensor(spec: TensorSpec, sizes: Mapping[str, int], generator: torch.Generator,
                  default_dim: int | None = None) -> torch.Tensor:
    """A random tensor for ``spec``: standard normal floats, or integers in ``[low, high)``
    (attention masks start with 1, so every sequence attends to something). Named dims take
    ``sizes[name]``, or ``default_dim`` when given and the name is missing."""
    shape = tuple(d if isinstance(d, int) else sizes.get(d, default_dim) if default_dim else sizes[d]
                  for d in spec.shape)
    dtype = torch_dtype(spec.dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=dtype)
    values = torch.randint(spec.low, spec.high, shape, generator=generator, dtype=dtype)
    if spec.name == "attention_mask" and values.dim() == 2:
        values[:, 0] = 1
    return values


def random_tensors(specs: Sequence[TensorSpec], sizes: Mapping[str, int], seed: int,
                   default_dim: int | None = None) -> dict[str, torch.Tensor]:
    """One seeded tensor per spec, drawn in order from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {spec.name: random_tensor(spec, sizes, generator, default_dim) for spec in specs}


def random_feed(specs: Sequence[TensorSpec], sizes: Mapping[str, int], seed: int,
                default_dim: int | None = None) -> dict[str, np.ndarray]:
    """:func:`random_tensors` as numpy arrays (bfloat16 through ml_dtypes)."""
    return {name: _to_numpy(t) for name, t in random_tensors(specs, sizes, seed, default_dim).items()}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        from ml_dtypes import bfloat16

        return tensor.float().numpy().astype(bfloat16)
    return tensor.numpy()
