"""Triton kernels for the DyT forward pass: plain, tanh-only (folded) and fused with a residual add.

One kernel covers every form; ``constexpr`` flags remove what a form does not use:

* ``y = weight * tanh(alpha * x) + bias`` (``weight``/``bias`` each optional: the LLaMA form has
  no bias, the folded form has neither);
* with ``residual``: ``h = x + residual`` is written out as well, then ``y = DyT(h)``: the
  new residual stream and the next layer's input in one pass over memory, as a pre-norm
  decoder block needs.

The math runs in float32 whatever the storage type (fp32, fp16, bf16) and rounds once on the
store. ``h`` is rounded to its storage type before DyT reads it, exactly as eager PyTorch's
``residual + x`` followed by the norm would be, so on a GPU ``h`` matches eager bit for bit.
(Triton's CPU interpreter rounds float32 -> bfloat16 toward zero instead of to nearest even, so
there bf16 results may differ from a GPU's by one unit in the last place.)

tanh: 16-bit DyT is bound by tanh's arithmetic, not by memory (on an H200 a row kernel reached
78% of copy bandwidth with an accurate float32 tanh and 96% with the hardware one). So when the
result is stored as fp16/bf16 the kernel uses the GPU's ``tanh.approx.f32`` (inline PTX, one
MUFU instruction; the ``FAST_TANH`` constexpr), whose error is about one 16-bit rounding.
Measured on an H200 against float64 on the stored result: at most 0.58 bf16 eps (bf16) and 2.6
fp16 eps (fp16); the tests allow 1 bf16 eps and 3 fp16 eps, relative to the result's magnitude
(absolute below 1). fp32 results keep the accurate tanh below (about 1.9e4 fp32 eps off with
the hardware one, and fp32 is memory-bound anyway), and so does every launch with
``precise=True`` or ``DYT_PRECISE_TANH=1`` in the environment. Triton's interpreter cannot run
inline assembly: under ``TRITON_INTERPRET`` the accurate tanh is used whatever the dtype, so the
CPU tests see that one; the ahead-of-time PTX (:mod:`.aot`) shows the hardware instruction.

This module imports Triton at import time; :mod:`dyt_deploy.kernels` imports it only when a
kernel is about to run. With ``TRITON_INTERPRET=1`` in the environment before the first import,
the kernels run on CPU tensors through Triton's interpreter (slow; for tests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import result_dtypes, uses_fast_tanh

# tanh in float32, accurate to a few ulps over the whole range:
# * |z| < 0.5: the odd Taylor series through z^15 (the first term left out, z^17, is below 1e-8
#   relative there), which keeps full relative precision for small z, where 1 - e below would
#   cancel;
# * otherwise (1 - e) / (1 + e) with e = exp(-2|z|) <= 0.37, so the subtraction loses under one
#   bit; e is 2^(-2|z| log2(e)), in (0, 1], so nothing overflows, and large |z| gives exactly +-1.
# (Constants are written inline: jit functions may read only constexpr globals.)


@triton.jit
def _tanh(z):
    a = tl.abs(z)
    zs = tl.where(a < 0.5, z, 0.0)  # the series only for lanes that use it (no overflow elsewhere)
    z2 = zs * zs
    p = -929569.0 / 638512875.0
    p = p * z2 + 21844.0 / 6081075.0
    p = p * z2 - 1382.0 / 155925.0
    p = p * z2 + 62.0 / 2835.0
    p = p * z2 - 17.0 / 315.0
    p = p * z2 + 2.0 / 15.0
    p = p * z2 - 1.0 / 3.0
    series = zs + zs * z2 * p
    e = tl.exp2(-2.8853900817779268 * a)  # 2^(-2|z| log2 e) = exp(-2|z|)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(a < 0.5, series, tl.where(z < 0.0, -t, t))


@triton.jit
def _tanh_approx(z):
    # the GPU's own tanh (one MUFU instruction, sm_75 and later): max relative error about 2^-11,
    # far below a 16-bit store's rounding and several times cheaper than _tanh
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [z], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _dyt_fwd_kernel(
    X, R, H, Y, ALPHA, W, B,
    M, N,
    stride_x, stride_r, stride_h, stride_y,
    HAS_RESIDUAL: tl.constexpr, STORE_SUM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    W_SCALAR: tl.constexpr, B_SCALAR: tl.constexpr, FAST_TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program (i, j) covers rows [i*BLOCK_M, +BLOCK_M) and columns [j*BLOCK_N, +BLOCK_N) of the
    # (M, N) row-major view; weight/bias are loaded once per program and reused over its rows.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)  # M * N may pass 2^31 elements

    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # rounded to h's storage type either way, so DyT reads what eager's `residual + x` holds
        h = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)
        if STORE_SUM:  # pre-norm blocks carry h on; post-norm blocks only need DyT(h)
            tl.store(H + rows[:, None] * stride_h + cols[None, :], h, mask=mask)
        x = h

    alpha = tl.load(ALPHA).to(tl.float32)
    if FAST_TANH:
        y = _tanh_approx(alpha * x.to(tl.float32))
    else:
        y = _tanh(alpha * x.to(tl.float32))
    # weight/bias: one value (W_SCALAR) or one per column; as constexprs, so the per-column loads
    # are known to be contiguous and compile to vector loads
    if HAS_WEIGHT:
        if W_SCALAR:
            y = y * tl.load(W).to(tl.float32)
        else:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y * w[None, :]
    if HAS_BIAS:
        if B_SCALAR:
            y = y + tl.load(B).to(tl.float32)
        else:
            b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y + b[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile and warp count of one launch: ``block_m`` rows by ``block_n`` columns per program."""

    block_m: int
    block_n: int
    num_warps: int


