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

from ..export.api import library_versions
from ..feeds import random_feed
from ..models import create_model
from ..runners import Runner, create_runner
from .config import BENCH_RUNNERS, BenchConfig
from .harness import Timings, analyze, headline, time_all
from .report import SCHEMA_ID, SCHEMA_VERSION
from .stats import median_interval
from .variants import VARIANTS, export_variants, optimize, write_checkpoints

__all__ = ["BENCH_RUNNERS", "BenchConfig", "benchmark", "run_benchmark"]


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

    The keywords are :class:`BenchConfig`'s fields (see there what each means); None takes the
    config's default. This is :func:`benchmark` with the config built from them.
    """
    config = BenchConfig.from_options(arch=arch, variants=variants, runners=runners, batches=batches, seqs=seqs,
                                      optimizers=optimizers, threads=threads, warmup=warmup, iters=iters,
                                      baseline=baseline, layer=layer, profile=profile, workdir=workdir,
                                      overrides=overrides)
    return benchmark(config, progress)


def benchmark(config: BenchConfig, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the benchmark ``config`` describes; returns the report dict.

    Runners take turns on the same cores, so onnxruntime sessions run without thread spinning;
    for torch, set ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (``dyt-bench`` does).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    with tempfile.TemporaryDirectory(prefix="dyt-bench-") as tmp:
        work = Path(config.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run(config, work, progress or (lambda *_: None))


def _run(config: BenchConfig, work: Path, say: Callable[[str, int, int], None]) -> dict:
    say("write model.pt per variant", 0, 0)
    checkpoints = write_checkpoints(config.arch, list(config.variants), work, **config.overrides)
    specs = create_model(config.arch, init_weights=False, **config.overrides).input_specs()
    feeds = _feeds(specs, config.batches, config.seqs)
    timings, fusions, groups, onnx_files = Timings(), {}, {}, {}
    if "ort" in config.runners:
        say("export and verify ONNX per variant", 0, 0)
        onnx_files = export_variants(checkpoints, work)
        for optimizer in config.optimizers:
            paths = {}
            for variant, path in onnx_files.items():
                paths[variant], fusions[f"{variant}/{optimizer}"] = optimize(path, optimizer, config.arch)
            # many sessions take turns on the same cores: a session's spinning threads would slow the next
            groups[f"ort/{optimizer}"] = {v: create_runner("ort", p, threads=config.threads, spin=False)
                                          for v, p in paths.items()}
    for kind in (k for k in config.runners if k != "ort"):
        groups[kind] = _torch_runners(checkpoints, specs, kind)
    everyone = [runner for members in groups.values() for runner in members.values()]
    for runner in everyone:
        runner.activate()
    time_all(groups, feeds, config.warmup, config.iters, timings,
             lambda d, t: say("time every runner, interleaved", d, t))
    for runner in everyone:
        runner.deactivate()
    report = _report(config, timings, feeds, fusions)
    if config.layer:
        say("norm layer alone", 0, 0)
        report["layer"] = _layer_section(config)
    if config.profile and "ort" in config.runners:
        say("onnxruntime profile", 0, 0)
        report["profile"] = _profile_section(onnx_files, config, next(iter(feeds.values())))
    return report


def _report(config: BenchConfig, timings: Timings, feeds: dict, fusions: dict) -> dict:
    rows = analyze(timings, config.baseline, batch_of)
    return {
        "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": library_versions(),
        "settings": {"arch": config.arch, "variants": list(config.variants), "baseline": config.baseline,
                     "runners": list(config.runners), "shapes": list(feeds), "warmup": config.warmup,
                     "iters": config.iters, "threads": config.threads or "default",
                     "ort_opt_level": "all", "ort_thread_spinning": False,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                     "optimizers": list(config.optimizers), "fusions": fusions},
        "results": [{**r.as_dict(), "median_ci_ms": list(median_interval(timings.seconds[(r.group, r.shape,
                                                                                            r.variant)]))}
                    for r in rows],
        "headline": headline(timings, config.baseline, [v for v in config.variants if v.startswith("dyt")]),
        "layer": None, "profile": None,
    }


def _feeds(specs, batches: tuple[int, ...], seqs: tuple[int, ...]) -> dict[str, dict[str, np.ndarray]]:
    token_model = any("seq" in s.shape for s in specs)
    feeds = {}
    for batch in batches:
        for seq in seqs if token_model else [None]:
            sizes = {"batch": batch} if seq is None else {"batch": batch, "seq": seq}
            feeds[shape_label(sizes)] = random_feed(specs, sizes, seed=0)
    return feeds


def _torch_runners(checkpoints: dict[str, Path], specs, kind: str) -> dict[str, Runner]:
    from ..checkpoint import load_checkpoint

    runners: dict[str, Runner] = {}
    for variant, path in checkpoints.items():
        if VARIANTS[variant][1]:
            continue  # folding is an ONNX rewrite; in PyTorch it is the same module as "dyt"
        model = load_checkpoint(path).model
        runners[variant] = create_runner(kind, model, input_names=[s.name for s in specs],
                                         output_names=[s.name for s in model.output_specs()])
    return runners


def _layer_section(config: BenchConfig) -> dict:
    from .layer import copy_bandwidth_gbps, cpu_layer_bench

    width = create_model(config.arch, init_weights=False, **config.overrides).config.get("dim", 384)
    rows = cpu_layer_bench(list(config.layer_tokens), sorted({width, 1024}))
    return {"copy_gbps": copy_bandwidth_gbps(), "rows": rows}


def _profile_section(onnx_files: dict[str, Path], config: BenchConfig, feed) -> dict:
    from .profile import op_time_share

    out = {}
    for optimizer in config.optimizers:
        for variant, path in onnx_files.items():
            optimized, _ = optimize(path, optimizer, config.arch)
            out[f"{variant}/{optimizer}"] = op_time_share(optimized, feed, threads=config.threads)
    return out
