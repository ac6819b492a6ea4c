"""The zoo's registry: ``create_model(name, norm=..., seed=...)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DytDeployError, unknown_name
from .base import ZooModel, init_shared_weights
from .bert import BertEncoder
from .convnext import ConvNeXt
from .llama import LlamaDecoder
from .vit import VisionTransformer

ZOO_NORMS = ("layernorm", "rmsnorm", "dyt", "derf")


@dataclass(frozen=True)
class Architecture:
    """A named configuration of a model class (e.g. ``vit_small`` = ViT at width 384)."""

    name: str
    cls: type[ZooModel]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.cls.family


_ARCHS: dict[str, Architecture] = {}


def register_arch(name: str, cls: type[ZooModel], **config: Any) -> None:
    """Add an architecture to the zoo under ``name``."""
    _ARCHS[name] = Architecture(name, cls, config)


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_ARCHS)


def get_arch(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name lists the zoo."""
    try:
        return _ARCHS[name]
    except KeyError:
        raise unknown_name("architecture", name, list_models()) from None


def create_model(name: str, norm: str | None = None, seed: int = 0, init_weights: bool = True,
                 **overrides: Any) -> ZooModel:
    """Build zoo model ``name`` with norm layers of kind ``norm`` (default: the architecture's own).

    Every parameter outside the norm layers is drawn from ``seed`` and its name, so variants built
    with the same seed differ only in their norm. ``overrides`` change config entries (``depth=2``);
    an unknown entry is an error. ``init_weights=False`` skips the seeded initialisation (for
    callers that load a state_dict next). The model is returned in eval mode.
    """
    arch = get_arch(name)
    config = {**arch.config, **overrides}
    if norm is not None:
        config["norm"] = norm
    kind = config.get("norm", "layernorm")
    if kind not in ZOO_NORMS:
        raise unknown_name("zoo norm", kind, ZOO_NORMS)
    try:
        model = arch.cls(**config)
    except TypeError as err:
        raise DytDeployError(f"bad config for {name}: {err}") from None
    model.arch = name
    if init_weights:
        init_shared_weights(model, seed)
    return model.eval()


def timm_names() -> list[str]:
    """The timm model names :func:`arch_for_timm_name` maps to zoo architectures, sorted."""
    return sorted(_TIMM_NAMES)


def arch_for_timm_name(name: str) -> tuple[str, dict[str, Any]] | None:
    """The zoo architecture and config overrides for timm model ``name``; None for names the zoo lacks.

    ``name`` is what the official DyT training code records as ``args.model`` (e.g.
    ``vit_base_patch16_224``, ``convnext_tiny``); a pretrained tag (``.augreg_in21k``) is ignored.
    The caller adds what the checkpoint itself tells (``num_classes``, ``global_pool``).
    """
    found = _TIMM_NAMES.get(name.partition(".")[0])
    return None if found is None else (found[0], dict(found[1]))


# ViT sizes from the ViT/DeiT papers: (width, depth, heads).
register_arch("vit_tiny", VisionTransformer, dim=192, depth=12, heads=3)
register_arch("vit_small", VisionTransformer, dim=384, depth=12, heads=6)
register_arch("vit_base", VisionTransformer, dim=768, depth=12, heads=12)
register_arch("vit_large", VisionTransformer, dim=1024, depth=24, heads=16)
# ConvNeXt sizes from the ConvNeXt paper. Layer scales start at 1.0, not timm's 1e-6: with random
# weights, 1e-6 leaves every block's contribution below any parity tolerance.
register_arch("convnext_tiny", ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), ls_init=1.0)
register_arch("convnext_small", ConvNeXt, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), ls_init=1.0)
register_arch("convnext_base", ConvNeXt, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), ls_init=1.0)
register_arch("convnext_large", ConvNeXt, depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), ls_init=1.0)
register_arch("llama_tiny", LlamaDecoder, vocab_size=1024, dim=256, depth=4, heads=4, ffn_dim=688)
register_arch("llama_small", LlamaDecoder, vocab_size=8192, dim=512, depth=8, heads=8, ffn_dim=1376)
register_arch("bert_tiny", BertEncoder, vocab_size=1024, dim=128, depth=2, heads=2, ffn_dim=512)
register_arch("bert_small", BertEncoder, vocab_size=8192, dim=512, depth=4, heads=8, ffn_dim=2048)

_SIZES = ("tiny", "small", "base", "large")
_TIMM_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"vit_{size}_patch16_224": (f"vit_{size}", {"img_size": 224, "patch_size": 16}) for size in _SIZES},
    **{f"convnext_{size}": (f"convnext_{size}", {}) for size in _SIZES},
}
