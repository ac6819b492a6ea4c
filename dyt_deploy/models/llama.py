"""A LLaMA-style decoder: pre-norm, rotary positions, SwiGLU, RMSNorm by default.

With ``norm="dyt"`` it follows the DyT paper's LLaMA: no beta, and alpha initialised per site
by model width (``paper_alpha_init``) unless ``alpha_init`` is given.

``forward(input_ids) -> logits`` is the plain causal LM every exporter and runner uses;
``forward_cached`` is the incremental one for generation: it takes the key/value cache of the
tokens seen so far (one ``(key, value)`` pair per layer, each ``(batch, heads, past, head_dim)``)
and returns the logits of the new tokens with the cache grown by them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import create_norm, paper_alpha_init
from .base import TensorSpec, ZooModel

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (key, value), each (batch, heads, length, head_dim)


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

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past: tuple[torch.Tensor, ...],
                       mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention of the new tokens ``x`` over ``past`` keys/values and themselves.

        ``cos``/``sin``: (batch, 1, seq, head_dim/2) at the new tokens' positions; ``mask``: boolean
        (batch, 1, seq, past + seq), True where a query may attend. Returns the output and the grown cache.
        """
        batch, seq, dim = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, dim)), (k, v)


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

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past: tuple[torch.Tensor, ...],
                       mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, present = self.attn.forward_cached(self.attn_norm(x), cos, sin, past, mask)
        x = x + attended
        return x + self.ffn(self.ffn_norm(x)), present


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

    def forward_cached(self, input_ids: torch.Tensor, past: KVCache | None = None,
                       attention_mask: torch.Tensor | None = None,
                       position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Logits of the new tokens ``input_ids`` (batch, seq) and the cache grown by them.

        Args:
            past: the cache of the tokens before (None or empty tensors: a prefill).
            attention_mask: (batch, past + seq), 1 for real tokens, 0 for padding; None: all real.
            position_ids: (batch, seq) rotary positions; None: ``past .. past + seq - 1``.
        """
        batch, seq = input_ids.shape
        past = past or self.empty_cache(batch)
        past_len = past[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq, device=input_ids.device).expand(batch, seq)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_len + seq, dtype=torch.int64, device=input_ids.device)
        cos, sin = self.rope_cos[position_ids].unsqueeze(1), self.rope_sin[position_ids].unsqueeze(1)
        mask = causal_mask(attention_mask, seq)
        x = self.embed(input_ids)
        present = []
        for layer, layer_past in zip(self.layers, past, strict=True):
            x, kv = layer.forward_cached(x, cos, sin, layer_past, mask)
            present.append(kv)
        return self.lm_head(self.norm(x)), present

    def empty_cache(self, batch: int) -> KVCache:
        """A cache with no tokens: per layer (key, value) of shape (batch, heads, 0, head_dim)."""
        heads, dim = self.config["heads"], self.config["dim"]
        weight = self.embed.weight
        empty = torch.zeros(batch, heads, 0, dim // heads, dtype=weight.dtype, device=weight.device)
        return [(empty, empty) for _ in self.layers]

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("input_ids", ("batch", "seq"), "int64", 0, self.config["vocab_size"])]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", "seq", self.config["vocab_size"]))]


def causal_mask(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """Boolean (batch, 1, seq, total) mask: the last ``seq`` of ``total`` positions attend to real
    tokens at or before themselves, and always to themselves (so a padded query row is never empty)."""
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = (torch.arange(seq, device=attention_mask.device) + (total - seq)).unsqueeze(1)
    allowed = (keys.unsqueeze(0) <= queries).unsqueeze(0) & attention_mask.bool().unsqueeze(1)
    return (allowed | (keys.unsqueeze(0) == queries).unsqueeze(0)).unsqueeze(1)
