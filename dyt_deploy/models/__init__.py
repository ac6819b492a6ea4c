"""A small model zoo: ViT, a LLaMA-style decoder and a BERT-style encoder, each in every norm variant."""

from .base import TensorSpec, ZooModel
from .registry import ZOO_NORMS, Architecture, create_model, get_arch, list_models, register_arch

__all__ = ["ZOO_NORMS", "Architecture", "TensorSpec", "ZooModel", "create_model", "get_arch", "list_models",
           "register_arch"]
