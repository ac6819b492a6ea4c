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
no Triton, another device, float64, channels-first layout, or an eager forward pass that
autograd records -- takes the reference path, eager PyTorch, which gives the same results
within rounding (the kernel computes in float32 and rounds once). fp16/bf16 results use the
GPU's hardware tanh (``tanh.approx.f32``); ``precise=True`` on every entry point, or
``DYT_PRECISE_TANH=1``, keeps the accurate one (error bounds in :mod:`.triton_dyt`).

Eager calls launch the kernel straight from Python. While a graph is built (``torch.compile``,
``torch.export``, fake tensors), the same calls become the custom operators
``dyt_deploy::dyt``, ``dyt_deploy::dyt_add`` and ``dyt_deploy::dyt_of_sum`` (:mod:`.ops`,
registered on import), one node per DyT, with fake implementations and a backward formula.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import nn

from ..nn import DynamicTanh
from . import ops
from .fusion import FusedAdd, FusionReport, fuse_residual_adds, log_report
from .reference import (
    FAST_TANH_DTYPES,
    KERNEL_DTYPES,
    PRECISE_TANH_ENV,
    dyt_add_reference,
    dyt_reference,
    interpreting,
    kernel_fits,
    precise_tanh_forced,
    same_shape,
    triton_available,
    uses_fast_tanh,
)

__all__ = [
    "FAST_TANH_DTYPES",
    "KERNEL_DTYPES",
    "PRECISE_TANH_ENV",
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
    "ops",
    "precise_tanh_forced",
    "triton_available",
    "use_kernels",
    "uses_fast_tanh",
    "will_use_kernel",
]

_OPS = torch.ops.dyt_deploy
_dispatch_modes = torch._C._len_torch_dispatch_stack


@functools.cache
def _kernels() -> ModuleType:
    from . import triton_dyt

    return triton_dyt


def will_use_kernel(x: torch.Tensor, *params: torch.Tensor | None, residual: torch.Tensor | None = None) -> bool:
    """Whether :func:`dyt` / :func:`dyt_add` / :func:`dyt_of_sum` would launch the Triton kernel in eager mode.

    Yes where :func:`~.reference.kernel_fits` (CUDA, or the CPU under ``TRITON_INTERPRET``;
    fp32/fp16/bf16; Triton installed) and autograd does not record the call (training takes the
    reference, whose backward is autograd's own).
    """
    if not kernel_fits(x, residual):
        return False
    if not torch.is_grad_enabled():
        return True
    for t in (x, residual, *params):  # a loop, not any(generator): asked on every eager call
        if t is not None and t.requires_grad:
            return False
    return True


def _tracing(x: torch.Tensor) -> bool:
    """Whether a graph is being built (torch.compile, torch.export, fake or proxy tensors): then the
    custom operators of :mod:`.ops` stand for the kernel, as one node each."""
    return torch.compiler.is_compiling() or type(x) is not torch.Tensor or _dispatch_modes() > 0


def dyt(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None, *, precise: bool = False) -> torch.Tensor:
    """``weight * tanh(alpha * x) + bias`` over the last dim: the Triton kernel where it can run.

    ``precise`` (default False) keeps the accurate tanh for fp16/bf16 results too (see
    :mod:`.triton_dyt` for the hardware tanh's error). While a graph is traced this is one
    ``dyt_deploy::dyt`` node.
    """
    if _tracing(x):
        return _OPS.dyt(x, alpha, weight, bias, precise)
    if will_use_kernel(x, alpha, weight, bias):
        return _kernels().dyt_forward(x, alpha, weight, bias, precise=precise)
    return dyt_reference(x, alpha, weight, bias)


