"""Reference twins: a small DyT model and its LayerNorm (image) or RMSNorm (text) twin, trained here.

``ensure_reference("image", "refs/image")`` returns the folder's :class:`Reference` (checkpoints,
held-out set, card), training both variants first when the folder holds no matching card. The folder::

    DIR/dyt/checkpoint.pth          the DyT variant, in the DyT paper's training-checkpoint format
    DIR/layernorm/checkpoint.pth    its twin (text: DIR/rmsnorm/checkpoint.pth)
    DIR/test.npz                    the held-out set: the model's input (pixel_values or input_ids) + labels
    DIR/card.json                   task, data, split, schedule, seed; per variant its test figure and seconds
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "TASKS", "Reference", "ensure_reference", "recipe_for", "train_reference"]


def __getattr__(name: str) -> Any:
    """The API, imported on first use (torch loads then, not when the CLI lists its commands)."""
    if name in ("PRESETS", "TASKS", "recipe_for"):
        from . import recipes

        return getattr(recipes, name)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
