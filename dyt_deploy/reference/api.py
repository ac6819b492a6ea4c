"""ensure_reference / train_reference: train the twins of a task, or reuse them (see the package docstring)."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .card import (
    CARD_NAME,
    CARD_SCHEMA,
    CARD_VERSION,
    METRICS,
    card_key,
    checkpoint_paths,
    is_complete,
    read_card,
    write_card,
)
from .data import Split, corpus_record, digits_split, stdlib_corpus, text_split
from .recipes import Recipe, recipe_for
from .train import save_official_checkpoint, train_variant

__all__ = ["Reference", "ensure_reference", "train_reference"]

Progress = Callable[[str, int, int], None]  # (variant, steps done, steps in all)
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class Reference:
    """A folder of trained twins: ``checkpoints`` (variant -> path), ``test_data`` (test.npz), the ``card``,
    and whether this call ``trained`` them (False: reused)."""

    folder: Path
    checkpoints: dict[str, Path]
    test_data: Path
    card: dict[str, Any]
    trained: bool


def ensure_reference(task: str, folder: str | os.PathLike, seed: int = 0, preset: str = "full",
                     threads: int = DEFAULT_THREADS, retrain: bool = False, progress: Progress | None = None,
                     **changes: Any) -> Reference:
    """The reference twins of ``task`` ("image" or "text") in ``folder``: reused when its card matches
    (same recipe, seed and threads, every file present), else trained (as with ``retrain=True``).

    ``preset``: "full" (the README's figures) or "tiny" (seconds); ``threads``: torch intra-op threads
    while training (the figures depend on it); ``progress(variant, done, total)`` after each step;
    ``changes``: recipe fields to change (``steps=10``), part of what a reused card must match.
    """
    folder = Path(folder)
    recipe = recipe_for(task, preset, **changes)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):  # one training per folder: a second caller waits, then reuses what the first wrote
        card = read_card(folder)
        if not retrain and card is not None and card.get("key") == card_key(recipe.as_dict(), seed, threads) \
                and is_complete(folder, card):
            return Reference(folder, checkpoint_paths(folder, card), folder / card["test_data"], card, False)
        return train_reference(recipe, folder, seed, threads, progress)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` while inside (where the platform has ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent trainings of one folder write the same files
        yield
        return
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_reference(recipe: Recipe, folder: Path, seed: int = 0, threads: int = DEFAULT_THREADS,
                    progress: Progress | None = None) -> Reference:
    """Train every variant of ``recipe`` and write the folder (see the module docstring)."""
    split, data = _task_data(recipe, seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_NAME).unlink(missing_ok=True)  # a half-written folder has no card
    variants = {}
    with _threads(threads):
        for norm in recipe.variants:
            report = None if progress is None else (lambda done, total, n=norm: progress(n, done, total))
            trained = train_variant(recipe, norm, split, seed, report)
            path = save_official_checkpoint(trained, recipe, seed, folder / norm / "checkpoint.pth")
            variants[norm] = {"checkpoint": str(path.relative_to(folder)), METRICS[recipe.task]: trained.metric,
                              "seconds": round(trained.seconds, 1), "seed": seed, "weights": "model_ema"}
    _write_test_data(folder / "test.npz", recipe, split)
    card = _card(recipe, seed, threads, data, variants)
    write_card(folder, card)
    return Reference(folder, checkpoint_paths(folder, card), folder / "test.npz", card, True)


def _task_data(recipe: Recipe, seed: int) -> tuple[Split, dict[str, Any]]:
    """The split and what the card says of the data."""
    if recipe.task == "image":
        size, fraction = recipe.data["img_size"], recipe.data["test_fraction"]
        split = digits_split(seed, size, fraction)
        return split, {"source": "scikit-learn load_digits (8x8 handwritten digits, 10 classes)",
                       "scikit_learn": _sklearn_version(), "upscaled_to": [size, size], "scaled_to": [-1, 1],
                       "split": {"method": "stratified train_test_split", "random_state": seed,
                                 "test_fraction": fraction, "train": len(split.train_labels),
                                 "test": len(split.test_labels)}}
    corpus = stdlib_corpus()
    split = text_split(corpus, recipe.data["seq_len"], recipe.data["test_fraction"], recipe.data.get("test_windows"))
    return split, {**corpus_record(corpus), "tokens": "bytes (vocabulary 256)",
                   "split": {"method": "the last bytes of the corpus are held out",
                             "test_fraction": recipe.data["test_fraction"], "train_bytes": len(split.train_inputs),
                             "test_windows": len(split.test_inputs), "window": recipe.data["seq_len"]}}


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def _write_test_data(path: Path, recipe: Recipe, split: Split) -> None:
    name = "pixel_values" if recipe.task == "image" else "input_ids"
    np.savez(path, **{name: split.test_inputs.numpy(), "labels": split.test_labels.numpy()})


def _card(recipe: Recipe, seed: int, threads: int, data: dict[str, Any], variants: dict[str, Any]) -> dict[str, Any]:
    schedule = {"optimizer": "AdamW (0.9, 0.95)", "steps": recipe.steps, "batch_size": recipe.batch_size,
                "lr": recipe.lr, "min_lr": recipe.min_lr, "warmup_steps": recipe.warmup_steps,
                "decay": "cosine", "weight_decay": recipe.weight_decay, "ema_decay": recipe.ema_decay,
                "augmentation": f"random shift up to {recipe.shift} px" if recipe.shift else "none"}
    return {"schema": CARD_SCHEMA, "version": CARD_VERSION, "task": recipe.task, "preset": recipe.preset,
            "seed": seed, "threads": threads, "key": card_key(recipe.as_dict(), seed, threads),
            "model": {"arch": recipe.arch, "config": recipe.model_config}, "data": data, "split": data["split"],
            "schedule": schedule, "metric": METRICS[recipe.task], "test_data": "test.npz", "variants": variants,
            "trained_with": {"python": platform.python_version(), "torch": torch.__version__},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class _threads:
    """``torch.set_num_threads(n)`` inside the block, the previous count after."""

    def __init__(self, count: int) -> None:
        self.count, self.before = count, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.count)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)
