"""Shared by the kernel tests: where they run and how close the kernel must be."""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# One unit in the last place of values in [1, 2): the kernel rounds once from float32, so it
# may differ from a float64 reference rounded to the same dtype by at most this, relatively.
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


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
