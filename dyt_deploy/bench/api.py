"""``run_benchmark``: DyT vs LayerNorm vs RMSNorm variants of one model, on each runner, interleaved."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..errors import DytDeployError
from ..feeds import random_feed
from ..repository import library_versions
from ..runners import MissingBackendError, Runner, create_runner
from .config import BENCH_RUNNERS, ONNX_BENCH_RUNNERS, TORCH_BENCH_RUNNERS, BenchConfig
from .harness import Timings, analyze, headline, time_all
from .machine import machine_info
from .report import SCHEMA_ID, SCHEMA_VERSION
from .stats import load_average, machine_load, median_interval
from .variants import VARIANTS, VariantSet, export_variants, model_variants, optimize, zoo_variants

__all__ = ["BENCH_RUNNERS", "BenchConfig", "benchmark", "run_benchmark"]


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
    if config.device != "cpu" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DytDeployError(f"device {config.device}: no CUDA device is visible (PyTorch {torch.__version__} is "
                             f"{build}); run on a machine with an NVIDIA GPU, or benchmark on the CPU")
    if config.threads:
        torch.set_num_threads(config.threads)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dyt-bench-") as tmp:
        work = Path(config.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if config.task == "text-generation":
            from .generate import generation_benchmark

            report = generation_benchmark(config, work, progress or (lambda *_: None))
        else:
            report = _run(config, work, progress or (lambda *_: None))
    return {**report, "load": machine_load(load_before).as_dict()}  # the verdicts name a loaded machine


def _run(config: BenchConfig, work: Path, say: Callable[[str, int, int], None]) -> dict:
    say("build the variants" if config.model is None else "load the model and build its twins", 0, 0)
    variant_set = variants_of(config)
    feeds = _feeds(variant_set.specs, config.batches, config.seqs)
    timings, fusions, groups, onnx_files = Timings(), {}, {}, {}
    not_timed: dict[str, str] = {}
    skipped_optimizers: dict[str, str] = {}
    onnx_kinds = [k for k in config.runners if k in ONNX_BENCH_RUNNERS]
    if onnx_kinds:
        say("export and verify ONNX per variant", 0, 0)
        exported = export_variants(variant_set, work)
        onnx_files, not_timed = exported.files, exported.failed
        for kind in onnx_kinds:
            groups.update(_onnx_groups(kind, onnx_files, config, variant_set, fusions, skipped_optimizers))
    for kind in (k for k in config.runners if k in TORCH_BENCH_RUNNERS):
        for dtype in config.dtypes:
            group = kind if config.dtypes == ("fp32",) else f"{kind}/{dtype}"
            if kind == "aoti":
                say(f"compile an AOTInductor package per variant ({dtype})", 0, 0)
            groups[group] = _torch_runners(variant_set, kind, config, dtype, work)
    int8_calibration = None
    if "int8" in config.precisions and onnx_files:
        from .int8 import calibration_file, int8_groups

        calibration, int8_calibration = calibration_file(config.data, next(iter(feeds.values())), work)
        groups.update(int8_groups(onnx_files, onnx_kinds, config.threads, work, calibration, say))
        if "fp32" not in config.precisions:
            for group in [g for g in groups if g.partition("/")[0] in onnx_kinds]:
                del groups[group]
    skipped_runners = _activate_or_skip(groups)
    _check_baseline(config, groups, skipped_runners)
    everyone = [runner for members in groups.values() for runner in members.values()]
    time_all(groups, feeds, config.warmup, config.iters, timings,
             lambda d, t: say("time every runner, interleaved", d, t))
    accuracy = None
    if config.data is not None:
        from .accuracy import accuracy_section

        say(f"accuracy on {config.data.name}", 0, 0)
        accuracy = accuracy_section(groups, variant_set, config.data)
    for runner in everyone:
        runner.deactivate()
    report = _report(config, timings, feeds, fusions)
    report["accuracy"] = accuracy
    if int8_calibration is not None:
        from .int8 import int8_section

        report["int8"] = int8_section(timings, machine_load(load_average()).as_dict(), int8_calibration)
    report["settings"].update(model=variant_set.source, own_norm=variant_set.own, variants_made=variant_set.made,
                              not_timed=not_timed, optimizers_skipped=skipped_optimizers,
                              runners_skipped=skipped_runners, device=config.device, dtypes=list(config.dtypes))
    if config.model is not None:  # the report's title names the model
        report["settings"]["arch"] = config.model.name
    if config.layer:
        say("norm layer alone", 0, 0)
        report["layer"] = _layer_section(config, variant_set)
    if config.profile and onnx_files and "ort" in config.runners:
        say("onnxruntime profile", 0, 0)
        report["profile"] = _profile_section(onnx_files, config, variant_set, next(iter(feeds.values())),
                                             skipped_optimizers)
    return report


def variants_of(config: BenchConfig) -> VariantSet:
    """The modules ``config`` compares: the zoo architecture's variants, or the user's model and its twins."""
    if config.model is None:
        return zoo_variants(config.arch, list(config.variants), **config.overrides)
    if config.overrides:
        raise DytDeployError("architecture overrides (--set) apply to zoo models only, not to " + str(config.model))
    from .accuracy import with_trained_twins

    made = model_variants(config.model, list(config.variants), arch=config.model_arch, weights=config.weights,
                          trust_pickle=config.trust_pickle, input_shapes=list(config.input_shapes) or None)
    return with_trained_twins(made, config.model, config.weights)  # a reference checkpoint's twins are trained


def _onnx_groups(kind: str, onnx_files: dict[str, Path], config: BenchConfig, variant_set: VariantSet,
                 fusions: dict, skipped_optimizers: dict[str, str]) -> dict[str, dict[str, Runner]]:
    """Runners of the exported files: per ONNX optimizer for onnxruntime, the plain files for OpenVINO."""
    if kind == "openvino":
        return {kind: {v: create_runner(kind, p, threads=config.threads) for v, p in onnx_files.items()}}
    groups = {}
    for optimizer in config.optimizers:
        try:
            paths = {}
            for variant, path in onnx_files.items():
                paths[variant], fusions[f"{variant}/{optimizer}"] = optimize(path, optimizer, variant_set.ort_model)
        except DytDeployError as err:
            skipped_optimizers[optimizer] = str(err)
            continue
        # many sessions take turns on the same cores: a session's spinning threads would slow the next
        groups[f"{kind}/{optimizer}"] = {v: create_runner(kind, p, threads=config.threads, spin=False)
                                         for v, p in paths.items()}
    return groups


def _activate_or_skip(groups: dict[str, dict[str, Runner]]) -> dict[str, str]:
    """Activate every runner; a group whose backend is missing here is dropped, with why."""
    skipped = {}
    for group, members in list(groups.items()):
        try:
            for runner in members.values():
                runner.activate()
        except MissingBackendError as err:
            for runner in members.values():
                runner.deactivate()
            skipped[group] = str(err)
            del groups[group]
    return skipped


def _check_baseline(config: BenchConfig, groups: dict[str, dict[str, Runner]], skipped: dict[str, str]) -> None:
    if not any(config.baseline in members for members in groups.values()):
        why = "; ".join(f"{group}: {reason}" for group, reason in skipped.items())
        raise DytDeployError(f"the baseline variant {config.baseline!r} could not be timed on any runner"
                             + (f" ({why})" if why else "") + "; choose other --runners or another --baseline")


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
                     "optimizers": list(config.optimizers), "fusions": fusions,
                     "precisions": list(config.precisions)},
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


def _torch_runners(variant_set: VariantSet, kind: str, config: BenchConfig, dtype: str,
                   work: Path) -> dict[str, Runner]:
    if kind == "aoti":
        return _aoti_runners(variant_set, config, dtype, work)
    names = [s.name for s in variant_set.specs]
    # the Triton kernels replace DyT layers: a LayerNorm/RMSNorm variant runs eager in that group
    return {variant: create_runner(kind if VARIANTS[variant][0] == "dyt" or kind != "torch-triton" else "torch",
                                   module, input_names=names, output_names=variant_set.output_names,
                                   device=config.device, dtype=dtype)
            for variant, module in variant_set.models.items()
            # folding is an ONNX rewrite; in PyTorch it is the same module as "dyt"
            if not VARIANTS[variant][1]}


def _aoti_runners(variant_set: VariantSet, config: BenchConfig, dtype: str, work: Path) -> dict[str, Runner]:
    """One AOTInductor package per variant (``work/aoti/VARIANT-DTYPE.pt2``, compiled for the
    config's device), each in the aoti runner."""
    from ..export.aoti import compile_package

    device, _, index = config.device.partition(":")
    runners = {}
    for variant, module in variant_set.models.items():
        if not VARIANTS[variant][1]:  # dyt-folded is an ONNX rewrite: the same module as dyt
            path = work / "aoti" / f"{variant}-{dtype}.pt2"
            compile_package(module, variant_set.specs, path, device=device, dtype=dtype)
            runners[variant] = create_runner("aoti", path, threads=config.threads,
                                             device_index=int(index) if index else -1)
    return runners


def _layer_section(config: BenchConfig, variant_set: VariantSet) -> dict:
    from .layer import copy_bandwidth_gbps, cpu_layer_bench

    width = _norm_width(next(iter(variant_set.models.values()))) or 384
    rows = cpu_layer_bench(list(config.layer_tokens), sorted({width, 1024}))
    return {"copy_gbps": copy_bandwidth_gbps(), "rows": rows}


def _norm_width(model: torch.nn.Module) -> int | None:
    """The channel count of the model's first norm layer (the width its norm layers run at)."""
    from ..nn.convert import norm_kind_of

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if norm_kind_of(module) is not None and isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
    return None


def _profile_section(onnx_files: dict[str, Path], config: BenchConfig, variant_set: VariantSet, feed,
                     skipped_optimizers: dict[str, str]) -> dict:
    from .profile import op_time_share

    out = {}
    for optimizer in (o for o in config.optimizers if o not in skipped_optimizers):
        for variant, path in onnx_files.items():
            optimized, _ = optimize(path, optimizer, variant_set.ort_model)
            out[f"{variant}/{optimizer}"] = op_time_share(optimized, feed, threads=config.threads)
    return out
