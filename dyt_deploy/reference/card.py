"""card.json: what a folder of reference twins holds and how it was made.

A card names the task, the recipe (architecture, size, data, split, schedule), the seed and thread
count, and per variant its checkpoint, its held-out figure (``test_top1`` or ``test_perplexity``)
and its training seconds. Its ``key`` is what makes a folder reusable: same key, same training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DytDeployError

CARD_NAME = "card.json"
CARD_SCHEMA = "dyt-deploy/reference-card"
CARD_VERSION = 1
METRICS = {"image": "test_top1", "text": "test_perplexity"}


def card_key(recipe: dict[str, Any], seed: int, threads: int) -> dict[str, Any]:
    """What decides the trained weights: the recipe, the seed and the thread count."""
    return {"recipe": recipe, "seed": seed, "threads": threads}


def read_card(folder: str | Path) -> dict[str, Any] | None:
    """The card of ``folder``; None when it has none (or not a readable one)."""
    path = Path(folder) / CARD_NAME
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("schema") == CARD_SCHEMA else None


def write_card(folder: Path, card: dict[str, Any]) -> Path:
    path = folder / CARD_NAME
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def is_complete(folder: Path, card: dict[str, Any]) -> bool:
    """Every file the card names is there."""
    files = [card.get("test_data", ""), *(v.get("checkpoint", "") for v in card.get("variants", {}).values())]
    return bool(card.get("variants")) and all(name and (folder / name).is_file() for name in files)


def card_of_checkpoint(path: str | Path) -> tuple[dict[str, Any], str] | None:
    """(the card, the variant) when ``path`` is a checkpoint a reference card names (``DIR/VARIANT/
    checkpoint.pth`` beside ``DIR/card.json``); None for any other file."""
    path = Path(path).resolve()
    card = read_card(path.parent.parent)
    if card is None:
        return None
    for variant, entry in card.get("variants", {}).items():
        if (path.parent.parent / entry.get("checkpoint", "")).resolve() == path:
            return card, variant
    return None


def checkpoint_paths(folder: Path, card: dict[str, Any]) -> dict[str, Path]:
    """Variant -> its checkpoint path."""
    return {variant: folder / entry["checkpoint"] for variant, entry in card["variants"].items()}


def metric_text(card: dict[str, Any], variant: str) -> str:
    """``98.3% test top-1`` or ``perplexity 3.21``."""
    entry = card["variants"][variant]
    if "test_top1" in entry:
        return f"{entry['test_top1']:.1%} test top-1"
    if "test_perplexity" in entry:
        return f"test perplexity {entry['test_perplexity']:.3f}"
    raise DytDeployError(f"card variant {variant} records no test figure")
