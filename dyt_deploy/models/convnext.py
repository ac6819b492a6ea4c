"""ConvNeXt (Liu et al., "A ConvNet for the 2020s"), in timm's layout.

Parameter names are timm's ``ConvNeXt`` ones (``stem.0``, ``stages.S.downsample.1``,
``stages.S.blocks.B.conv_dw``, ``head.norm``, ...), so checkpoints of timm ConvNeXts whose
LayerNorms were replaced by DynamicTanh (the DyT paper's official training code) load key for key.
The stem, downsampling and head norms work on channels-first ``(N, C, H, W)`` tensors (timm's
``LayerNorm2d``; a ``channels_last=False`` DyT); the block norms on channels-last ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DytDeployError
from ..nn import create_norm
from .base import TensorSpec, ZooModel
from .layers import Mlp

NORM_EPS = 1e-6


def _norm(kind: str, dim: int, alpha_init: float, channels_last: bool) -> nn.Module:
    return create_norm(kind, dim, eps=NORM_EPS, alpha_init=alpha_init, channels_last=channels_last)


class ConvNextBlock(nn.Module):
    """Depthwise 7x7 conv -> norm -> Linear -> GELU -> Linear, scaled per channel by ``gamma``, plus the input."""

    def __init__(self, dim: int, norm: str, alpha_init: float, ls_init: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = _norm(norm, dim, alpha_init, channels_last=True)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return y * self.gamma.reshape(1, -1, 1, 1) + x


class ConvNextStage(nn.Module):
    """Optional downsampling (channels-first norm, then a 2x2 stride-2 conv) and ``depth`` blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, norm: str, alpha_init: float,
                 ls_init: float) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(_norm(norm, in_dim, alpha_init, channels_last=False),
                                            nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(ConvNextBlock(dim, norm, alpha_init, ls_init) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNextHead(nn.Module):
    """Global average pool over H and W, a channels-first ``norm`` on ``(N, C, 1, 1)``, flatten, ``fc``."""

    def __init__(self, dim: int, num_classes: int, norm: str, alpha_init: float) -> None:
        super().__init__()
        self.norm = _norm(norm, dim, alpha_init, channels_last=False)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean(dim=(2, 3), keepdim=True)).flatten(1))


class ConvNeXt(ZooModel):
    """ConvNeXt classifier: ``pixel_values`` (batch, in_chans, img_size, img_size) -> ``logits`` (batch, num_classes).

    Args:
        depths: blocks per stage; dims: channels per stage (as many as ``depths``); either may
            be a comma-separated string (``"1,1,3,1"``, as ``--set depths=1,1,3,1`` gives it).
        norm: the kind of every norm (channels-first where timm has ``LayerNorm2d``); eps 1e-6.
        alpha_init: alpha's init for DyT/Derf norms.
        ls_init: the layer scale ``gamma``'s initial value; timm's default, 1e-6, makes every
            block start near the identity (what training wants). The zoo's named sizes use 1.0,
            so that in untrained models every block changes the output (see the registry).
    """

    family = "convnext"

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] | str = (3, 3, 9, 3),
        dims: Sequence[int] | str = (96, 192, 384, 768),
        norm: str = "layernorm",
        alpha_init: float = 0.5,
        ls_init: float = 1e-6,
    ) -> None:
        depths, dims = _as_ints("depths", depths), _as_ints("dims", dims)
        _check_shape(img_size, depths, dims)
        super().__init__(img_size=img_size, in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims,
                         norm=norm, alpha_init=alpha_init, ls_init=ls_init)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                                  _norm(norm, dims[0], alpha_init, channels_last=False))
        self.stages = nn.Sequential(*(
            ConvNextStage(dims[max(i - 1, 0)], dims[i], depths[i], i > 0, norm, alpha_init, ls_init)
            for i in range(len(dims))
        ))
        self.head = ConvNextHead(dims[-1], num_classes, norm, alpha_init)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(pixel_values)))

    def init_constants(self) -> dict[str, float]:
        """Every layer scale ``gamma`` starts at ``ls_init``."""
        return {name: self.config["ls_init"] for name, _ in self.named_parameters() if name.endswith(".gamma")}

    def input_specs(self) -> list[TensorSpec]:
        c = self.config
        return [TensorSpec("pixel_values", ("batch", c["in_chans"], c["img_size"], c["img_size"]))]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", self.config["num_classes"]))]


def _as_ints(name: str, value: Sequence[int] | str) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(int(item) for item in items)
    except (TypeError, ValueError):
        raise DytDeployError(f"ConvNeXt {name} must be integers, one per stage (e.g. 3,3,9,3), not {value!r}") from None


def _check_shape(img_size: int, depths: tuple[int, ...], dims: tuple[int, ...]) -> None:
    if not dims or len(depths) != len(dims):
        raise DytDeployError(f"ConvNeXt needs one depth per stage: depths {depths} and dims {dims} differ in length")
    reduction = 4 * 2 ** (len(dims) - 1)
    if img_size < reduction:
        raise DytDeployError(f"img_size {img_size} is too small for {len(dims)} ConvNeXt stages; "
                             f"use at least {reduction} (the stem divides by 4, each later stage by 2)")
