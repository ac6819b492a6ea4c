"""What every kernel entry point shares, with no Triton import: the eager reference, where the kernel
can run, the dtypes it returns, and the switch to the accurate tanh.

Kept apart from :mod:`.triton_dyt` (which imports Triton) so that the custom operators in
:mod:`.ops` and their fake implementations work, on the reference, where Triton is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FAST_TANH_DTYPES = (torch.float16, torch.bfloat16)
PRECISE_TANH_ENV = "DYT_PRECISE_TANH"
_TRUE = {"1", "true", "on", "yes"}


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def precise_tanh_forced() -> bool:
    """Whether ``DYT_PRECISE_TANH`` (1/true/on/yes) forces the accurate tanh for every launch."""
    return os.environ.get(PRECISE_TANH_ENV, "").strip().lower() in _TRUE


def uses_fast_tanh(out_dtype: torch.dtype, precise: bool = False) -> bool:
    """Whether a launch storing ``out_dtype`` computes tanh with the GPU's ``tanh.approx.f32``.

    True for fp16/bf16 results unless ``precise`` is set, ``DYT_PRECISE_TANH`` is on, or the
    kernel runs in Triton's interpreter (which cannot execute inline PTX).
    """
    return out_dtype in FAST_TANH_DTYPES and not precise and not precise_tanh_forced() and not interpreting()


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported here (it ships with PyTorch's CUDA builds on Linux).

    Looked up once per process: every forward pass of a kernel module asks.
    """
    return importlib.util.find_spec("triton") is not None


def kernel_fits(x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether the Triton kernel can run on these activations: fp32/fp16/bf16 storage, and a CUDA
    device (or the CPU under ``TRITON_INTERPRET``) where Triton is installed. Autograd is not asked."""
    if x.dtype not in KERNEL_DTYPES or (residual is not None and residual.dtype not in KERNEL_DTYPES):
        return False
    device = x.device.type
    if device != "cuda" and not (device == "cpu" and interpreting()):
        return False
    return triton_available()


def result_dtypes(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  residual: torch.Tensor | None = None) -> tuple[torch.dtype, torch.dtype]:
    """``(sum dtype, output dtype)`` the kernel gives: the promotion of the inputs and parameters.

    The sum (``residual + x``) takes the promotion of the two; the output that of the sum (or x)
    with alpha, weight and bias. Without ``residual`` the first is x's dtype.
    """
    src = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    out = torch.promote_types(src, alpha.dtype)
    for p in (weight, bias):
        if p is not None:
            out = torch.promote_types(out, p.dtype)
    return src, out


def dyt_reference(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """Eager DyT over the last dim, op by op, as :class:`~dyt_deploy.nn.DynamicTanh` computes it."""
    y = torch.tanh(alpha * x)
    if weight is not None:
        y = y * weight
    return y if bias is None else y + bias


def dyt_add_reference(x: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
                      weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager ``h = residual + x`` then DyT(h): a pre-norm block's residual add and next norm."""
    h = residual + x
    return h, dyt_reference(h, alpha, weight, bias)


def same_shape(x: torch.Tensor, residual: torch.Tensor) -> None:
    """Refuse a residual of another shape: the fused add does not broadcast."""
    if residual.shape != x.shape:
        raise ValueError(f"residual shape {list(residual.shape)} differs from x {list(x.shape)}; "
                         "the fused add does not broadcast")
