"""Vision Transformer (Dosovitskiy et al.), pre-norm, with a class token."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import create_norm
from .base import TensorSpec, ZooModel
from .layers import Mlp, SelfAttention


class VitBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm: str, alpha_init: float) -> None:
        super().__init__()
        self.norm1 = create_norm(norm, dim, eps=1e-6, alpha_init=alpha_init)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = create_norm(norm, dim, eps=1e-6, alpha_init=alpha_init)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(ZooModel):
    """ViT classifier: ``pixel_values`` (batch, C, H, W) -> ``logits`` (batch, num_classes)."""

    family = "vit"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        norm: str = "layernorm",
        alpha_init: float = 0.5,
    ) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, norm=norm, alpha_init=alpha_init)
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(VitBlock(dim, heads, mlp_ratio, norm, alpha_init) for _ in range(depth))
        self.norm = create_norm(norm, dim, eps=1e-6, alpha_init=alpha_init)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])

    def input_specs(self) -> list[TensorSpec]:
        c = self.config
        return [TensorSpec("pixel_values", ("batch", c["in_chans"], c["img_size"], c["img_size"]))]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", self.config["num_classes"]))]
