"""Latency comparison of the norm variants of one family (DyT vs LayerNorm, ...).

* :func:`live_report`: percentiles of the served traffic per variant, from each model's window of
  recent requests, and each variant's ratio of medians to the baseline (LayerNorm, else RMSNorm).
* :func:`run_comparison`: a controlled comparison, dyt-bench's method: same synthetic inputs,
  warm-up, then the variants timed in an interleaved, rotated schedule, reported as medians,
  percentiles and bootstrap-interval ratios. Each timed call is queued on its model's worker like
  a request, so traffic waits for at most one comparison call at a time, never for the whole run.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from dyt_deploy.bench.stats import (
    MachineLoad,
    interleaved_schedule,
    judge,
    load_average,
    machine_load,
    median_ratio,
    summarize,
)

from ..errors import BadRequest, NotFound, Unavailable

if TYPE_CHECKING:  # the models are passed in; telemetry never imports them at run time
    from ..models.registry import ModelRegistry
    from ..models.served import ServedModel

BASELINE_NORMS = ("layernorm", "rmsnorm")
LIVE_RESAMPLES = 200


def pick_baseline(models: list[ServedModel]) -> ServedModel:
    """The family's reference variant: LayerNorm, else RMSNorm, else the first model."""
    for norm in BASELINE_NORMS:
        match = next((m for m in models if m.variant == norm), None)
        if match is not None:
            return match
    return models[0]


def series_of(model: Any) -> str:
    """The model's label in charts and the palette: its norm, ``-folded`` added for a DyT export with
    gamma/beta folded into the next linear layers (so the two DyT exports take different colours)."""
    manifest = getattr(model, "manifest", None)
    folded = manifest.get("folded") if isinstance(manifest, dict) else getattr(model, "folded", None)
    return f"{model.variant}-folded" if folded else model.variant


def contenders(models: list[Any], baseline: Any) -> list[Any]:
    """The models a ratio to ``baseline`` compares: those of another norm. Two exports of one norm
    (two backends, folded or not) are not a norm comparison: they get no ratio."""
    return [m for m in models if m.variant != baseline.variant]


def percentiles(seconds: list[float]) -> dict[str, float] | None:
    """p50/p90/p99/mean in milliseconds (None without samples)."""
    if not seconds:
        return None
    summary = summarize(seconds)
    return {"p50": summary.median_ms, "p90": summary.p90_ms, "p99": summary.p99_ms, "mean": summary.mean_ms}


def ratio_or_none(variant: list[float], baseline: list[float], resamples: int,
                  load: MachineLoad | None = None) -> dict[str, Any] | None:
    """Ratio of medians with its bootstrap interval and its verdict (:func:`judged_ratio`); None when
    either side has no samples."""
    if not variant or not baseline:
        return None
    return judged_ratio(variant, baseline, resamples, load)


def judged_ratio(variant: list[float], baseline: list[float], resamples: int = 2000,
                 load: MachineLoad | None = None) -> dict[str, Any]:
    """``ratio``/``low``/``high`` and dyt-bench's verdict on them (``verdict``, ``samples``,
    ``min_samples``, ``rounds_to_settle``, ``loaded``, ``note``): faster or slower only with enough
    samples and an interval that excludes 1, the same rule as the bench reports."""
    ratio = median_ratio(variant, baseline, resamples=resamples)
    return {**ratio.as_dict(), **judge(ratio, min(len(variant), len(baseline)), load).as_dict()}


def load_now() -> MachineLoad:
    """The machine's load average now (for the live view: no measurement with a start)."""
    return machine_load(load_average())


def live_family(models: list[ServedModel]) -> dict[str, Any]:
    """One family's live figures: each variant's percentiles, and ratios to the baseline. For
    text-generation models also each variant's ``generation`` statistics (else null) and the
    ratios of the medians of time to first token and inter-token latency."""
    baseline, load = pick_baseline(models), load_now()
    samples = {m.name: m.stats.samples() for m in models}
    generation = {m.name: generation_of(m) for m in models}
    variants = [{"model": m.name, "variant": m.variant, "series": series_of(m), "state": m.state, "reason": m.reason,
                 "count": len(samples[m.name][0]), "total_count": m.stats.success_count,
                 "compute_ms": percentiles(samples[m.name][0]), "e2e_ms": percentiles(samples[m.name][1]),
                 "generation": generation[m.name][0]}
                for m in models]
    base_compute, base_e2e = samples[baseline.name]
    ratios = [{"model": m.name, "variant": m.variant, "baseline": baseline.name,
               "compute": ratio_or_none(samples[m.name][0], base_compute, LIVE_RESAMPLES, load),
               "e2e": ratio_or_none(samples[m.name][1], base_e2e, LIVE_RESAMPLES, load),
               **generation_ratios(generation[m.name][1], generation[baseline.name][1], load)}
              for m in contenders(models, baseline)]
    return {"family": models[0].family, "baseline": baseline.name, "variants": variants, "ratios": ratios,
            "load": load.as_dict()}


