"""One palette for every figure dyt-deploy draws: the bench report's plots and the service's dashboard
(which gets :func:`palette_document` injected into its page), so a variant has one colour everywhere.

Colours are seaborn's "deep" set, fixed per variant name (LayerNorm blue, RMSNorm orange, DyT green,
folded DyT red, Derf purple); any other variant takes the next unused extra colour in order.
"""

from __future__ import annotations

from collections.abc import Iterable

VARIANT_COLORS = {"layernorm": "#4c72b0", "rmsnorm": "#dd8452", "dyt": "#55a868", "dyt-folded": "#c44e52",
                  "derf": "#8172b3"}
EXTRA_COLORS = ("#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
# Op types in the profile plot take other colours, so no op reads as a variant.
CATEGORY_COLORS = ("#1f3a5f", "#f2c14e", "#2a9d8f", "#9b2226", "#b8b8ff", "#5e548e", "#e9d8a6")
NORM_LABELS = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "dyt": "DyT", "dyt-folded": "DyT (folded)",
               "derf": "Derf"}
ALL_VARIANT_COLORS = (*VARIANT_COLORS.values(), *EXTRA_COLORS)


def variant_colors(names: Iterable[str]) -> dict[str, str]:
    """A colour per name: its own where it has one, else the extra colours in order (cycling when
    there are more names than colours)."""
    names = list(dict.fromkeys(names))
    others = [n for n in names if n not in VARIANT_COLORS]
    return {n: VARIANT_COLORS.get(n) or EXTRA_COLORS[others.index(n) % len(EXTRA_COLORS)] for n in names}


def norm_label(variant: str) -> str:
    """``dyt`` -> ``DyT``; a name without a label stays as it is."""
    return NORM_LABELS.get(variant, variant)


def palette_document() -> dict:
    """What the dashboard reads: the fixed colours, the extra ones for other variants, the labels."""
    return {"variants": VARIANT_COLORS, "extra": list(EXTRA_COLORS), "labels": NORM_LABELS}
