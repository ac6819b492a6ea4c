"""Fused DyT kernels for GPUs (Triton), with the PyTorch reference wherever they cannot run.

* :func:`dyt` -- ``weight * tanh(alpha * x) + bias`` over the last dim (weight/bias optional);
* :func:`dyt_add` -- ``h = x + residual`` and ``DyT(h)`` in one pass, returning ``(h, y)``
  (pre-norm blocks); :func:`dyt_of_sum` -- only ``DyT(x + residual)`` (post-norm blocks);
* :class:`KernelDynamicTanh` / :func:`use_kernels` -- the module path: a drop-in
  :class:`~dyt_deploy.nn.DynamicTanh` (same parameters and state dict) that calls these, and a
  graph pass (:func:`fuse_residual_adds`, in :mod:`.fusion`) that hands each residual add in
  front of such a norm to it, so the models themselves need no kernel knowledge.

The Triton kernel runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` was set
before Triton was first imported (Triton's interpreter: slow, for tests). Everything else --
no Triton, another device, float64, channels-first layout, or a forward pass that autograd
records (the kernels have no backward) -- takes the reference path, eager PyTorch, which
gives the same results within rounding (the kernel computes in float32 and rounds once).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType

import torch
from torch import nn

from ..nn import DynamicTanh
from .fusion import FusedAdd, FusionReport, fuse_residual_adds, log_report

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = [
    "KERNEL_DTYPES",
    "FusedAdd",
    "FusionReport",
    "KernelDynamicTanh",
    "dyt",
    "dyt_add",
    "dyt_add_reference",
    "dyt_of_sum",
    "dyt_reference",
    "fuse_residual_adds",
    "interpreting",
    "triton_available",
    "use_kernels",
    "will_use_kernel",
]


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported here (it ships with PyTorch's CUDA builds on Linux).

    Looked up once per process: every forward pass of a kernel module asks.
    """
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _kernels() -> ModuleType:
    from . import triton_dyt

    return triton_dyt


def will_use_kernel(x: torch.Tensor, *params: torch.Tensor | None, residual: torch.Tensor | None = None) -> bool:
    """Whether :func:`dyt` / :func:`dyt_add` / :func:`dyt_of_sum` would launch the Triton kernel."""
    if x.dtype not in KERNEL_DTYPES or (residual is not None and residual.dtype not in KERNEL_DTYPES):
        return False
    if x.device.type == "cuda":
        where_ok = True
    else:
        where_ok = x.device.type == "cpu" and interpreting()
    if not where_ok or not triton_available():
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, *params)):
        return False  # forward-only kernels: leave training to autograd
    return True


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


def _same_shape(x: torch.Tensor, residual: torch.Tensor) -> None:
    if residual.shape != x.shape:
        raise ValueError(f"residual shape {list(residual.shape)} differs from x {list(x.shape)}; "
                         "the fused add does not broadcast")


def dyt(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * tanh(alpha * x) + bias`` over the last dim: the Triton kernel where it can run."""
    if will_use_kernel(x, alpha, weight, bias):
        return _kernels().dyt_forward(x, alpha, weight, bias)
    return dyt_reference(x, alpha, weight, bias)


def dyt_add(x: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
            weight: torch.Tensor | None = None,
            bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, DyT(h))`` with ``h = residual + x``, in one pass where the kernel can run."""
    _same_shape(x, residual)
    if will_use_kernel(x, alpha, weight, bias, residual=residual):
        return _kernels().dyt_forward(x, alpha, weight, bias, residual=residual)
    return dyt_add_reference(x, residual, alpha, weight, bias)


def dyt_of_sum(x: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``DyT(residual + x)``, one pass and the sum never written, where the kernel can run."""
    _same_shape(x, residual)
    if will_use_kernel(x, alpha, weight, bias, residual=residual):
        return _kernels().dyt_forward(x, alpha, weight, bias, residual=residual, keep_sum=False)
    return dyt_reference(residual + x, alpha, weight, bias)


class KernelDynamicTanh(DynamicTanh):
    """:class:`~dyt_deploy.nn.DynamicTanh` that runs the fused Triton kernel where it can.

    Same parameters, state dict and results; channels-first instances use the reference.
    :meth:`forward_add` takes in the residual add in front of the norm and returns the sum too
    (``(h, DyT(h))``, pre-norm); :meth:`forward_sum` returns only ``DyT(residual + x)``
    (post-norm). :func:`fuse_residual_adds` rewrites a model's adds into these calls. Where the
    add broadcasts, or an operand is not a tensor, both add unfused, exactly as eager does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return super().forward(x)
        return dyt(x, self.alpha, self.weight, self.bias)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._fuses(x, residual):
            h = residual + x
            return h, self.forward(h)
        return dyt_add(x, residual, self.alpha, self.weight, self.bias)

    def forward_sum(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if not self._fuses(x, residual):
            return self.forward(residual + x)
        return dyt_of_sum(x, residual, self.alpha, self.weight, self.bias)

    def _fuses(self, x: object, residual: object) -> bool:
        """Channels-last, and two tensors of one shape (the fused add does not broadcast)."""
        return (self.channels_last and isinstance(x, torch.Tensor) and isinstance(residual, torch.Tensor)
                and x.shape == residual.shape)

    @classmethod
    def from_module(cls, module: DynamicTanh) -> KernelDynamicTanh:
        """A kernel module sharing ``module``'s parameters (no copy: training one updates both)."""
        new = cls(module.normalized_shape, module.channels_last, module.alpha_init,
                  bias=module.bias is not None, device="meta")
        new.alpha, new.weight = module.alpha, module.weight
        if module.bias is not None:
            new.bias = module.bias
        new.train(module.training)
        return new


def use_kernels(model: nn.Module, *, fuse: bool = True) -> tuple[nn.Module, int]:
    """Swap every channels-last :class:`DynamicTanh` in ``model`` for a :class:`KernelDynamicTanh`.

    Returns ``(model, count)``; ``model`` is the same object unless it is itself a DynamicTanh.
    Parameters are shared, so the state dict and its keys do not change. ``fuse`` (default on)
    then runs :func:`fuse_residual_adds` when anything was swapped: each residual add in front
    of a swapped norm runs inside its kernel; what could not be traced is logged with the reason
    and keeps the plain swap. Fusion fixes Python branches as traced, so swap in the mode the
    model will run in (``eval()`` for inference).
    """
    def eligible(m: nn.Module) -> bool:
        return type(m) is DynamicTanh and m.channels_last

    if eligible(model):
        return KernelDynamicTanh.from_module(model), 1
    names = [name for name, m in model.named_modules() if name and eligible(m)]
    for name in names:
        model.set_submodule(name, KernelDynamicTanh.from_module(model.get_submodule(name)))
    if fuse and names:
        log_report(fuse_residual_adds(model))
    return model, len(names)
