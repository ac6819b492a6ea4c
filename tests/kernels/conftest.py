"""Kernel tests run the real Triton kernels: on a GPU when there is one, else through Triton's
interpreter (``TRITON_INTERPRET=1``, set by the suite's root conftest)."""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# One unit in the last place of values in [1, 2): the kernel rounds once from float32, so it
# may differ from a float64 reference rounded to the same dtype by at most this, relatively.
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.fixture(autouse=True, scope="session")
def _need_triton() -> None:
    pytest.importorskip("triton", reason="Triton not installed (pip install 'dyt-deploy[test]')")


def within_ulps(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, ulps: float = 1.0) -> None:
    """|actual - expected| <= ulps * ULP * max(|expected|, 1): relative error near the dtype's precision."""
    diff = (actual.double() - expected.double()).abs()
    bound = ulps * ULP[dtype] * expected.double().abs().clamp(min=1.0)
    worst = (diff - bound).max().item() if diff.numel() else 0.0
    assert worst <= 0, f"max error {diff.max().item():.3g} exceeds {ulps} ulp(s) of {dtype}"
