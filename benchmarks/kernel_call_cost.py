"""What one eager call of a norm layer costs on the host, DyT's kernel paths against PyTorch's own norms.

At small shapes (one token of a 4096-wide model) a norm's GPU work is a microsecond or two; what a
call costs is the host's work to launch it. This times, per shape (default 1x4096 and 128x4096,
bf16), ``--calls`` back-to-back calls per sample, in interleaved rounds (rotating order), under
``torch.no_grad()``:

* ``rms_norm`` / ``layer_norm``: ``F.rms_norm`` / ``F.layer_norm`` (the baselines; ratios are to
  ``rms_norm``);
* ``dyt-eager``: ``weight * tanh(alpha * x) + bias`` as three eager ops;
* ``dyt-python``: ``dyt_deploy.kernels.dyt``, the plain Python entry point (the kernel launched
  straight from Python: what eager models with ``use_kernels`` run);
* ``dyt-module``: a ``KernelDynamicTanh`` module called (adds ``nn.Module.__call__``);
* ``dyt-op``: ``torch.ops.dyt_deploy.dyt``, the custom operator (what compiled graphs call);
* ``triton-bare``: the Triton kernel launched with every argument prepared in advance and the
  output preallocated: the floor of Triton's own Python launcher (CUDA only).

Writes ``call_cost.json`` and ``call_cost.md`` (median microseconds per call with a 95% bootstrap
interval, and each provider's ratio to ``rms_norm``) into ``-o`` and prints the table. The goal
from the GPU issue: the DyT kernel paths at most 1.3x ``F.rms_norm``'s per-call cost.

    python benchmarks/kernel_call_cost.py --device cuda -o gpu-check        # as scripts/gpu_check.sh runs it
    python benchmarks/kernel_call_cost.py --device cpu --calls 20 --rounds 3  # the code path, no GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dyt_deploy import kernels as K
from dyt_deploy.bench.stats import interleaved_schedule, median_interval, median_ratio

PROVIDERS = ("rms_norm", "layer_norm", "dyt-eager", "dyt-python", "dyt-module", "dyt-op", "triton-bare")
BASELINE = "rms_norm"
GOAL = 1.3  # per-call cost of the DyT kernel paths relative to F.rms_norm
GOAL_PROVIDERS = ("dyt-python", "dyt-module", "dyt-op")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def calls_for(rows: int, width: int, dtype: torch.dtype, device: str) -> tuple[dict[str, Callable[[], object]],
                                                                              dict[str, str]]:
    """One zero-argument callable per provider that can run here, and why the others cannot."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g).to(device, dtype)
    module = K.KernelDynamicTanh(width, device=device, dtype=dtype)
    alpha, w, b = module.alpha, module.weight, module.bias
    calls: dict[str, Callable[[], object]] = {
        "rms_norm": lambda: F.rms_norm(x, (width,), w),
        "layer_norm": lambda: F.layer_norm(x, (width,), w, b),
        "dyt-eager": lambda: torch.tanh(alpha * x) * w + b,
        "dyt-python": lambda: K.dyt(x, alpha, w, b),
        "dyt-module": lambda: module(x),
        "dyt-op": lambda: torch.ops.dyt_deploy.dyt(x, alpha, w, b, False),
    }
    skipped = {}
    if device.startswith("cuda"):
        calls["triton-bare"] = bare_launch(x, alpha, w, b)
    else:
        skipped["triton-bare"] = "needs a CUDA device (compiled kernels only)"
    return calls, skipped


