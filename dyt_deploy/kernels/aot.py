"""Compile the DyT kernel ahead of time for a given NVIDIA architecture, no GPU needed.

Triton lowers the same ``_dyt_fwd_kernel`` source to PTX and, with the ``ptxas`` its wheel
ships, to a cubin for any target. That serves two uses:

* checking the kernel on a machine without a GPU: it compiles for Ampere/Hopper, and with
  16-byte-aligned pointers and row strides (what Triton's JIT sees for ordinary tensors) its
  loads and stores are 128-bit vectors -- what a bandwidth-bound kernel needs; 16-bit storage
  computes tanh with the hardware's ``tanh.approx.f32`` (the interpreter cannot show this);
* a TensorRT plugin that embeds the kernel in the engine (TensorRT's Python plugins accept a
  compiled kernel's PTX ahead of time) reuses the same source.

Must run where ``TRITON_INTERPRET`` is unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

from dataclasses import dataclass

from .triton_dyt import LaunchConfig, _dyt_fwd_kernel

TRITON_TYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
FAST_TANH_TYPES = ("fp16", "bf16")  # as reference.FAST_TANH_DTYPES
_POINTERS = ("X", "R", "H", "Y", "ALPHA", "W", "B")
_INTS = ("M", "N", "stride_x", "stride_r", "stride_h", "stride_y")
# pointers and sizes Triton's JIT would find 16-byte divisible for contiguous, 4096-wide tensors
_ALIGNED = ("X", "R", "H", "Y", "W", "B", "N", "stride_x", "stride_r", "stride_h", "stride_y")


@dataclass(frozen=True)
class CompiledDyt:
    """One compiled variant: its PTX, the cubin, and the launch facts a host needs."""

    ptx: str
    cubin: bytes
    name: str
    num_warps: int
    shared_bytes: int
    config: LaunchConfig

    def global_accesses(self) -> set[str]:
        """The distinct global load/store instructions in the PTX (``ld.global.v4.b32`` = 128-bit)."""
        import re

        return set(re.findall(r"\b((?:ld|st)\.global(?:\.[a-z0-9]+)*)", self.ptx))


def compile_dyt(dtype: str = "bf16", *, residual: bool = False, weight: bool = True, bias: bool = True,
                arch: int = 90, config: LaunchConfig | None = None, aligned: bool = True,
                precise: bool = False) -> CompiledDyt:
    """Compile the kernel for ``sm_<arch>`` with activations in ``dtype`` (parameters too).

    ``aligned`` declares the 16-byte divisibility Triton's JIT derives at run time for
    contiguous tensors whose width is a multiple of 8; without it the compiler must assume
    scalar accesses. fp16/bf16 get the hardware tanh (``tanh.approx.f32``) as a launch on the
    GPU does, unless ``precise`` (default False) asks for the accurate one; fp32 always has it.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if dtype not in TRITON_TYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(TRITON_TYPES)}")
    config = config or LaunchConfig(2, 4096, 8)
    names = list(_dyt_fwd_kernel.arg_names)
    signature = {n: f"*{TRITON_TYPES[dtype]}" for n in _POINTERS}
    signature.update({n: "i32" for n in _INTS})
    constexprs = {"HAS_RESIDUAL": residual, "STORE_SUM": residual, "HAS_WEIGHT": weight, "HAS_BIAS": bias,
                  "W_SCALAR": False, "B_SCALAR": False, "FAST_TANH": dtype in FAST_TANH_TYPES and not precise,
                  "BLOCK_M": config.block_m, "BLOCK_N": config.block_n}
    signature.update({n: "constexpr" for n in constexprs})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in _ALIGNED} if aligned else {}
    source = ASTSource(fn=_dyt_fwd_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": config.num_warps})
    return CompiledDyt(ptx=compiled.asm["ptx"], cubin=compiled.asm["cubin"], name=compiled.metadata.name,
                       num_warps=compiled.metadata.num_warps, shared_bytes=compiled.metadata.shared, config=config)