def generation_of(model: Any) -> tuple[dict[str, Any] | None, tuple[list[float], list[float]] | None]:
    """A model's generation summary and its (time to first token, inter-token) samples; (None,
    None) for a model that does not generate. With ``--workers N``: of every worker."""
    stats = getattr(model, "generation_stats", None)
    return (None, None) if stats is None else stats.report()


def generation_ratios(variant: tuple[list[float], list[float]] | None,
                      baseline: tuple[list[float], list[float]] | None,
                      load: MachineLoad | None = None) -> dict[str, Any]:
    """Ratios of the medians of time to first token and inter-token latency (variant / baseline)
    with bootstrap intervals; nothing unless both generate."""
    if variant is None or baseline is None:
        return {}
    return {"time_to_first_token": ratio_or_none(variant[0], baseline[0], LIVE_RESAMPLES, load),
            "inter_token": ratio_or_none(variant[1], baseline[1], LIVE_RESAMPLES, load)}


def live_report(registry: ModelRegistry) -> dict[str, Any]:
    """Live statistics of every family (blocking: bootstrap intervals; run it off the event loop)."""
    families = [live_family(models) for _, models in sorted(registry.families().items())]
    return {"window": registry.settings.stats_window, "families": families}


def comparison_models(registry: ModelRegistry, family: str) -> list[ServedModel]:
    """The ready variants of ``family`` (404 unknown family, 503 fewer than two ready or than two norms)."""
    families = registry.families()
    if family not in families:
        raise NotFound(f"unknown family {family!r}; known: {', '.join(sorted(families)) or '(none)'}")
    ready = [m for m in families[family] if m.ready]
    if len(ready) < 2:
        raise Unavailable(f"family {family!r} has {len(ready)} ready variant(s); a comparison needs two")
    norms = sorted({m.variant for m in ready})
    if len(norms) < 2:
        raise Unavailable(f"family {family!r}'s ready models all have norm {norms[0]}; a comparison pairs two norms")
    return ready


def check_dims(models: list[ServedModel], dims: dict[str, int], max_elements: int) -> None:
    """Refuse dim names no input uses, sizes below 1, batches over max_batch_size, huge inputs."""
    named = {d for m in models for t in m.signature.inputs for d in t.shape if isinstance(d, str)}
    unknown = sorted(set(dims) - named)
    if unknown:
        raise BadRequest(f"unknown dim(s) {', '.join(unknown)}; the inputs' dynamic dims: {', '.join(sorted(named))}")
    if any(size < 1 for size in dims.values()):
        raise BadRequest("every dim must be at least 1")
    for model in models:
        sig = model.signature
        if sig.batched and dims.get("batch", 1) > sig.max_batch_size:
            raise BadRequest(f"batch {dims['batch']} is over {model.name}'s max_batch_size {sig.max_batch_size}")
        for spec in sig.inputs:
            elements = math.prod(d if isinstance(d, int) else dims.get(d, 1) for d in spec.shape)
            if elements > max_elements:
                raise BadRequest(f"input {spec.name!r} of {model.name} would have {elements} elements "
                                 f"(limit {max_elements})")


async def run_comparison(models: list[ServedModel], dims: dict[str, int], rounds: int, warmup: int,
                         seed: int = 0) -> dict[str, Any]:
    """Time every model ``rounds`` times in an interleaved schedule after ``warmup`` calls each."""
    feeds, load_before = {m.name: m.example_feed(dims, seed) for m in models}, load_average()
    by_name = {m.name: m for m in models}
    for model in models:
        for _ in range(warmup):
            await model.timed(feeds[model.name])
    timings: dict[str, list[float]] = {m.name: [] for m in models}
    for name in interleaved_schedule(list(by_name), rounds):
        timings[name].append(await by_name[name].timed(feeds[name]))
        await asyncio.sleep(0)  # let traffic queued meanwhile reach the event loop
    return comparison_report(models, timings, dims, rounds, warmup, machine_load(load_before))


def comparison_report(models: list[ServedModel], timings: dict[str, list[float]], dims: dict[str, int],
                      rounds: int, warmup: int, load: MachineLoad | None = None) -> dict[str, Any]:
    """Summaries, timings and ratios to the baseline (each with its verdict) of a controlled comparison
    that ran under ``load`` (None: the load average now, before and after), stamped ``finished_at``."""
    baseline, load = pick_baseline(models), load or load_now()
    items = dims.get("batch", 1)
    variants = [{"model": m.name, "variant": m.variant, "series": series_of(m),
                 "summary": summarize(timings[m.name], items).as_dict(),
                 "timings_ms": [t * 1e3 for t in timings[m.name]]} for m in models]
    ratios = [{"model": m.name, "variant": m.variant, "baseline": baseline.name,
               **judged_ratio(timings[m.name], timings[baseline.name], load=load)}
              for m in contenders(models, baseline)]
    return {"family": models[0].family, "dims": dims, "rounds": rounds, "warmup": warmup,
            "schedule": "interleaved, rotated", "baseline": baseline.name, "variants": variants, "ratios": ratios,
            "load": load.as_dict(), "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


def comparison_index(reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Family -> when its last controlled comparison finished: the dashboard shows the newest (also
    one run through ``POST /api/compare`` by another client)."""
    return {family: report.get("finished_at", "") for family, report in reports.items()}