def bare_launch(x: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Callable[[], object]:
    """The kernel's launch with all Python work before it done once: grid, config, output, strides."""
    from dyt_deploy.kernels import triton_dyt as T

    rows, width = x.shape
    out = torch.empty_like(x)
    cfg = T.default_config(rows, width, x.element_size())
    grid = ((rows + cfg.block_m - 1) // cfg.block_m, (width + cfg.block_n - 1) // cfg.block_n)
    kernel = T._dyt_fwd_kernel[grid]
    flags = dict(HAS_RESIDUAL=False, STORE_SUM=True, HAS_WEIGHT=True, HAS_BIAS=True, W_SCALAR=False, B_SCALAR=False,
                 FAST_TANH=K.uses_fast_tanh(x.dtype), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                 num_warps=cfg.num_warps)
    return lambda: kernel(x, x, x, out, alpha, w, b, rows, width, width, 0, 0, width, **flags)


def sample(call: Callable[[], object], n: int, sync: Callable[[], None]) -> float:
    """Seconds per call over ``n`` back-to-back calls (the device drained before and after)."""
    sync()
    start = time.perf_counter()
    for _ in range(n):
        call()
    sync()
    return (time.perf_counter() - start) / n


def measure(shape: tuple[int, int], dtype: str, device: str, calls_per_sample: int, rounds: int,
            warmup: int) -> tuple[list[dict], dict[str, str]]:
    """Rows of results for one shape: each provider's median per call and its ratio to the baseline."""
    calls, skipped = calls_for(*shape, DTYPES[dtype], device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for name in calls:  # compiles, caches, allocator warm
            sample(calls[name], warmup, sync)
        for name in interleaved_schedule(list(calls), rounds):
            times[name].append(sample(calls[name], calls_per_sample, sync))
    label = f"{shape[0]}x{shape[1]} {dtype}"
    rows = []
    for name, seconds in times.items():
        low, high = median_interval(seconds)
        ratio = median_ratio(seconds, times[BASELINE])
        rows.append({"shape": label, "provider": name, "us_per_call": statistics.median(seconds) * 1e6,
                     "low_us": low * 1e3, "high_us": high * 1e3, "ratio_to_rms_norm": ratio.ratio,
                     "ratio_low": ratio.low, "ratio_high": ratio.high})
    return rows, {f"{label} {k}": v for k, v in skipped.items()}


def goal_lines(rows: list[dict]) -> list[str]:
    """One line per shape and DyT kernel path: the ratio to F.rms_norm against the 1.3x goal."""
    lines = []
    for r in rows:
        if r["provider"] in GOAL_PROVIDERS:
            verdict = "met" if r["ratio_to_rms_norm"] <= GOAL else f"missed by {r['ratio_to_rms_norm'] / GOAL:.2f}x"
            lines.append(f"{r['shape']} {r['provider']}: {r['ratio_to_rms_norm']:.2f}x F.rms_norm "
                         f"(goal <= {GOAL}x: {verdict})")
    return lines


def markdown(report: dict) -> str:
    head = ["# Per-call cost of a norm layer (host)", "", f"{report['device_name']}, torch {report['torch']}, "
            f"triton {report['triton']}; {report['calls_per_sample']} calls per sample, {report['rounds']} rounds, "
            "interleaved; median µs per call [95% CI], ratio to F.rms_norm [95% CI].", "",
            "| shape | provider | µs per call | / rms_norm |", "| --- | --- | --- | --- |"]
    body = [f"| {r['shape']} | {r['provider']} | {r['us_per_call']:.1f} [{r['low_us']:.1f}, {r['high_us']:.1f}] | "
            f"{r['ratio_to_rms_norm']:.2f} [{r['ratio_low']:.2f}, {r['ratio_high']:.2f}] |" for r in report["results"]]
    tail = ["", *[f"- {line}" for line in report["goal"]]]
    tail += [f"- skipped {k}: {v}" for k, v in report["skipped"].items()]
    return "\n".join(head + body + tail) + "\n"


def run(device: str, shapes: list[tuple[int, int]], dtype: str, calls_per_sample: int, rounds: int,
        warmup: int) -> dict:
    """Every shape measured; the report as written to call_cost.json."""
    import triton

    results, skipped = [], {}
    for shape in shapes:
        rows, why = measure(shape, dtype, device, calls_per_sample, rounds, warmup)
        results += rows
        skipped.update(why)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {"device": device, "device_name": name, "torch": torch.__version__, "triton": triton.__version__,
            "dtype": dtype, "calls_per_sample": calls_per_sample, "rounds": rounds, "results": results,
            "goal": goal_lines(results), "skipped": skipped,
            "fast_tanh": K.uses_fast_tanh(DTYPES[dtype])}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        rows, _, width = item.strip().partition("x")
        shapes.append((int(rows), int(width)))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (the code path only)")
    parser.add_argument("--shapes", default="1x4096,128x4096", help="rows x width, comma-separated")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--calls", type=int, default=200, help="calls per timed sample")
    parser.add_argument("--rounds", type=int, default=15, help="samples per provider, interleaved")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per provider first")
    parser.add_argument("-o", "--out", type=Path, default=Path("."), help="folder for call_cost.json/.md")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu to run the code path")
    report = run(args.device, parse_shapes(args.shapes), args.dtype, args.calls, args.rounds, args.warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "call_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "call_cost.md").write_text(markdown(report))
    print(markdown(report), end="")


if __name__ == "__main__":
    main()
