"""Train one variant of a reference task on the CPU, reproducibly, and write its checkpoint.

Both variants of a task start from the same weights outside their norms (``create_model`` with
the same seed), see the same batches in the same order (one generator seeded by the seed) and the
same schedule. Same seed and thread count, same numbers and same weights.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model
from ..repository import atomic_write
from .data import Split
from .recipes import Recipe

StepProgress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class TrainedVariant:
    """A trained model, its EMA weights and what its training measured on the held-out set."""

    norm: str
    model: nn.Module
    ema: dict[str, torch.Tensor]
    optimizer: dict
    metric: float  # test top-1 (image) or test perplexity (text), of the EMA weights
    seconds: float


def train_variant(recipe: Recipe, norm: str, split: Split, seed: int, progress: StepProgress | None = None
                  ) -> TrainedVariant:
    """Train the ``norm`` variant of ``recipe`` on ``split``; the metric is measured on the EMA weights."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = create_model(recipe.arch, norm=norm, seed=seed, **recipe.model_config).train()
    optimizer = _optimizer(model, recipe)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    order = torch.Generator().manual_seed(seed)
    for step, (inputs, labels) in enumerate(_batches(recipe, split, order)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        loss = _loss(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _update_ema(ema, model, recipe.ema_decay)
        if progress is not None:
            progress(step + 1, recipe.steps)
    model.eval()
    metric = evaluate(_with_state(model, ema), recipe.task, split.test_inputs, split.test_labels)
    return TrainedVariant(norm, model, ema, optimizer.state_dict(), metric, time.perf_counter() - started)


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (biases, norm weights, DyT's alpha) or embeddings' positions."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos_embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos_embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))


def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` down to ``min_lr`` at the last step."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * progress))


def _batches(recipe: Recipe, split: Split, order: torch.Generator):
    """``recipe.steps`` batches of (inputs, labels), drawn by ``order``."""
    if recipe.task == "image":
        yield from _image_batches(recipe, split, order)
    else:
        yield from _text_batches(recipe, split, order)


def _image_batches(recipe: Recipe, split: Split, order: torch.Generator):
    """Epochs of shuffled images (a new permutation each epoch), each shifted at random."""
    count, step = len(split.train_labels), 0
    while True:
        permutation = torch.randperm(count, generator=order)
        for start in range(0, count - recipe.batch_size + 1, recipe.batch_size):
            if step == recipe.steps:
                return
            index = permutation[start:start + recipe.batch_size]
            yield _shifted(split.train_inputs[index], recipe.shift, order), split.train_labels[index]
            step += 1


def _shifted(images: torch.Tensor, shift: int, order: torch.Generator) -> torch.Tensor:
    """``images`` translated by up to ``shift`` pixels each way (one offset per batch), padding with the background."""
    if shift == 0:
        return images
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=order))
    padded = F.pad(images, (shift, shift, shift, shift), value=-1.0)
    size = images.shape[-1]
    return padded[..., shift + dy:shift + dy + size, shift + dx:shift + dx + size]


def _text_batches(recipe: Recipe, split: Split, order: torch.Generator):
    """Windows of ``seq_len + 1`` bytes at random offsets of the training stream."""
    stream, seq_len = split.train_inputs, recipe.data["seq_len"]
    for _ in range(recipe.steps):
        starts = torch.randint(0, len(stream) - seq_len - 1, (recipe.batch_size,), generator=order)
        windows = torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()])
        yield windows[:, :-1], windows[:, 1:]


def _loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def _update_ema(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, value in model.state_dict().items():
            ema[name].lerp_(value, 1.0 - decay)


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``state`` (in eval mode)."""
    import copy

    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return twin.eval()


def evaluate(model: nn.Module, task: str, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """Test top-1 (image) or perplexity, exp of the mean next-byte cross-entropy (text)."""
    correct, loss, count = 0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            logits = model(inputs[start:start + batch])
            target = labels[start:start + batch]
            if task == "image":
                correct += int((logits.argmax(-1) == target).sum())
            else:
                loss += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                              reduction="sum"))
            count += target.numel()
    return correct / count if task == "image" else math.exp(loss / count)


def save_official_checkpoint(trained: TrainedVariant, recipe: Recipe, seed: int, path: Path) -> Path:
    """Write ``trained`` as the DyT paper's training code does (``model``, ``model_ema``, ``optimizer``,
    ``epoch``, ``args``), with ``args.model`` the zoo architecture and ``args.model_config`` its size."""
    args = argparse.Namespace(
        model=recipe.arch, model_config=dict(recipe.model_config), norm=trained.norm, seed=seed,
        batch_size=recipe.batch_size, lr=recipe.lr, min_lr=recipe.min_lr, weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_steps, steps=recipe.steps, model_ema=True, model_ema_decay=recipe.ema_decay,
        reference_task=recipe.task, reference_preset=recipe.preset, **_task_args(recipe))
    payload = {"model": _cpu(trained.model.state_dict()), "model_ema": _cpu(trained.ema),
               "optimizer": trained.optimizer, "epoch": recipe.steps, "args": args}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def _task_args(recipe: Recipe) -> dict:
    if recipe.task == "image":
        return {"nb_classes": recipe.model_config["num_classes"], "input_size": recipe.data["img_size"]}
    return {"seq_len": recipe.data["seq_len"]}


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}
