"""Point-wise normalizers: Dynamic Tanh (DyT) and Dynamic erf (Derf).

Both replace LayerNorm/RMSNorm with an element-wise squashing function: no mean, no variance,
no eps. Parameter names follow the official DyT code (``alpha``, ``weight``, ``bias``) so its
checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def _as_shape(normalized_shape: int | tuple[int, ...] | list[int] | torch.Size) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(d) for d in normalized_shape)


class _PointwiseNorm(nn.Module):
    """Shared parts: one scalar ``alpha``, per-channel ``weight`` (gamma) and optional ``bias`` (beta).

    ``channels_last=True`` applies weight/bias over the last dimension (tokens: ``(..., C)``);
    ``channels_last=False`` applies them over dimension 1 of channels-first tensors (``(N, C, H, W)``).
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        channels_last: bool = True,
        alpha_init: float = 0.5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        self.channels_last = channels_last
        self.alpha_init = float(alpha_init)
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init), **factory))
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape, **factory))
        else:
            self.register_parameter("bias", None)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        """``y * weight + bias``; either may be None (``weight`` is None once folded into the next layer)."""
        weight, bias = self.weight, self.bias
        if not self.channels_last:
            trailing = (1,) * (y.dim() - 2)
            weight = None if weight is None else weight.view(-1, *trailing)
            bias = None if bias is None else bias.view(-1, *trailing)
        if weight is not None:
            y = y * weight
        return y if bias is None else y + bias

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, channels_last={self.channels_last}, "
            f"alpha_init={self.alpha_init}, bias={self.bias is not None}"
        )


class DynamicTanh(_PointwiseNorm):
    """``DyT(x) = weight * tanh(alpha * x) + bias`` (Zhu et al., CVPR 2025).

    Args:
        normalized_shape: channel count C (or the trailing shape), as for ``nn.LayerNorm``.
        channels_last: True for ``(..., C)`` inputs; False for channels-first ``(N, C, ...)``.
        alpha_init: initial value of the scalar ``alpha``; 0.5 is the paper's default for
            vision and encoders, decoders use width-dependent values (see ``paper_alpha_init``).
        bias: whether ``bias`` (beta) exists; the paper's LLaMA variant has none.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(torch.tanh(self.alpha * x))


class Derf(_PointwiseNorm):
    """``Derf(x) = weight * erf(alpha * x + shift) + bias`` (Chen et al., 2025).

    Same arguments as :class:`DynamicTanh`, plus ``shift_init`` for the scalar ``shift`` (default 0).
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        channels_last: bool = True,
        alpha_init: float = 0.5,
        bias: bool = True,
        shift_init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, channels_last, alpha_init, bias, device, dtype)
        self.shift = nn.Parameter(torch.full((1,), float(shift_init), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(torch.erf(self.alpha * x + self.shift))

