"""Do timm models, converted to DyT the way the DyT paper's training code does it, load into the zoo unchanged?

For each case: build the timm model, replace every ``nn.LayerNorm`` (timm's ``LayerNorm2d``
included) by a DynamicTanh exactly as the official code does (written out below: the zoo's own
layers are not used on the timm side), give every alpha, weight and bias random values, load the
timm state dict into the zoo architecture ``arch_for_timm_name`` picks (strict: every key, every
shape), and compare the logits of both on the same random images. Exit 1 when any case differs
by more than 1e-4 (or does not load).

Needs timm (which needs torchvision); the module imports without it, so its pieces can be tested.

    python scripts/timm_parity.py                      # vit_small (global_pool avg) and convnext_tiny
    python scripts/timm_parity.py vit_base_patch16_224 convnext_base --pool token
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn

from dyt_deploy.errors import DytDeployError
from dyt_deploy.models import ZooModel, arch_for_timm_name, create_model, timm_names

TOLERANCE = 1e-4
DEFAULT_NAMES = ("vit_small_patch16_224", "convnext_tiny")


class OfficialDynamicTanh(nn.Module):
    """DyT as the official code defines it: ``weight * tanh(alpha * x) + bias``.

    ``alpha`` has shape [1]; ``channels_last=False`` broadcasts weight and bias over dim 1 of NCHW.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], channels_last: bool, alpha_init: float = 0.5) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.alpha = nn.Parameter(torch.ones(1) * alpha_init)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            return x * self.weight + self.bias
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def convert_ln_to_dyt(module: nn.Module) -> nn.Module:
    """The official conversion: every ``nn.LayerNorm`` becomes a DyT, channels-first where it was a LayerNorm2d."""
    if isinstance(module, nn.LayerNorm):
        # the official code asks isinstance(module, timm.layers.LayerNorm2d); the class name says the same
        channels_last = type(module).__name__ != "LayerNorm2d"
        return OfficialDynamicTanh(module.normalized_shape, channels_last)
    for name, child in list(module.named_children()):
        setattr(module, name, convert_ln_to_dyt(child))
    return module


def randomize_dyt(model: nn.Module, seed: int = 0) -> None:
    """Give every DyT a random alpha (0.2 .. 1.2), weight (about 1) and bias (about 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, OfficialDynamicTanh):
                module.alpha.copy_(0.2 + torch.rand(1, generator=generator))
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))


def zoo_model_for(name: str, state: dict[str, torch.Tensor], **overrides: Any) -> ZooModel:
    """The zoo's DyT model for timm model ``name`` with ``state`` loaded strictly.

    ``num_classes`` comes from the head's shape and ``global_pool`` "avg" from ``fc_norm`` keys,
    as the checkpoint loader does; ``overrides`` change the rest of the config (smaller models).
    """
    found = arch_for_timm_name(name)
    if found is None:
        raise DytDeployError(f"no zoo architecture for timm model {name!r}; known: {', '.join(timm_names())}")
    arch, config = found
    head = state.get("head.weight", state.get("head.fc.weight"))
    config["num_classes"] = int(head.shape[0])
    if arch.startswith("vit"):
        config["global_pool"] = "avg" if any(k.startswith("fc_norm.") for k in state) else "token"
    model = create_model(arch, norm="dyt", init_weights=False, **{**config, **overrides})
    model.load_state_dict(state, strict=True)
    return model.eval()


def max_logit_diff(timm_model: nn.Module, zoo_model: ZooModel, seed: int = 0, batch: int = 2) -> float:
    """max |timm logits - zoo logits| on one seeded batch of the zoo model's example inputs."""
    inputs = zoo_model.example_inputs(seed=seed, batch=batch)
    with torch.no_grad():
        expected = timm_model(*inputs.values())
        actual = zoo_model(**inputs)
    return float((expected - actual).abs().max())


def check(name: str, timm_kwargs: dict[str, Any] | None = None, zoo_overrides: dict[str, Any] | None = None,
          seed: int = 0) -> float:
    """Build timm model ``name`` (``timm_kwargs`` go to ``timm.create_model``), convert, load, compare."""
    import timm

    torch.manual_seed(seed)
    timm_model = convert_ln_to_dyt(timm.create_model(name, pretrained=False, **(timm_kwargs or {}))).eval()
    randomize_dyt(timm_model, seed)
    zoo_model = zoo_model_for(name, timm_model.state_dict(), **(zoo_overrides or {}))
    return max_logit_diff(timm_model, zoo_model, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES), help="timm model names")
    parser.add_argument("--pool", choices=("avg", "token"), default="avg", help="ViT global_pool (default: avg)")
    args = parser.parse_args(argv)
    failed = False
    for name in args.names:
        kwargs = {"global_pool": args.pool} if name.startswith("vit") else {}
        try:
            diff = check(name, kwargs)
        except (DytDeployError, RuntimeError) as err:
            print(f"{name}: FAILED to load: {str(err).splitlines()[0]}")
            failed = True
            continue
        verdict = "ok" if diff <= TOLERANCE else "FAILED"
        failed |= diff > TOLERANCE
        print(f"{name}: max |diff| of logits {diff:.3g} (tolerance {TOLERANCE:g}) {verdict}")
    print("FAILED" if failed else "PASSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
