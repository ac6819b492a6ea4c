"""What OpenVINO makes of each DyT form: latency of one zoo model's DyT variants on the openvino runner.

Variants (the same DyT weights, with random gamma/beta as a trained model has; the LayerNorm twin
for reference): ``layernorm``; ``dyt-pattern`` (Mul/Tanh/Mul/Add as torch exports it);
``dyt-function`` (one DynamicTanh node with a local-function body, which the runner inlines: OpenVINO
does not); ``dyt-folded`` (gamma/beta folded into the next linear layers). Each is exported and
verified, compiled once (fp32, latency hint, ``--threads``), warmed up, then timed in interleaved
rounds (rotating order); prints the median, its 95% bootstrap interval, the ratio to layernorm, and
how many nodes OpenVINO's compiled graph executes.

    python benchmarks/openvino_forms.py --arch vit_small --batch 1 --threads 2 --rounds 25
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from dyt_deploy.bench.stats import interleaved_schedule, median_interval, median_ratio
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.export import convert_form_file, export_onnx
from dyt_deploy.feeds import random_feed
from dyt_deploy.models import create_model
from dyt_deploy.nn import DynamicTanh
from dyt_deploy.runners.openvino_runner import OpenVinoRunner

VARIANTS = ("layernorm", "dyt-pattern", "dyt-function", "dyt-folded")


def export_variants(arch: str, work: Path) -> dict[str, Path]:
    """The four ONNX files of ``arch`` (see the module docstring)."""
    dyt = create_model(arch, norm="dyt", seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in dyt.modules():
            if isinstance(module, DynamicTanh):
                module.weight.copy_(1.0 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                if module.bias is not None:
                    module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))
    save_checkpoint(dyt, work / "dyt.pt")
    save_checkpoint(create_model(arch, norm="layernorm", seed=0), work / "layernorm.pt")
    files = {"layernorm": export_onnx(work / "layernorm.pt", work / "layernorm.onnx", samples=1).onnx_path,
             "dyt-pattern": export_onnx(work / "dyt.pt", work / "dyt-pattern.onnx", samples=1).onnx_path,
             "dyt-folded": export_onnx(work / "dyt.pt", work / "dyt-folded.onnx", fold=True, samples=1).onnx_path}
    files["dyt-function"] = convert_form_file(files["dyt-pattern"], work / "dyt-function.onnx", "function").output
    return {name: files[name] for name in VARIANTS}


def executed_nodes(runner: OpenVinoRunner) -> int:
    """Nodes of the compiled graph that run (constants, inputs and outputs left out)."""
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in runner.compiled.get_runtime_model().get_ordered_ops()]
    return sum(kind not in ("Const", "Input", "Output") for kind in kinds)


def time_interleaved(runners: dict[str, OpenVinoRunner], feed: dict[str, np.ndarray], warmup: int,
                     rounds: int) -> dict[str, list[float]]:
    for runner in runners.values():
        for _ in range(warmup):
            runner.infer(feed)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for name in interleaved_schedule(list(runners), rounds):
        runners[name].infer(feed)
        seconds[name].append(runners[name].last_inference_time)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openvino-forms-") as tmp:
        files = export_variants(args.arch, Path(tmp))
        specs = create_model(args.arch, init_weights=False).input_specs()
        feed = random_feed(specs, {"batch": args.batch, "seq": 128}, seed=0)
        runners = {name: OpenVinoRunner(path, threads=args.threads) for name, path in files.items()}
        for runner in runners.values():
            runner.activate()
        seconds = time_interleaved(runners, feed, args.warmup, args.rounds)
        nodes = {name: executed_nodes(runner) for name, runner in runners.items()}
    rows = []
    for name in VARIANTS:
        low, high = median_interval(seconds[name])
        ratio = median_ratio(seconds[name], seconds["layernorm"])
        rows.append({"variant": name, "median_ms": float(np.median(seconds[name]) * 1e3), "ci_ms": [low, high],
                     "ratio_to_layernorm": ratio.as_dict(), "executed_nodes": nodes[name]})
    print(f"{args.arch}, batch {args.batch}, OpenVINO CPU fp32, {args.threads} threads, "
          f"{args.rounds} interleaved rounds")
    print("| variant | median ms [95% CI] | / layernorm [95% CI] | nodes run |")
    print("|---|---|---|---|")
    for row in rows:
        r = row["ratio_to_layernorm"]
        print(f"| {row['variant']} | {row['median_ms']:.1f} [{row['ci_ms'][0]:.1f}, {row['ci_ms'][1]:.1f}] | "
              f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {row['executed_nodes']} |")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
