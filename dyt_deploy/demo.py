"""``make demo``: the LayerNorm and DyT variants of a small ViT, from model.pt to verified ONNX.

1. build both variants (same seed: they differ only in their norm layers) and save model.pt;
2. export each into a model repository (Triton layout), verified against PyTorch;
3. export the DyT variant again with gamma/beta folded, as the DynamicTanh function form;
4. serve the repository (Open Inference Protocol), query every model with tritonclient, compare
   DyT and LayerNorm latency, then keep serving with the dashboard until Ctrl-C (``--no-serve``
   stops after step 4's checks).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import DytDeployError
from .export import dyt_sites, export_onnx
from .models import create_model
from .nn.convert import norm_kind_of
from .repository import sha256_file


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-serve", action="store_true", help="stop after the service checks")
    args = parser.parse_args(argv)
    console = Console(width=140)
    console.print(f"[bold]dyt-deploy demo[/]: {args.arch}, LayerNorm vs DyT, written under {args.out}/")
    table = Table("variant", "model.pt", "sha256", "params", "norm layers", "output", "1st forward")
    for row in build_variants(args.arch, ["layernorm", "dyt"], args.out):
        table.add_row(row["variant"], str(row["path"]), row["sha256"], f"{row['params']:,}",
                      str(row["norm_layers"]), str(row["output"]), f"{row['forward_ms']:.0f} ms")
    console.print(table)
    console.print("Both variants share every weight outside their norm layers (same seed).")
    console.print(f"\n[bold]Exporting to ONNX[/] into the model repository {args.out / 'repo'}/ ...")
    exports = Table("model folder", "form", "DyT sites", "folded", "max abs err", "cosine", "verdict", "time")
    jobs = [("layernorm", "pattern", False), ("dyt", "pattern", False), ("dyt", "function", True)]
    for norm, form, fold in jobs:
        name = f"{args.arch}-{norm}" + ("-folded" if fold else "")
        result = export_onnx(args.out / f"{args.arch}-{norm}" / "model.pt", repository=args.out / "repo", name=name,
                             form=form, fold=fold, force=True)
        logits = result.parity.outputs["logits"]
        exports.add_row(name, form, str(sum(dyt_sites(result.onnx_path, result.form, result.form_counts).values())),
                        "-" if result.fold is None else str(result.fold.folded), f"{logits.max_abs:.2e}",
                        f"{logits.cosine:.7f}", "PASSED" if result.parity.passed else "FAILED",
                        f"{result.seconds:.0f} s")
    console.print(exports)
    repo = args.out / "repo"
    console.print("\n[bold]Serving the repository[/] and querying it with tritonclient (JSON and binary) ...")
    from service.demo import demo_passed, run_service_demo

    try:
        passed = demo_passed(run_service_demo(repo, requests=10, rounds=30, console=console))
    except DytDeployError as err:
        console.print(f"error: {err}", highlight=False)
        passed = False
    console.print("service checks: PASSED" if passed else "service checks: FAILED")
    if not passed:
        sys.exit(1)
    if args.no_serve:
        return
    name = f"{args.arch}-dyt"
    console.print(f"\nDashboard: http://127.0.0.1:{args.port}/   (Ctrl-C stops the service)")
    console.print(f"Try: curl -s http://127.0.0.1:{args.port}/v2/models/{name}", highlight=False)
    console.print(f"     {command_line('dyt-check', repo / name, '--runners', 'ort,torch')}", highlight=False)
    from service.cli import main as serve_main

    serve_main(["--repository", str(repo), "--port", str(args.port)])


if __name__ == "__main__":
    main()
