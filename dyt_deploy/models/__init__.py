"""A small model zoo: ViT, ConvNeXt, a LLaMA-style decoder and a BERT-style encoder, each in every norm variant."""

from .base import TensorSpec, ZooModel
from .registry import (
    ZOO_NORMS,
    Architecture,
    arch_for_timm_name,
    create_model,
    get_arch,
    list_models,
    register_arch,
    timm_names,
)

__all__ = ["ZOO_NORMS", "Architecture", "TensorSpec", "ZooModel", "arch_for_timm_name", "create_model", "get_arch",
           "list_models", "register_arch", "timm_names"]
