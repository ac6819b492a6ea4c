"""A BERT-style encoder: post-norm blocks, learned positions, a sequence-classification head."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import create_norm
from .base import TensorSpec, ZooModel
from .layers import Mlp, SelfAttention


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, norm: str, alpha_init: float) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.attn_out_norm = create_norm(norm, dim, eps=1e-12, alpha_init=alpha_init)
        self.mlp = Mlp(dim, hidden)
        self.out_norm = create_norm(norm, dim, eps=1e-12, alpha_init=alpha_init)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_out_norm(x + self.attn(x, mask))
        return self.out_norm(x + self.mlp(x))


class BertEncoder(ZooModel):
    """Classifier: ``input_ids``, ``attention_mask`` (batch, seq) -> ``logits`` (batch, num_labels)."""

    family = "bert"
    default_sizes = {"batch": 2, "seq": 16}

    def __init__(
        self,
        vocab_size: int = 1024,
        dim: int = 128,
        depth: int = 2,
        heads: int = 2,
        ffn_dim: int = 512,
        max_positions: int = 512,
        num_labels: int = 2,
        norm: str = "layernorm",
        alpha_init: float = 0.5,
    ) -> None:
        super().__init__(vocab_size=vocab_size, dim=dim, depth=depth, heads=heads, ffn_dim=ffn_dim,
                         max_positions=max_positions, num_labels=num_labels, norm=norm, alpha_init=alpha_init)
        self.word_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_positions, dim)
        self.embed_norm = create_norm(norm, dim, eps=1e-12, alpha_init=alpha_init)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, norm, alpha_init) for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_norm(self.word_embed(input_ids) + self.pos_embed(positions))
        # (batch, 1, 1, seq) additive mask: 0 where attended, a large negative where padded
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)

    def input_specs(self) -> list[TensorSpec]:
        vocab = self.config["vocab_size"]
        return [TensorSpec("input_ids", ("batch", "seq"), "int64", 0, vocab),
                TensorSpec("attention_mask", ("batch", "seq"), "int64", 0, 2)]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", self.config["num_labels"]))]
