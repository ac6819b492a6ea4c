"""``run_benchmark``: DyT vs LayerNorm vs RMSNorm variants of one model, on each runner, interleaved."""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..errors import DytDeployError, unknown_name
from ..export.api import library_versions
from ..models import create_model
from ..models.base import random_tensor
from ..runners.base import Runner
from .harness import Timings, analyze, headline, time_all
from .report import SCHEMA_ID, SCHEMA_VERSION
from .stats import median_interval
from .variants import VARIANTS, check_variants, export_variants, optimize, write_checkpoints

BENCH_RUNNERS = ("ort", "torch", "torch-compile")


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def shape_label(sizes: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def batch_of(label: str) -> int:
    return int(dict(p.split("=") for p in label.split(","))["batch"])


def run_benchmark(
    arch: str = "vit_small",
    variants: list[str] | None = None,
    runners: list[str] | None = None,
    batches: list[int] | None = None,
    seqs: list[int] | None = None,
    threads: int = 0,
    warmup: int = 10,
    iters: int = 50,
    optimizers: list[str] | None = None,
    baseline: str = "layernorm",
    layer: bool = True,
    profile: bool = True,
    workdir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **overrides,
) -> dict:
    """Benchmark the variants of zoo model ``arch``; returns the report dict (see ``report.REPORT_SCHEMA``).

    Args:
        variants: default layernorm, rmsnorm, dyt, dyt-folded. ``baseline`` must be one of them.
        runners: "ort" (one group per ONNX optimizer), "torch", "torch-compile"; default ort, torch.
        batches, seqs: shapes to time (seqs only for token models; default 1, 8 and 128).
        threads: intra-op threads for torch and onnxruntime (0: their defaults).
        optimizers: ONNX optimizers for the "ort" runner (default none, ort-transformers).
        layer, profile: add the norm-layer bandwidth table and onnxruntime's per-op profile.
        workdir: where model.pt and ONNX files go (default a temporary folder, removed after).

    Runners take turns on the same cores, so onnxruntime sessions run without thread spinning;
    for torch, set ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (``dyt-bench`` does).
    """
    variants = check_variants(variants or ["layernorm", "rmsnorm", "dyt", "dyt-folded"])
    runners = runners or ["ort", "torch"]
    optimizers = optimizers or ["none", "ort-transformers"]
    for kind in runners:
        if kind not in BENCH_RUNNERS:
            raise unknown_name("bench runner", kind, BENCH_RUNNERS)
    if baseline not in variants:
        raise DytDeployError(f"baseline {baseline!r} is not among the variants {', '.join(variants)}")
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="dyt-bench-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run(arch, variants, runners, batches or [1, 8], seqs or [128], threads, warmup, iters, optimizers,
                    baseline, layer, profile, work, progress, overrides)


def _run(arch, variants, runners, batches, seqs, threads, warmup, iters, optimizers, baseline, layer, profile,
         work, progress, overrides) -> dict:
    say = progress or (lambda *_: None)
    say("write model.pt per variant", 0, 0)
    checkpoints = write_checkpoints(arch, variants, work, **overrides)
    specs = create_model(arch, init_weights=False, **overrides).input_specs()
    feeds = _feeds(specs, batches, seqs)
    timings, fusions, groups = Timings(), {}, {}
    if "ort" in runners:
        say("export and verify ONNX per variant", 0, 0)
        onnx_files = export_variants(checkpoints, work)
        for optimizer in optimizers:
            paths = {}
            for variant, path in onnx_files.items():
                paths[variant], fusions[f"{variant}/{optimizer}"] = optimize(path, optimizer, arch)
            groups[f"ort/{optimizer}"] = _ort_runners(paths, threads)
    for kind in (k for k in runners if k != "ort"):
        groups[kind] = _torch_runners(checkpoints, specs, kind)
    everyone = [runner for members in groups.values() for runner in members.values()]
    for runner in everyone:
        runner.activate()
    time_all(groups, feeds, warmup, iters, timings, lambda d, t: say("time every runner, interleaved", d, t))
    for runner in everyone:
        runner.deactivate()
    rows = analyze(timings, baseline, batch_of)
    report = {
        "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": library_versions(),
        "settings": {"arch": arch, "variants": variants, "baseline": baseline, "runners": runners,
                     "shapes": list(feeds), "warmup": warmup, "iters": iters, "threads": threads or "default",
                     "ort_opt_level": "all", "ort_thread_spinning": False,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                     "optimizers": optimizers, "fusions": fusions},
        "results": [{**r.as_dict(), "median_ci_ms": list(median_interval(timings.seconds[(r.group, r.shape,
                                                                                            r.variant)]))}
                    for r in rows],
        "headline": headline(timings, baseline, [v for v in variants if v.startswith("dyt")]),
        "layer": None, "profile": None,
    }
    if layer:
        say("norm layer alone", 0, 0)
        report["layer"] = _layer_section(specs, overrides, arch)
    if profile and "ort" in runners:
        say("onnxruntime profile", 0, 0)
        report["profile"] = _profile_section(onnx_files, optimizers, arch, next(iter(feeds.values())), threads)
    return report


def _feeds(specs, batches: list[int], seqs: list[int]) -> dict[str, dict[str, np.ndarray]]:
    token_model = any("seq" in s.shape for s in specs)
    feeds = {}
    for batch in batches:
        for seq in seqs if token_model else [None]:
            sizes = {"batch": batch} if seq is None else {"batch": batch, "seq": seq}
            generator = torch.Generator().manual_seed(0)
            feeds[shape_label(sizes)] = {s.name: random_tensor(s, sizes, generator).numpy() for s in specs}
    return feeds


def _ort_runners(paths: dict[str, Path], threads: int) -> dict[str, Runner]:
    from ..runners.onnxruntime_runner import OnnxRuntimeRunner

    # many sessions take turns on the same cores: a session's spinning threads would slow the next
    return {variant: OnnxRuntimeRunner(path, threads=threads, spin=False) for variant, path in paths.items()}


def _torch_runners(checkpoints: dict[str, Path], specs, kind: str) -> dict[str, Runner]:
    from ..checkpoint import load_checkpoint
    from ..runners.torch_runner import TorchRunner

    runners: dict[str, Runner] = {}
    for variant, path in checkpoints.items():
        if VARIANTS[variant][1]:
            continue  # folding is an ONNX rewrite; in PyTorch it is the same module as "dyt"
        model = load_checkpoint(path).model
        runners[variant] = TorchRunner(model, [s.name for s in specs], [s.name for s in model.output_specs()],
                                       compile=kind == "torch-compile")
    return runners


def _layer_section(specs, overrides: dict, arch: str) -> dict:
    from .layer import copy_bandwidth_gbps, layer_bench

    width = create_model(arch, init_weights=False, **overrides).config.get("dim", 384)
    return {"copy_gbps": copy_bandwidth_gbps(), "rows": layer_bench([256, 1024, 4096], sorted({width, 1024}))}


def _profile_section(onnx_files: dict[str, Path], optimizers: list[str], arch: str, feed, threads: int) -> dict:
    from .profile import op_time_share

    out = {}
    for optimizer in optimizers:
        for variant, path in onnx_files.items():
            optimized, _ = optimize(path, optimizer, arch)
            out[f"{variant}/{optimizer}"] = op_time_share(optimized, feed, threads=threads)
    return out
