"""The normalization switchboard: ``create_norm(kind, dim, **kwargs)``.

Each kind registers a small factory; an unknown kind raises an error that lists the known ones.
Models build every norm through here, so one argument switches an architecture between
LayerNorm, RMSNorm, DyT and its relatives, channels-last (``(..., C)``) or channels-first
(``(N, C, H, W)``, as in ConvNeXt's stem, downsampling layers and head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import unknown_name
from .dyt import Derf, DynamicTanh

NormFactory = Callable[..., nn.Module]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over dim 1 of channels-first tensors (``(N, C, H, W)``, any rank >= 2).

    Moves the channels last, normalizes them, moves them back: the same function and parameter
    names (``weight``, ``bias``) as timm's ``LayerNorm2d``. ``normalized_shape`` is ``(C,)``.
    """

    channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class RMSNorm2d(nn.RMSNorm):
    """RMSNorm over dim 1 of channels-first tensors (``(N, C, H, W)``, any rank >= 2); ``weight`` only."""

    channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


_NORMS: dict[str, NormFactory] = {}


def register_norm(kind: str) -> Callable[[NormFactory], NormFactory]:
    """Decorator: make ``create_norm(kind, ...)`` call the decorated factory."""

    def add(factory: NormFactory) -> NormFactory:
        _NORMS[kind] = factory
        return factory

    return add


def norm_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_NORMS)


def create_norm(kind: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build a normalization layer of ``kind`` over ``dim`` channels.

    Known kinds: layernorm, rmsnorm, batchnorm, instancenorm, dyt, derf, identity. Keyword
    arguments go to the layer (``eps``, ``bias``, ``alpha_init``, ``channels_last``, ...);
    ones a kind does not use are ignored so callers can pass one set for all kinds.
    ``channels_last=False`` (default True) gives channels-first layers for layernorm
    (:class:`LayerNorm2d`), rmsnorm (:class:`RMSNorm2d`), dyt and derf.
    """
    factory = _NORMS.get(kind.lower())
    if factory is None:
        raise unknown_name("norm kind", kind, norm_kinds())
    return factory(dim, **kwargs)


@register_norm("layernorm")
def _layernorm(dim: int, eps: float = 1e-5, bias: bool = True, channels_last: bool = True, **_: Any) -> nn.Module:
    return (nn.LayerNorm if channels_last else LayerNorm2d)(dim, eps=eps, bias=bias)


@register_norm("rmsnorm")
def _rmsnorm(dim: int, eps: float = 1e-6, channels_last: bool = True, **_: Any) -> nn.Module:
    return (nn.RMSNorm if channels_last else RMSNorm2d)(dim, eps=eps)


@register_norm("batchnorm")
def _batchnorm(dim: int, eps: float = 1e-5, **_: Any) -> nn.Module:
    """BatchNorm over dim 1 of ``(N, C)`` / ``(N, C, L)`` inputs (DyT is not a replacement for it)."""
    return nn.BatchNorm1d(dim, eps=eps)


@register_norm("instancenorm")
def _instancenorm(dim: int, eps: float = 1e-5, **_: Any) -> nn.Module:
    """InstanceNorm over ``(N, C, L)`` inputs, with affine weight and bias."""
    return nn.InstanceNorm1d(dim, eps=eps, affine=True)


@register_norm("dyt")
def _dyt(dim: int, alpha_init: float = 0.5, bias: bool = True, channels_last: bool = True, **_: Any) -> nn.Module:
    return DynamicTanh(dim, channels_last=channels_last, alpha_init=alpha_init, bias=bias)


@register_norm("derf")
def _derf(
    dim: int,
    alpha_init: float = 0.5,
    bias: bool = True,
    channels_last: bool = True,
    shift_init: float = 0.0,
    **_: Any,
) -> nn.Module:
    return Derf(dim, channels_last=channels_last, alpha_init=alpha_init, bias=bias, shift_init=shift_init)


@register_norm("identity")
def _identity(dim: int, **_: Any) -> nn.Module:
    return nn.Identity()


# Paper Table 11 (LLaMA): optimal alpha init (before attention, elsewhere) by model width;
# depth barely matters. Widths between rows take the nearest row on a log scale.
_PAPER_ALPHA_BY_WIDTH = {1024: (1.0, 1.0), 2048: (1.0, 0.5), 4096: (0.8, 0.2), 8192: (0.2, 0.05)}


def paper_alpha_init(width: int) -> dict[str, float]:
    """The DyT paper's decoder alpha inits for a model ``width`` wide, per site.

    Returns ``{"attention": a, "ffn": b, "final": b}``: the norm before attention gets ``a``, the
    norm before the FFN and the final norm get ``b``. Widths below 1024 use the 1024 row.
    """
    import math

    nearest = min(_PAPER_ALPHA_BY_WIDTH, key=lambda w: abs(math.log2(max(width, 1)) - math.log2(w)))
    attention, other = _PAPER_ALPHA_BY_WIDTH[nearest]
    return {"attention": attention, "ffn": other, "final": other}
