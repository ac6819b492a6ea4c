"""Labelled examples beside a served image model, and what each variant predicts on them.

A model folder may hold ``examples.npz`` (``make demo`` writes a few held-out test digits there): one
array named after the model's image input (``[N, C, H, W]``, C 1 or 3) and optional ``labels`` (``[N]``).
:func:`examples_report` runs every READY variant of such a model's family on each example, one call at a
time through the model's own runner on its worker (outside the traffic statistics), and answers the
pixels, the labels and per variant the predicted class, its softmax confidence and the call's latency.
Models without the file have no examples: the dashboard's panel is then absent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from .compare import series_of

log = logging.getLogger("dyt_deploy.service")
EXAMPLES_FILE = "examples.npz"
MAX_EXAMPLES = 16  # the panel shows a few digits; a larger file is cut to its first ones


def has_examples(model: Any) -> bool:
    """The model's folder holds an examples file."""
    return (Path(model.folder) / EXAMPLES_FILE).is_file()


def families_with_examples(registry: Any) -> list[str]:
    """The families with a READY model that holds examples (what ``/api/live`` lists)."""
    return sorted(family for family, models in registry.families().items()
                  if any(m.ready and has_examples(m) for m in models))


def read_examples(model: Any) -> tuple[str, np.ndarray, np.ndarray | None] | None:
    """(input name, images ``[N, C, H, W]``, labels or None) of the model's examples file; None when it
    has none, or none that fits the model's one image input (logged)."""
    inputs = model.manifest.get("inputs", [])
    if len(inputs) != 1 or len(inputs[0].get("shape", [])) != 4 or not has_examples(model):
        return None
    name = inputs[0]["name"]
    with np.load(Path(model.folder) / EXAMPLES_FILE, allow_pickle=False) as data:
        images = data[name][:MAX_EXAMPLES] if name in data.files else None
        labels = data["labels"][:MAX_EXAMPLES] if "labels" in data.files else None
    if images is None or images.ndim != 4 or images.shape[1] not in (1, 3) or not fits(images, inputs[0]["shape"]):
        log.warning("examples of %s do not fit its input %s: ignored", model.name, name)
        return None
    return name, images.astype(np.float32), labels


def fits(images: np.ndarray, shape: list[Any]) -> bool:
    """Each image has the input's fixed dims (a named or negative dim takes any size)."""
    return all(not isinstance(d, int) or d < 0 or d == size for d, size in zip(shape[1:], images.shape[1:],
                                                                                strict=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


async def predictions(model: Any, name: str, images: np.ndarray) -> list[dict[str, Any]]:
    """The model's class, confidence and compute latency on each image, one call each, in turn with
    its traffic (``model.run_aside``: on its worker, or its Ray replica)."""
    found = []
    for i in range(len(images)):
        outputs, seconds = await model.run_aside({name: images[i:i + 1]})
        logits = np.asarray(next(iter(outputs.values())), dtype=np.float64).reshape(-1)
        probabilities = softmax(logits)
        label = int(probabilities.argmax())
        found.append({"label": label, "confidence": float(probabilities[label]), "latency_ms": seconds * 1e3})
    return found


async def family_examples(family: str, models: list[Any]) -> dict[str, Any] | None:
    """The family's examples (from its first model that has them) and each READY variant's predictions."""
    ready = [m for m in models if m.ready]
    found = None
    for model in ready:
        found = await anyio.to_thread.run_sync(read_examples, model)
        if found is not None:
            break
    if found is None:
        return None
    name, images, labels = found
    examples = [{"index": i, "label": None if labels is None else int(labels[i]), "pixels": images[i].tolist()}
                for i in range(len(images))]
    variants = [{"model": m.name, "variant": m.variant, "series": series_of(m), "runtime": m.runtime,
                 "predictions": await predictions(m, name, images)} for m in ready]
    return {"family": family, "input": name, "examples": examples, "variants": variants}


async def examples_report(registry: Any) -> dict[str, Any]:
    """Every family with examples: see :func:`family_examples`."""
    found = [await family_examples(family, models) for family, models in sorted(registry.families().items())]
    return {"families": [f for f in found if f is not None]}
