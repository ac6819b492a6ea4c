"""A LLaMA-style decoder: pre-norm, rotary positions, SwiGLU, RMSNorm by default.

With ``norm="dyt"`` it follows the DyT paper's LLaMA: no beta, and alpha initialised per site
by model width (``paper_alpha_init``) unless ``alpha_init`` is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import create_norm, paper_alpha_init
from .base import TensorSpec, ZooModel


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim of ``x`` (batch, heads, seq, head_dim)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, dim))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def _norm(kind: str, dim: int, alpha: float) -> nn.Module:
    # The paper's LLaMA DyT has no beta; a LayerNorm variant keeps its usual bias.
    return create_norm(kind, dim, eps=1e-6, alpha_init=alpha, bias=kind == "layernorm")


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, norm: str, alphas: dict[str, float]) -> None:
        super().__init__()
        self.attn_norm = _norm(norm, dim, alphas["attention"])
        self.attn = CausalAttention(dim, heads)
        self.ffn_norm = _norm(norm, dim, alphas["ffn"])
        self.ffn = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class LlamaDecoder(ZooModel):
    """Causal LM: ``input_ids`` (batch, seq) -> ``logits`` (batch, seq, vocab_size)."""

    family = "llama"
    default_sizes = {"batch": 2, "seq": 16}

    def __init__(
        self,
        vocab_size: int = 1024,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        ffn_dim: int = 688,
        max_seq_len: int = 512,
        rope_theta: float = 10000.0,
        norm: str = "rmsnorm",
        alpha_init: float | None = None,
    ) -> None:
        super().__init__(vocab_size=vocab_size, dim=dim, depth=depth, heads=heads, ffn_dim=ffn_dim,
                         max_seq_len=max_seq_len, rope_theta=rope_theta, norm=norm, alpha_init=alpha_init)
        sites = ("attention", "ffn", "final")
        alphas = paper_alpha_init(dim) if alpha_init is None else dict.fromkeys(sites, alpha_init)
        self.embed = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, norm, alphas) for _ in range(depth))
        self.norm = _norm(norm, dim, alphas["final"])
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        cos, sin = rotary_tables(dim // heads, max_seq_len, rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("input_ids", ("batch", "seq"), "int64", 0, self.config["vocab_size"])]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", "seq", self.config["vocab_size"]))]
