"""DyT and its relatives, the normalization switchboard, and norm conversion."""

from .convert import ConversionReport, ConvertedSite, convert_norms, site_role
from .dyt import Derf, DynamicTanh
from .norms import LayerNorm2d, RMSNorm2d, create_norm, norm_kinds, paper_alpha_init, register_norm

__all__ = [
    "ConversionReport",
    "ConvertedSite",
    "Derf",
    "DynamicTanh",
    "LayerNorm2d",
    "RMSNorm2d",
    "convert_norms",
    "create_norm",
    "norm_kinds",
    "paper_alpha_init",
    "register_norm",
    "site_role",
]
