"""The DyT kernels as PyTorch custom operators: ``dyt_deploy::dyt``, ``dyt_deploy::dyt_add`` and
``dyt_deploy::dyt_of_sum``.

Registered with ``torch.library.custom_op`` when :mod:`dyt_deploy.kernels` is imported, each with
a fake implementation (shapes and dtypes only, no data, no size-dependent branches) and an
autograd formula, so ``torch.compile(fullgraph=True)``, CUDA-graph capture and ``torch.export``
see every DyT as one opaque node, in inference and in training. What runs for real tensors:

* the Triton kernel where it fits (:func:`~.reference.kernel_fits`: CUDA tensors, or CPU tensors
  under ``TRITON_INTERPRET=1``, in fp32/fp16/bf16);
* the eager reference everywhere else (the CPU, float64, no Triton), cast to the dtype the
  kernel would give, so both implementations agree with the fake one.

The backward pass is eager PyTorch in float32 (float64 for float64 inputs): ``tanh`` is
recomputed from the saved input instead of keeping the output alive.

Eager code does not need these: :func:`dyt_deploy.kernels.dyt` and its siblings launch the
kernel straight from Python (one dispatcher round trip fewer) and switch to these operators
only while a graph is being traced. Call them as ``torch.ops.dyt_deploy.dyt(x, alpha, weight,
bias, precise)``.
"""

from typing import Any, Optional

import torch
from torch import Tensor

from .reference import dyt_add_reference, dyt_reference, kernel_fits, result_dtypes, same_shape

NAMESPACE = "dyt_deploy"
OP_NAMES = ("dyt", "dyt_add", "dyt_of_sum")


def _launcher() -> Any:
    from . import triton_dyt  # looked up per call: tests count launches by patching dyt_forward

    return triton_dyt


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


@torch.library.custom_op(f"{NAMESPACE}::dyt", mutates_args=())
def dyt(x: Tensor, alpha: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,  # noqa: UP045
        precise: bool = False) -> Tensor:
    """``weight * tanh(alpha * x) + bias`` over the last dim (weight/bias may be None)."""
    if kernel_fits(x):
        return _launcher().dyt_forward(x, alpha, weight, bias, precise=precise)
    return _cast(dyt_reference(x, alpha, weight, bias), result_dtypes(x, alpha, weight, bias)[1])


@torch.library.custom_op(f"{NAMESPACE}::dyt_add", mutates_args=())
def dyt_add(x: Tensor, residual: Tensor, alpha: Tensor, weight: Optional[Tensor] = None,  # noqa: UP045
            bias: Optional[Tensor] = None, precise: bool = False) -> tuple[Tensor, Tensor]:  # noqa: UP045
    """``(h, DyT(h))`` with ``h = residual + x`` (same shapes, no broadcasting)."""
    same_shape(x, residual)
    if kernel_fits(x, residual):
        return _launcher().dyt_forward(x, alpha, weight, bias, residual=residual, precise=precise)
    h_dtype, y_dtype = result_dtypes(x, alpha, weight, bias, residual)
    h, y = dyt_add_reference(x, residual, alpha, weight, bias)
    return _cast(h, h_dtype), _cast(y, y_dtype)


@torch.library.custom_op(f"{NAMESPACE}::dyt_of_sum", mutates_args=())
def dyt_of_sum(x: Tensor, residual: Tensor, alpha: Tensor, weight: Optional[Tensor] = None,  # noqa: UP045
               bias: Optional[Tensor] = None, precise: bool = False) -> Tensor:  # noqa: UP045
    """``DyT(residual + x)`` without writing the sum (same shapes, no broadcasting)."""
    same_shape(x, residual)
    if kernel_fits(x, residual):
        return _launcher().dyt_forward(x, alpha, weight, bias, residual=residual, keep_sum=False, precise=precise)
    y = dyt_reference(residual + x, alpha, weight, bias)
    return _cast(y, result_dtypes(x, alpha, weight, bias, residual)[1])


# ---- fake implementations: shapes and dtypes only ----


@dyt.register_fake
def _dyt_fake(x: Tensor, alpha: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
              precise: bool = False) -> Tensor:
    return x.new_empty(x.shape, dtype=result_dtypes(x, alpha, weight, bias)[1])


@dyt_add.register_fake
def _dyt_add_fake(x: Tensor, residual: Tensor, alpha: Tensor, weight: Tensor | None = None,
                  bias: Tensor | None = None, precise: bool = False) -> tuple[Tensor, Tensor]:
    h_dtype, y_dtype = result_dtypes(x, alpha, weight, bias, residual)
    return x.new_empty(x.shape, dtype=h_dtype), x.new_empty(x.shape, dtype=y_dtype)


