"""Shared by the kernel tests: where they run and how close the kernel must be."""

from __future__ import annotations

import torch

from dyt_deploy.kernels import uses_fast_tanh

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# One unit in the last place of values in [1, 2): the kernel rounds once from float32, so it
# may differ from a float64 reference rounded to the same dtype by at most this, relatively.
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
# The hardware tanh's documented bound on a stored 16-bit result (measured on an H200: 0.58 bf16
# eps, 2.6 fp16 eps), in the same units as within_ulps.
FAST_TANH_ULPS = {torch.bfloat16: 1.0, torch.float16: 3.0}


def kernel_ulps(dtype: torch.dtype, precise: bool = False) -> float:
    """How far the kernel may be from the correctly rounded result, in units of the dtype's eps.

    fp16/bf16 with the accurate tanh (the interpreter, ``precise``): one rounding from float32
    math far more precise than the storage, so 1; with the hardware tanh (a GPU), its bound.
    fp32: the float32 tanh (series, or exp2 and a division: up to about 5 ulps with a GPU's
    approximate exp2 and division) and the multiply-add each add rounding error, so 8.
    """
    if dtype == torch.float32:
        return 8.0
    return FAST_TANH_ULPS[dtype] if uses_fast_tanh(dtype, precise) else 1.0


def within_ulps(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, ulps: float = 1.0,
                scale: torch.Tensor | None = None) -> None:
    """|actual - expected| <= ulps * ULP * max(scale, 1), elementwise.

    ``scale`` defaults to |expected|: error relative to the result. For ``w * t + b``, pass
    ``|w * t| + |b|``: where the two terms cancel, the rounding of each still counts.
    """
    diff = (actual.double() - expected.double()).abs()
    size = expected.double().abs() if scale is None else scale.double()
    bound = ulps * ULP[dtype] * size.clamp(min=1.0)
    worst = (diff - bound).max().item() if diff.numel() else 0.0
    assert worst <= 0, f"max error {diff.max().item():.3g} exceeds {ulps} ulp(s) of {dtype}"
