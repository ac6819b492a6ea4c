"""What every zoo model knows about itself: its inputs, outputs and example feeds."""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import nn

from ..errors import DytDeployError
from ..nn.convert import norm_kind_of
from ..specs import TensorSpec

__all__ = ["TensorSpec", "ZooModel", "flatten_outputs", "init_shared_weights"]


class ZooModel(nn.Module):
    """Base of the zoo's models: carries ``arch``, ``config`` and its IO signature.

    Subclasses set ``family`` and implement ``input_specs``/``output_specs``.
    """

    family: str = ""
    default_sizes: dict[str, int] = {"batch": 2}

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.arch = ""
        self.config = dict(config)

    def input_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def output_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def example_inputs(self, seed: int = 0, **sizes: int) -> dict[str, torch.Tensor]:
        """Seeded random inputs; ``sizes`` sets dynamic dims (``batch=4, seq=16``)."""
        from ..feeds import random_tensors

        return random_tensors(self.input_specs(), {**self.default_sizes, **sizes}, seed)

    def init_constants(self) -> dict[str, float]:
        """Parameters that :func:`init_shared_weights` fills with a constant instead of a seeded draw.

        Name -> value; the default is none (ConvNeXt's layer scales start at ``ls_init``).
        """
        return {}

    def upgrade_state_dict(self, state: dict) -> dict:
        """``state`` with keys of older dyt-deploy layouts renamed to this model's; the default renames nothing.

        Loaders call this before comparing keys, so checkpoints written before a rename still load.
        """
        return state


def init_shared_weights(model: nn.Module, seed: int) -> None:
    """Initialise every parameter outside norm layers from ``seed`` and its name alone.

    Each parameter draws from its own generator seeded by (seed, name), so two variants of an
    architecture that differ only in their norm get identical weights everywhere else.
    Matrices, kernels and embeddings: normal clipped at 2 std, std 1/sqrt(fan_in) (fan_in = the
    product of all but the first dim), so activations keep a useful scale through untrained
    models of either norm; the model's ``init_constants()`` (layer scales): their value; other
    vectors (biases): zeros.
    """
    skip = {f"{mod_name}.{p}" if mod_name else p for mod_name, m in model.named_modules()
            if norm_kind_of(m) is not None for p, _ in m.named_parameters(recurse=False)}
    constants = model.init_constants() if isinstance(model, ZooModel) else {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in skip:
                continue
            if name in constants:
                param.fill_(constants[name])
            elif param.dim() < 2:
                param.zero_()
            else:
                _draw(param, seed * 1_000_003 + zlib.crc32(name.encode()))


def _draw(param: torch.Tensor, seed: int) -> None:
    """Normal with std 1/sqrt(fan_in), clipped at 2 std (trunc_normal_ is ~10x slower on CPU for the same purpose)."""
    std = param[0].numel() ** -0.5
    param.normal_(0.0, std, generator=torch.Generator().manual_seed(seed)).clamp_(-2 * std, 2 * std)


def flatten_outputs(result: object) -> list[torch.Tensor]:
    """A forward result (tensor, tuple/list, dict, or an object with ``to_tuple``) as a tensor list."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [v for v in result.values() if isinstance(v, torch.Tensor)]
    if hasattr(result, "to_tuple"):
        result = result.to_tuple()
    if isinstance(result, list | tuple):
        return [t for item in result for t in flatten_outputs(item)]
    raise DytDeployError(f"model returned {type(result).__name__}; expected tensors")