@dyt_of_sum.register_fake
def _dyt_of_sum_fake(x: Tensor, residual: Tensor, alpha: Tensor, weight: Tensor | None = None,
                     bias: Tensor | None = None, precise: bool = False) -> Tensor:
    return x.new_empty(x.shape, dtype=result_dtypes(x, alpha, weight, bias, residual)[1])


# ---- autograd: eager formulas, tanh recomputed from the saved input ----


def _reduce_to(grad: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """``grad`` summed down to a parameter's ``shape`` (per last dim or one value), in its ``dtype``."""
    reduced = grad.sum_to_size(shape) if len(shape) <= grad.dim() else grad.sum().reshape(shape)
    return reduced.to(dtype)


def _dyt_backward(grad_y: Tensor, h: Tensor, alpha: Tensor, weight: Tensor | None,
                  bias: tuple | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Gradients of ``y = weight * tanh(alpha * h) + bias`` for h (compute dtype), alpha, weight and
    bias (given as its ``(shape, dtype)``)."""
    compute = torch.promote_types(h.dtype, torch.float32)
    hc, a, gy = h.to(compute), alpha.to(compute), grad_y.to(compute)
    t = torch.tanh(a * hc)
    grad_bias = _reduce_to(gy, *bias) if bias is not None else None
    grad_weight = _reduce_to(gy * t, weight.shape, weight.dtype) if weight is not None else None
    gt = gy * weight.to(compute) if weight is not None else gy
    gz = gt * (1 - t * t)
    grad_alpha = _reduce_to(gz * hc, alpha.shape, alpha.dtype)
    return gz * a, grad_alpha, grad_weight, grad_bias


def _save(ctx: Any, activations: tuple[Tensor, ...], alpha: Tensor, weight: Tensor | None,
          bias: Tensor | None) -> None:
    """Keep what the backward reads: activations, alpha, weight (if any), and only bias's shape and dtype."""
    ctx.n_act, ctx.has_weight = len(activations), weight is not None
    ctx.bias = (bias.shape, bias.dtype) if bias is not None else None
    ctx.save_for_backward(*activations, alpha, *((weight,) if weight is not None else ()))


def _saved(ctx: Any) -> tuple[tuple[Tensor, ...], Tensor, Tensor | None]:
    saved = ctx.saved_tensors
    acts, alpha = saved[:ctx.n_act], saved[ctx.n_act]
    return acts, alpha, saved[ctx.n_act + 1] if ctx.has_weight else None


def _setup_dyt(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, alpha, weight, bias, _ = inputs
    ctx.dtypes = (x.dtype,)
    _save(ctx, (x,), alpha, weight, bias)


def _backward_dyt(ctx: Any, grad_y: Tensor) -> tuple:
    (x,), alpha, weight = _saved(ctx)
    gh, ga, gw, gb = _dyt_backward(grad_y, x, alpha, weight, ctx.bias)
    return gh.to(ctx.dtypes[0]), ga, gw, gb, None


def _setup_sum(ctx: Any, inputs: tuple, output: Any) -> None:
    x, residual, alpha, weight, bias, _ = inputs
    ctx.dtypes = (x.dtype, residual.dtype)
    keeps_h = isinstance(output, tuple)  # dyt_add returns h: save it instead of recomputing the sum
    _save(ctx, (output[0],) if keeps_h else (x, residual), alpha, weight, bias)


def _backward_add(ctx: Any, grad_h: Tensor | None, grad_y: Tensor) -> tuple:
    acts, alpha, weight = _saved(ctx)
    h = acts[0] if len(acts) == 1 else acts[1] + acts[0]
    gh, ga, gw, gb = _dyt_backward(grad_y, h, alpha, weight, ctx.bias)
    if grad_h is not None:
        gh = gh + grad_h
    return gh.to(ctx.dtypes[0]), gh.to(ctx.dtypes[1]), ga, gw, gb, None


def _backward_of_sum(ctx: Any, grad_y: Tensor) -> tuple:
    return _backward_add(ctx, None, grad_y)


dyt.register_autograd(_backward_dyt, setup_context=_setup_dyt)
dyt_add.register_autograd(_backward_add, setup_context=_setup_sum)
dyt_of_sum.register_autograd(_backward_of_sum, setup_context=_setup_sum)
