"""``make demo``: the trained DyT and LayerNorm twins of a small ViT, from checkpoint to served models.

1. train the reference image twins (a DyT ViT and its LayerNorm twin on scikit-learn's 8x8 digits,
   ``dyt train-reference --task image``), or reuse them from ``--reference``/image while their card
   matches, and print their held-out top-1;
2. export each checkpoint (the DyT paper's training format) into a model repository (Triton layout),
   verified against PyTorch, the DyT one again with gamma/beta folded (DynamicTanh function form), and
   copy one held-out test digit per class beside each model (examples.npz, the dashboard's digits);
3. with ``--text`` (or when ``--reference``/text already holds them), the text twins too: a DyT
   LLaMA-style decoder and its RMSNorm twin on Python standard-library sources, served for generation;
4. serve the repository (Open Inference Protocol), query every model with tritonclient, compare DyT
   and LayerNorm latency, then keep serving with the dashboard until Ctrl-C (``--no-serve`` stops
   after the checks).

``--arch NAME`` serves random-weight variants of a zoo model instead (what recognises nothing, but
shows any architecture's latency).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dyt_deploy.checkpoint import load_checkpoint, save_checkpoint
from dyt_deploy.errors import DytDeployError
from dyt_deploy.export import dyt_sites, export_onnx
from dyt_deploy.models import create_model
from dyt_deploy.nn.convert import norm_kind_of
from dyt_deploy.repository import sha256_file


def build_variants(arch: str, norms: list[str], out_dir: Path, seed: int = 0) -> list[dict]:
    """Save one model.pt per norm variant of ``arch``, reload each and run it once."""
    made = []
    for norm in norms:
        model = create_model(arch, norm=norm, seed=seed)
        path = save_checkpoint(model, out_dir / f"{arch}-{norm}" / "model.pt")
        reloaded = load_checkpoint(path).model
        inputs = model.example_inputs(seed=seed)
        with torch.no_grad():
            start = time.perf_counter()
            logits = reloaded(**inputs)
            elapsed = time.perf_counter() - start
        made.append({
            "variant": f"{arch}-{norm}", "path": path, "sha256": sha256_file(path)[:12],
            "params": sum(p.numel() for p in model.parameters()),
            "norm_layers": sum(norm_kind_of(m) is not None for m in model.modules()),
            "output": tuple(logits.shape), "forward_ms": elapsed * 1e3,
        })
    return made


def command_line(tool: str, *args: Any) -> str:
    """``tool args`` as a command that works as printed: the bare name when it is on PATH and is
    this environment's, else its path beside this Python (an inactive virtual environment)."""
    beside = Path(sys.executable).parent / tool
    found = shutil.which(tool)
    program = tool if found and Path(found).resolve() == beside.resolve() else str(beside)
    return shlex.join([program, *map(str, args)])


IMAGE_FAMILY, TEXT_FAMILY = "digits_vit", "stdlib_llama"
EXAMPLES_FILE = "examples.npz"  # what service.telemetry.examples reads beside a model
TEXT_PROMPT = "def "


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where the repository is written")
    parser.add_argument("--reference", type=Path, default=Path("reference"),
                        help="the trained twins' cache: REFERENCE/image (and REFERENCE/text), reused while "
                             "their card matches (make reference writes the same folders)")
    parser.add_argument("--preset", default="full", choices=("full", "tiny"),
                        help="the twins' training recipe: full (the README's figures) or tiny (seconds, tests)")
    parser.add_argument("--text", action="store_true",
                        help="train (or reuse) and serve the text twins too (without it: only when "
                             "REFERENCE/text already holds them)")
    parser.add_argument("--arch", default=None, help="serve random-weight variants of this zoo model instead")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-serve", action="store_true", help="stop after the service checks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console(width=140)
    repo = args.out / "repo"
    if args.arch:
        served = random_variants_repository(args.arch, args.out, console)
    else:
        served = reference_repository(args, console)
    console.print("\n[bold]Serving the repository[/] and querying it with tritonclient (JSON and binary) ...")
    from .checks import demo_passed, run_service_demo

    try:
        report = run_service_demo(repo, requests=10, rounds=30, console=console,
                                  generate_prompt=TEXT_PROMPT if served.get("text") else None)
        passed = demo_passed(report)
    except DytDeployError as err:
        console.print(f"error: {err}", highlight=False)
        passed = False
    console.print("service checks: PASSED" if passed else "service checks: FAILED")
    if not passed:
        sys.exit(1)
    if not args.no_serve:
        serve(repo, served, args.port, console)