def dyt_add(x: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
            weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
            *, precise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, DyT(h))`` with ``h = residual + x``, in one pass where the kernel can run
    (``dyt_deploy::dyt_add`` when traced)."""
    same_shape(x, residual)
    if _tracing(x):
        return _OPS.dyt_add(x, residual, alpha, weight, bias, precise)
    if will_use_kernel(x, alpha, weight, bias, residual=residual):
        return _kernels().dyt_forward(x, alpha, weight, bias, residual=residual, precise=precise)
    return dyt_add_reference(x, residual, alpha, weight, bias)


def dyt_of_sum(x: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               *, precise: bool = False) -> torch.Tensor:
    """``DyT(residual + x)``, one pass and the sum never written, where the kernel can run
    (``dyt_deploy::dyt_of_sum`` when traced)."""
    same_shape(x, residual)
    if _tracing(x):
        return _OPS.dyt_of_sum(x, residual, alpha, weight, bias, precise)
    if will_use_kernel(x, alpha, weight, bias, residual=residual):
        return _kernels().dyt_forward(x, alpha, weight, bias, residual=residual, keep_sum=False, precise=precise)
    return dyt_reference(residual + x, alpha, weight, bias)


class KernelDynamicTanh(DynamicTanh):
    """:class:`~dyt_deploy.nn.DynamicTanh` that runs the fused Triton kernel where it can.

    Same parameters, state dict and results; channels-first instances use the reference.
    :meth:`forward_add` takes in the residual add in front of the norm and returns the sum too
    (``(h, DyT(h))``, pre-norm); :meth:`forward_sum` returns only ``DyT(residual + x)``
    (post-norm). :func:`fuse_residual_adds` rewrites a model's adds into these calls. Where the
    add broadcasts, or an operand is not a tensor, both add unfused, exactly as eager does.
    ``precise`` (class default False; :meth:`from_module` sets it per instance) keeps the
    accurate tanh for fp16/bf16 activations.
    """

    precise: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return super().forward(x)
        return dyt(x, self.alpha, self.weight, self.bias, precise=self.precise)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._fuses(x, residual):
            h = residual + x
            return h, self.forward(h)
        return dyt_add(x, residual, self.alpha, self.weight, self.bias, precise=self.precise)

    def forward_sum(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if not self._fuses(x, residual):
            return self.forward(residual + x)
        return dyt_of_sum(x, residual, self.alpha, self.weight, self.bias, precise=self.precise)

    def _fuses(self, x: object, residual: object) -> bool:
        """Channels-last, and two tensors of one shape (the fused add does not broadcast)."""
        return (self.channels_last and isinstance(x, torch.Tensor) and isinstance(residual, torch.Tensor)
                and x.shape == residual.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", precise=True" if self.precise else "")

    @classmethod
    def from_module(cls, module: DynamicTanh, *, precise: bool = False) -> KernelDynamicTanh:
        """A kernel module sharing ``module``'s parameters (no copy: training one updates both);
        ``precise`` as in the class."""
        new = cls(module.normalized_shape, module.channels_last, module.alpha_init,
                  bias=module.bias is not None, device="meta")
        if precise:
            new.precise = True
        new.alpha, new.weight = module.alpha, module.weight
        if module.bias is not None:
            new.bias = module.bias
        new.train(module.training)
        return new


def use_kernels(model: nn.Module, *, fuse: bool = True, precise: bool = False) -> tuple[nn.Module, int]:
    """Swap every channels-last :class:`DynamicTanh` in ``model`` for a :class:`KernelDynamicTanh`.

    Returns ``(model, count)``; ``model`` is the same object unless it is itself a DynamicTanh.
    Parameters are shared, so the state dict and its keys do not change. ``fuse`` (default on)
    then runs :func:`fuse_residual_adds` when anything was swapped: each residual add in front
    of a swapped norm runs inside its kernel; what could not be traced is logged with the reason
    and keeps the plain swap. Fusion fixes Python branches as traced, so swap in the mode the
    model will run in (``eval()`` for inference). ``precise`` (default False: fp16/bf16 use the
    hardware tanh) makes every swapped norm keep the accurate tanh.
    """
    def eligible(m: nn.Module) -> bool:
        return type(m) is DynamicTanh and m.channels_last

    if eligible(model):
        return KernelDynamicTanh.from_module(model, precise=precise), 1
    names = [name for name, m in model.named_modules() if name and eligible(m)]
    for name in names:
        model.set_submodule(name, KernelDynamicTanh.from_module(model.get_submodule(name), precise=precise))
    if fuse and names:
        log_report(fuse_residual_adds(model))
    return model, len(names)
