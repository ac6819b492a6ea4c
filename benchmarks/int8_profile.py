"""Where INT8 time goes: which linear layers each runtime runs in INT8, and per op type where the time is.

For one zoo model (default vit_small, random weights), DyT folded and its LayerNorm twin: the fp32
export and the data-free INT8 model (``dyt_deploy.quantize``'s defaults). Prints

- onnxruntime: the fused kernels (MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMul left in float)
  and the time per op type from its profiler, fp32 next to INT8;
- OpenVINO: per compiled layer type its time (PERF_COUNT), and the linear layers by what they
  compute in (``primitiveType``: INT8, int8 weights in float compute, float), fp32 next to INT8;
- whether the CPU has VNNI (int8 dot products), what INT8 speed-ups depend on.

Usage: python benchmarks/int8_profile.py [--arch vit_small] [--batch 1] [--threads 2] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def _export(arch: str, norm: str, work: Path) -> Path:
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.models import create_model

    path = work / f"{arch}-{norm}.pt"
    save_checkpoint(create_model(arch, norm=norm, seed=0), path)
    return path


def _quantize(checkpoint: Path, work: Path) -> tuple[Path, Path, Path]:
    """(fp32 ONNX folded, the ORT INT8 model, the OpenVINO INT8 IR) with the data-free defaults."""
    from dyt_deploy.export import ExportConfig
    from dyt_deploy.export.steps import Steps
    from dyt_deploy.quantize import QuantizeOptions, quantize_model
    from dyt_deploy.quantize.source import fp32_source

    fp32 = fp32_source(checkpoint, ExportConfig(), True, work / checkpoint.stem, Steps(None)).onnx
    int8 = work / f"{checkpoint.stem}.int8.onnx"
    quantize_model(checkpoint, int8, ExportConfig(), QuantizeOptions(verify=False))
    repo = work / "repo"
    quantize_model(checkpoint, None, ExportConfig(repository=repo, name=checkpoint.stem, backend="openvino"),
                   QuantizeOptions(verify=False))
    return fp32, int8, repo / checkpoint.stem / "1" / "model.xml"


def _ort_profile(path: Path, feed: dict, threads: int, runs: int) -> dict[str, float]:
    from dyt_deploy.bench.profile import op_time_share

    return op_time_share(path, feed, runs=runs, threads=threads)["op_us_per_run"]


def _openvino_profile(path: Path, feed: dict, threads: int, runs: int) -> tuple[Counter, Counter, float]:
    """(ms per layer type, linear layers by compute precision, median ms per call)."""
    import openvino as ov

    from dyt_deploy.quantize.openvino import int8_layers
    from dyt_deploy.runners.openvino_runner import read_model

    core = ov.Core()
    compiled = core.compile_model(read_model(core, path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                   "INFERENCE_NUM_THREADS": threads,
                                                                   "PERF_COUNT": True})
    request = compiled.create_infer_request()
    times, by_type = [], Counter()
    for _ in range(runs):
        start = time.perf_counter()
        request.infer(list(feed.values()))
        times.append(time.perf_counter() - start)
        for info in request.profiling_info:
            by_type[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3 / runs
    return by_type, Counter(int8_layers(compiled)), float(np.median(times)) * 1e3


def _top(ms: dict[str, float], n: int = 8) -> str:
    """The ``n`` largest entries: ``name 12.3 ms (45%)``."""
    total = sum(ms.values()) or 1.0
    return "; ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in sorted(ms.items(), key=lambda kv: -kv[1])[:n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    from dyt_deploy.feeds import random_feed
    from dyt_deploy.models import create_model
    from dyt_deploy.quantize.openvino import cpu_has_vnni
    from dyt_deploy.quantize.qdq import fused_int8_ops

    print(f"CPU VNNI (int8 dot products): {cpu_has_vnni()}; threads {args.threads}; batch {args.batch}; "
          f"load average {os.getloadavg()[0]:.2f}")
    feed = random_feed(create_model(args.arch, norm="dyt").input_specs(), {"batch": args.batch}, seed=0)
    with tempfile.TemporaryDirectory(prefix="int8-profile-") as tmp:
        for norm in ("dyt", "layernorm"):
            fp32, int8, xml = _quantize(_export(args.arch, norm, Path(tmp)), Path(tmp))
            print(f"\n== {args.arch} {norm}{' (folded)' if norm == 'dyt' else ''}")
            print(f"onnxruntime INT8 kernels: {fused_int8_ops(int8, args.threads)}")
            for label, path in (("fp32", fp32), ("int8", int8)):
                ops = {op: us / 1e3 for op, us in _ort_profile(path, feed, args.threads, args.runs).items()}
                print(f"onnxruntime {label}: {sum(ops.values()):.1f} ms of kernels per call: {_top(ops)}")
            for label, path in (("fp32", fp32), ("int8", xml)):
                by_type, linear, median = _openvino_profile(path, feed, args.threads, args.runs)
                print(f"OpenVINO {label}: median {median:.1f} ms; linear layers {dict(linear)}; "
                      f"by layer type: {_top(dict(by_type))}")


if __name__ == "__main__":
    main()