def serve(repo: Path, served: dict[str, str], port: int, console: Console) -> None:
    """Print where to look and what to try, then serve ``repo`` until Ctrl-C."""
    name = served["image"]
    console.print(f"\nDashboard: http://127.0.0.1:{port}/   (Ctrl-C stops the service)")
    console.print(f"Try: curl -s http://127.0.0.1:{port}/v2/models/{name}", highlight=False, soft_wrap=True)
    data = ["--data", served["test_data"]] if served.get("test_data") else []  # accuracy on the held-out set
    console.print(f"     {command_line('dyt-check', repo / name, '--runners', 'ort,torch', *data)}",
                  highlight=False, soft_wrap=True)
    if served.get("text"):
        body = f'{{"text_input": "{TEXT_PROMPT}", "parameters": {{"max_tokens": 80}}}}'
        console.print(f"     curl -s http://127.0.0.1:{port}/v2/models/{served['text']}/generate -d '{body}'",
                      highlight=False, soft_wrap=True)
        console.print(f"     {command_line('dyt-generate', served['text_checkpoint'], '-p', TEXT_PROMPT, '-n', 80)}",
                      highlight=False, soft_wrap=True)
    from ..cli import main as serve_main

    serve_main(["--repository", str(repo), "--port", str(port)])


def random_variants_repository(arch: str, out: Path, console: Console) -> dict[str, str]:
    """``--arch``: random-weight LayerNorm and DyT variants of a zoo model (same seed), exported."""
    console.print(f"[bold]dyt-deploy demo[/]: {arch} (random weights), LayerNorm vs DyT, written under {out}/")
    table = Table("variant", "model.pt", "sha256", "params", "norm layers", "output", "1st forward")
    for row in build_variants(arch, ["layernorm", "dyt"], out):
        table.add_row(row["variant"], str(row["path"]), row["sha256"], f"{row['params']:,}",
                      str(row["norm_layers"]), str(row["output"]), f"{row['forward_ms']:.0f} ms")
    console.print(table)
    console.print("Both variants share every weight outside their norm layers (same seed).")
    jobs = [(out / f"{arch}-{norm}" / "model.pt", f"{arch}-{norm}" + ("-folded" if fold else ""),
             {"form": form, "fold": fold}) for norm, form, fold in EXPORT_JOBS]
    export_all(console, out / "repo", jobs)
    return {"image": f"{arch}-dyt"}


EXPORT_JOBS = [("layernorm", "pattern", False), ("dyt", "pattern", False), ("dyt", "function", True)]


def export_all(console: Console, repo: Path, jobs: list[tuple[Path, str, dict[str, Any]]]) -> None:
    """Export each (checkpoint, model folder name, export options) into ``repo``, verified; a table."""
    console.print(f"\n[bold]Exporting to ONNX[/] into the model repository {repo}/ ...")
    exports = Table("model folder", "form", "DyT sites", "folded", "max abs err", "cosine", "verdict", "time")
    decoders = 0
    for source, name, options in jobs:
        result = export_onnx(source, repository=repo, name=name, force=True, **options)
        decoders += result.parity is None
        sites = sum(dyt_sites(result.onnx_path, result.form, result.form_counts).values())
        exports.add_row(name, result.form, str(sites), "-" if result.fold is None else str(result.fold.folded),
                        *verification_cells(result), f"{result.seconds:.0f} s")
    console.print(exports)
    if decoders:
        console.print("(a text-generation model is verified by greedy decoding: its cells are the logits' worst "
                      "difference, and whether the tokens are equal)", highlight=False)


def verification_cells(result: Any) -> tuple[str, str, str]:
    """Max abs error, cosine (or for a decoder: whether greedy tokens agree) and the verdict of an export."""
    if result.parity is not None:
        first = next(iter(result.parity.outputs.values()))
        return f"{first.max_abs:.2e}", f"{first.cosine:.7f}", "PASSED" if result.parity.passed else "FAILED"
    decoding = result.decoding or {}
    tokens = "tokens equal" if decoding.get("tokens_equal") else "tokens differ"
    return (f"{decoding.get('max_abs_diff', float('nan')):.2e}", tokens,
            "PASSED" if decoding.get("passed") else "FAILED")


