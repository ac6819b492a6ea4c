"""Pre-norm residual stacks with each residual add handed to the norm after it.

A pre-norm block computes ``x = x + f(norm(x))`` for each of its sublayers (attention, MLP). Read
across blocks, every residual add is followed by a norm: the next sublayer's, or the final one.
:func:`fused_prenorm` runs the stack that way, through :func:`dyt_deploy.nn.add_and_norm`, so a
norm with a fused ``forward_add`` (the Triton DyT kernel module) does each add and norm in one
pass over memory. With plain norms it runs the same eager ops in the same order as the blocks'
own ``forward``, so the results are bit for bit the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..nn import add_and_norm

Step = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]  # (norm, sublayer)


def fused_prenorm(x: torch.Tensor, steps: Sequence[Step], final_norm: nn.Module) -> torch.Tensor:
    """``final_norm`` of the residual stream after every ``x = x + sublayer(norm(x))`` step."""
    if not steps:
        return final_norm(x)
    normed = steps[0][0](x)
    for i, (_, sublayer) in enumerate(steps):
        following = steps[i + 1][0] if i + 1 < len(steps) else final_norm
        x, normed = add_and_norm(following, sublayer(normed), x)
    return normed


def fuses_residual(norms: Sequence[nn.Module]) -> bool:
    """Whether any of ``norms`` can fuse the residual add before it (has ``forward_add``)."""
    return any(hasattr(n, "forward_add") for n in norms)