@functools.lru_cache(maxsize=1024)
def default_config(n_rows: int, n_cols: int, element_size: int) -> LaunchConfig:
    """A tile of about 16 KiB of input per program, at most 4096 columns wide.

    Memory-bound elementwise work wants each program to move enough bytes to hide latency
    (16-byte vector loads, several per thread) while leaving enough programs to fill every SM.
    ``dyt-bench --device cuda`` sweeps other tiles next to this one. Cached per shape: it is
    asked on every launch.
    """
    block_n = min(triton.next_power_of_2(max(n_cols, 1)), 4096)
    elements = max(16 * 1024 // element_size, block_n)
    block_m = min(max(elements // block_n, 1), triton.next_power_of_2(max(n_rows, 1)), 64)
    num_warps = 8 if block_m * block_n >= 4096 else 4
    return LaunchConfig(block_m, block_n, num_warps)


def _rows(t: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, int]:
    """``t`` as rows of ``n_cols`` with unit column stride, and its row stride: ``t`` itself when
    contiguous (no view made: every call counts), else a (M, N) view, or a copy when none exists."""
    if t.is_contiguous():
        return t, n_cols
    t2 = t.reshape(-1, n_cols)
    if t2.stride(1) != 1 and t2.numel():
        t2 = t2.contiguous()
    return t2, t2.stride(0)


def _param(p: torch.Tensor | None, n_cols: int, name: str) -> tuple[torch.Tensor | None, int]:
    """weight/bias as a flat vector and its stride: ``(C,)`` per channel (stride 1) or one value (stride 0)."""
    if p is None:
        return None, 0
    numel = p.numel()
    if numel == 1:
        return p, 0
    if numel != n_cols:
        raise ValueError(f"{name} has {numel} values; DyT over the last dim needs 1 or {n_cols}")
    return (p if p.is_contiguous() else p.contiguous()), 1  # (C,), or (1, 1, C): one row either way


def _check_buffer(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.shape != x.shape or not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous with x's shape {list(x.shape)}")


def dyt_forward(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    keep_sum: bool = True,
    precise: bool = False,
    config: LaunchConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel over the last dim of ``x`` (channels-last DyT).

    Without ``residual`` returns ``y``; with it returns ``(h, y)`` where ``h = x + residual``,
    or only ``y = DyT(h)`` with ``keep_sum=False`` (post-norm blocks: ``h`` is never written
    when x's or the residual's dtype can hold it).
    ``out``/``residual_out`` are written in place when given (their dtypes decide the stored
    types); otherwise new tensors get the dtype eager PyTorch would give (type promotion of
    the inputs and parameters). An fp16/bf16 ``y`` is computed with the hardware tanh unless
    ``precise`` (default False) or ``DYT_PRECISE_TANH=1`` asks for the accurate one (see the
    module docstring for the error). Runs on ``x``'s device and current stream.
    """
    n_cols = x.shape[-1] if x.dim() else 1
    if alpha.numel() != 1:
        raise ValueError(f"alpha must hold one value, got shape {list(alpha.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {list(residual.shape)} differs from x {list(x.shape)}")
    w, stride_w = _param(weight, n_cols, "weight")
    b, stride_b = _param(bias, n_cols, "bias")
    sum_dtype, y_dtype = result_dtypes(x, alpha, weight, bias, residual)

    x2, stride_x = _rows(x, n_cols)
    n_rows = x.numel() // n_cols if n_cols else 0
    store_sum = True
    r2, stride_r = None, 0
    if residual is not None:
        r2, stride_r = _rows(residual, n_cols)
        if residual_out is None and not keep_sum and sum_dtype in (x.dtype, residual.dtype):
            store_sum = False  # an input of the sum's dtype stands in for h's (unwritten) buffer
        elif residual_out is None:
            residual_out = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
        else:
            _check_buffer("residual_out", residual_out, x)
    if out is None:
        if residual_out is not None and residual_out.dtype != sum_dtype:  # the caller's h type feeds DyT
            y_dtype = result_dtypes(residual_out, alpha, weight, bias)[1]
        out = torch.empty(x.shape, dtype=y_dtype, device=x.device)
    else:
        _check_buffer("out", out, x)

    if n_rows and n_cols:
        cfg = config or default_config(n_rows, n_cols, x.element_size())
        grid = (-(-n_rows // cfg.block_m), -(-n_cols // cfg.block_n))  # ceil division, no Triton helper call
        h2 = residual_out  # out and residual_out are contiguous: row stride n_cols
        if h2 is None and r2 is not None:  # sum not stored: h's dtype still sets its rounding
            h2 = x2 if x2.dtype == sum_dtype else r2
        dummy = x2  # stands in for absent pointers; never read (the constexpr flags drop the loads)
        _dyt_fwd_kernel[grid](
            x2, r2 if r2 is not None else dummy, h2 if h2 is not None else dummy, out,
            alpha, w if w is not None else dummy, b if b is not None else dummy,
            n_rows, n_cols, stride_x, stride_r, n_cols if residual_out is not None else 0, n_cols,
            HAS_RESIDUAL=r2 is not None, STORE_SUM=store_sum, HAS_WEIGHT=w is not None, HAS_BIAS=b is not None,
            W_SCALAR=stride_w == 0, B_SCALAR=stride_b == 0, FAST_TANH=uses_fast_tanh(out.dtype, precise),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        )
    if residual is None or not keep_sum:
        return out
    return residual_out, out