def reference_repository(args: argparse.Namespace, console: Console) -> dict[str, str]:
    """The trained twins (image; text with ``--text`` or when cached), exported into ``args.out``/repo
    with the image twins' examples beside them; the served model names by task."""
    console.print(f"[bold]dyt-deploy demo[/]: trained DyT and LayerNorm twins, written under {args.out}/")
    image = trained_twins("image", args.reference / "image", args.preset, console)
    repo = args.out / "repo"
    names = {norm: f"digits-{norm}" for norm in image.checkpoints}
    jobs = [(image.checkpoints[norm], names[norm] + ("-folded" if fold else ""),
             {"form": form, "fold": fold, "family": IMAGE_FAMILY}) for norm, form, fold in EXPORT_JOBS]
    served = {"image": names["dyt"], "test_data": str(image.test_data)}
    text_folder = args.reference / "text"
    if args.text or reference_ready("text", text_folder, args.preset):
        text = trained_twins("text", text_folder, args.preset, console)
        jobs += [(path, f"stdlib-{norm}", {"family": TEXT_FAMILY, "task": "text-generation"})
                 for norm, path in text.checkpoints.items()]
        served.update(text="stdlib-dyt", text_checkpoint=str(text.checkpoints["dyt"]))
    else:
        console.print(f"Text twins: not trained in {text_folder}/ (minutes); make demo TEXT=1 trains and serves "
                      "them, or train them first with:", highlight=False, soft_wrap=True)
        console.print(f"  {command_line('dyt', 'train-reference', '--task', 'text', '-o', text_folder)}",
                      highlight=False, soft_wrap=True)
    export_all(console, repo, jobs)
    copied = write_examples(image.test_data, [repo / job[1] for job in jobs[:len(EXPORT_JOBS)]])
    console.print(f"Copied {copied} held-out test digits (one per class) beside each image model ({EXAMPLES_FILE}).")
    return served


def reference_ready(task: str, folder: Path, preset: str) -> bool:
    """``folder`` holds ``task``'s twins that :func:`ensure_reference` would reuse (nothing trained)."""
    from dyt_deploy.reference.api import DEFAULT_THREADS
    from dyt_deploy.reference.card import card_key, is_complete, read_card
    from dyt_deploy.reference.recipes import recipe_for

    card = read_card(folder)
    key = card_key(recipe_for(task, preset).as_dict(), 0, DEFAULT_THREADS)
    return card is not None and card.get("key") == key and is_complete(folder, card)


def trained_twins(task: str, folder: Path, preset: str, console: Console) -> Any:
    """``task``'s reference twins in ``folder``: trained with a progress bar when missing, else reused;
    says which, with each variant's held-out figure from the card."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dyt_deploy.reference import ensure_reference
    from dyt_deploy.reference.card import metric_text

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bars: dict[str, Any] = {}
    started = time.perf_counter()
    with Progress(*columns, console=console) as progress:

        def report(variant: str, done: int, total: int) -> None:
            if variant not in bars:
                bars[variant] = progress.add_task(f"train {task} {variant}", total=total)
            progress.update(bars[variant], completed=done)

        twins = ensure_reference(task, folder, preset=preset, progress=report)
    how = (f"trained in {time.perf_counter() - started:.0f} s" if twins.trained
           else "reused (their card matches; make reference REFERENCE_FLAGS=--retrain trains them again)")
    console.print(f"{task.capitalize()} twins ({preset} preset) in {folder}/: {how}", highlight=False, soft_wrap=True)
    for variant in twins.checkpoints:
        console.print(f"  {variant}: {metric_text(twins.card, variant)}", highlight=False)
    return twins


def pick_examples(labels: np.ndarray, per_class: int = 1) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each label, in label order."""
    return np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)])


def write_examples(test_data: Path, folders: list[Path]) -> int:
    """Copy one held-out sample per class (inputs + labels) into each model folder; how many."""
    with np.load(test_data, allow_pickle=False) as data:
        chosen = pick_examples(data["labels"])
        arrays = {name: data[name][chosen] for name in data.files}
    for folder in folders:
        np.savez(folder / EXAMPLES_FILE, **arrays)
    return len(chosen)


if __name__ == "__main__":
    main()
