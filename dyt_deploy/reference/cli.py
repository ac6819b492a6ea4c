"""``dyt train-reference``: train (or reuse) the reference twins of a task, with a progress bar."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..cli_common import console, err_console, user_errors


@user_errors
def train_reference(
    task: str = typer.Option(..., help="image (a DyT ViT and its LayerNorm twin on scikit-learn's digits) or text "
                             "(a DyT LLaMA-style decoder and its RMSNorm twin on Python stdlib sources, bytes)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder: VARIANT/checkpoint.pth, test.npz, card.json."),
    seed: int = typer.Option(0, help="Split, initialisation and data order; same seed, same weights."),
    preset: str = typer.Option("full", help="full (the README's figures) or tiny (trains in seconds, for tests)."),
    threads: int = typer.Option(2, help="Torch threads while training (the figures depend on it)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train even when OUTPUT holds twins with a matching card."),
) -> None:
    """Train the reference twins of TASK on the CPU and write them to OUTPUT (reused when its card matches)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .api import ensure_reference
    from .card import metric_text

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(variant: str, done: int, total: int) -> None:
            if variant not in tasks:
                tasks[variant] = bar.add_task(f"train {task} {variant}", total=total)
            bar.update(tasks[variant], completed=done)

        reference = ensure_reference(task, output, seed=seed, preset=preset, threads=threads, retrain=retrain,
                                     progress=progress)
    how = "trained" if reference.trained else "reused (card matches; --retrain trains again)"
    for variant, entry in reference.card["variants"].items():
        console.print(f"{variant}: {metric_text(reference.card, variant)}, {entry['seconds']:.1f} s to train, "
                      f"{reference.checkpoints[variant]}", highlight=False)
    console.print(f"{how}: {reference.folder} (card {reference.folder / 'card.json'}, held-out set "
                  f"{reference.test_data})", highlight=False)
