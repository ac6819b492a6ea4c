"""``make demo``: build the LayerNorm and DyT variants of a small ViT and save them as model.pt.

Later stages (export, check, bench, serve) extend this script as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .checkpoint import load_checkpoint, save_checkpoint, sha256_file
from .models import create_model
from .nn.convert import norm_kind_of


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args(argv)
    console = Console(width=140)
    console.print(f"[bold]dyt-deploy demo[/]: {args.arch}, LayerNorm vs DyT, written under {args.out}/")
    table = Table("variant", "model.pt", "sha256", "params", "norm layers", "output", "1st forward")
    for row in build_variants(args.arch, ["layernorm", "dyt"], args.out):
        table.add_row(row["variant"], str(row["path"]), row["sha256"], f"{row['params']:,}",
                      str(row["norm_layers"]), str(row["output"]), f"{row['forward_ms']:.0f} ms")
    console.print(table)
    console.print("Both variants share every weight outside their norm layers (same seed).")


if __name__ == "__main__":
    main()
