"""Vision Transformer (Dosovitskiy et al.), pre-norm, with a class token, in timm's layout.

Parameter names are timm's ``VisionTransformer`` ones (``patch_embed.proj``, ``blocks.N.norm1``,
``blocks.N.attn.qkv``, ``fc_norm``, ...), so checkpoints of timm ViTs whose LayerNorms were
replaced by DynamicTanh (the DyT paper's official training code) load key for key.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import unknown_name
from ..nn import create_norm
from .base import TensorSpec, ZooModel
from .layers import Mlp, SelfAttention

GLOBAL_POOLS = ("token", "avg")
# Keys of checkpoints written by dyt-deploy before the timm layout (patch_embed was a bare Conv2d).
_OLD_KEYS = {"patch_embed.weight": "patch_embed.proj.weight", "patch_embed.bias": "patch_embed.proj.bias"}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``(N, C, H, W)`` -> ``(N, H/p * W/p, dim)`` through the conv ``proj``."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


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
    """ViT classifier: ``pixel_values`` (batch, C, H, W) -> ``logits`` (batch, num_classes).

    ``global_pool``: "token" (default) applies the final ``norm`` to every token and the head to
    the class token; "avg" (timm's ``global_pool='avg'``, the DyT paper's ViTs) has no ``norm``
    (an identity without keys) and applies ``fc_norm`` to the mean of the patch tokens, the class
    token excluded, before the head. Norm eps is 1e-6 and GELU exact, as in timm.
    """

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
        global_pool: str = "token",
    ) -> None:
        if global_pool not in GLOBAL_POOLS:
            raise unknown_name("global_pool", global_pool, GLOBAL_POOLS)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, norm=norm, alpha_init=alpha_init,
                         global_pool=global_pool)
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(VitBlock(dim, heads, mlp_ratio, norm, alpha_init) for _ in range(depth))
        final = create_norm(norm, dim, eps=1e-6, alpha_init=alpha_init)
        self.norm = final if global_pool == "token" else nn.Identity()
        self.fc_norm = final if global_pool == "avg" else nn.Identity()
        self.head = nn.Linear(dim, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        pooled = x[:, 1:].mean(dim=1) if self.config["global_pool"] == "avg" else x[:, 0]
        return self.head(self.fc_norm(pooled))

    def upgrade_state_dict(self, state: dict) -> dict:
        """``state`` with the keys of older dyt-deploy ViTs (``patch_embed.weight``/``.bias``) renamed to timm's."""
        renames = {old: new for old, new in _OLD_KEYS.items() if old in state and new not in state}
        if not renames:
            return state
        return {renames.get(key, key): value for key, value in state.items()}

    def input_specs(self) -> list[TensorSpec]:
        c = self.config
        return [TensorSpec("pixel_values", ("batch", c["in_chans"], c["img_size"], c["img_size"]))]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", self.config["num_classes"]))]
