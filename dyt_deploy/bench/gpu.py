"""The GPU benchmark (``dyt-bench --device cuda``): the norm layer alone, and a LLaMA-style decoder.

Layer: for each (tokens, width, dtype), every provider in turn, round by round --

* ``copy``: ``x.clone()``, the device-to-device copy the others are measured against;
* ``layernorm`` / ``rmsnorm``: PyTorch's own ``nn.LayerNorm`` / ``nn.RMSNorm``; ``rmsnorm-compiled``:
  ``nn.RMSNorm`` through ``torch.compile``; ``rmsnorm-hf``: the op-by-op RMSNorm of Hugging Face's
  LLaMA (float32 upcast, pow, mean, rsqrt), the baseline of the DyT paper's latency table;
* ``dyt-eager``: :class:`~dyt_deploy.nn.DynamicTanh` op by op; ``dyt-compiled``: the same
  through ``torch.compile`` (Inductor fuses it);
* ``dyt-triton``: the Triton kernel (:mod:`dyt_deploy.kernels`); ``dyt-add-triton``: the kernel
  fused with the residual add before it (two tensors in, two out).

Each sample runs one provider over a rotation of input buffers that together exceed the GPU's
L2 cache several times, so every call reads from device memory; on CUDA the rotation is
captured once as a CUDA graph and replayed between two CUDA events, so the samples measure
the GPU, not Python's launch overhead. GB/s counts the bytes each call must move: read x
(and the residual), write y (and h).

Decoder: the zoo's ``llama`` scaled up, with RMSNorm and with DyT, eager and compiled, plus DyT
eager with the Triton kernels (the residual adds fused into the norms); forward passes timed
one by one with CUDA events (launch overhead included: that is what eager costs), interleaved.

Everything also runs on the CPU (wall clock instead of events, no graphs), which is how the
tests cover it; the figures that matter come from a GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import kernels
from ..dtypes import PRECISIONS, torch_dtype
from ..models import create_model
from ..nn import create_norm
from .stats import interleaved_schedule, median_ratio

LAYER_PROVIDERS = ("copy", "layernorm", "rmsnorm", "rmsnorm-compiled", "rmsnorm-hf", "dyt-eager", "dyt-compiled",
                   "dyt-triton", "dyt-add-triton")
DECODER_VARIANTS = ("rmsnorm/eager", "dyt/eager", "dyt/triton", "rmsnorm/compiled", "dyt/compiled")
DTYPES = tuple(PRECISIONS)  # the storage types the suite times
# The paper's latency setting is one 4096-token sequence; the width follows LLaMA's 2048-4096.
DEFAULT_DECODER = {"dim": 2048, "depth": 8, "heads": 16, "ffn_dim": 5632, "vocab_size": 32000}
GOAL_COPY_FRACTION = 0.85  # the DyT kernel at >= 85% of copy bandwidth (4096 x 4096 bf16)


@dataclass(frozen=True)
class LayerCase:
    tokens: int
    width: int
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.tokens}x{self.width} {self.dtype}"


def default_layer_cases() -> list[LayerCase]:
    """4096 tokens at LLaMA-like widths in bf16, and the 4096-wide case in fp16 and fp32 too."""
    cases = [LayerCase(4096, w, "bf16") for w in (1024, 2048, 4096, 8192)]
    cases += [LayerCase(16384, 4096, "bf16"), LayerCase(4096, 4096, "fp16"), LayerCase(4096, 4096, "fp32")]
    return cases


class Clock:
    """Times a callable: CUDA events on a CUDA device, the wall clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def seconds(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def l2_bytes(device: torch.device) -> int:
    """The GPU's L2 cache size (50 MB on an H100), or 64 MiB where it is unknown (CPU)."""
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        if size:
            return int(size)
    return 64 << 20


def _seeded_norm(kind: str, width: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A norm layer with trained-looking parameters (not ones/zeros, so nothing can be skipped)."""
    module = create_norm(kind, width, alpha_init=0.5)
    g = torch.Generator().manual_seed(width)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "alpha":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name == "weight" else 0.0))
    return module.to(device=device, dtype=dtype).eval()


def _hf_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm op by op as Hugging Face's ``LlamaRMSNorm`` computes it (float32 statistics)."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _layer_call(provider: str, width: int, dtype: torch.dtype,
                device: torch.device) -> tuple[Callable[[torch.Tensor, torch.Tensor], object], int]:
    """The provider's call on (x, residual) and how many tensors of x's size it moves per call."""
    if provider == "copy":
        return (lambda x, r: x.clone()), 2
    if provider in ("layernorm", "rmsnorm"):
        norm = _seeded_norm(provider, width, dtype, device)
        return (lambda x, r: norm(x)), 2
    if provider == "rmsnorm-compiled":
        compiled_rms = torch.compile(_seeded_norm("rmsnorm", width, dtype, device), dynamic=False)
        return (lambda x, r: compiled_rms(x)), 2
    if provider == "rmsnorm-hf":
        weight, eps = _seeded_norm("rmsnorm", width, dtype, device).weight, 1e-6
        return (lambda x, r: _hf_rmsnorm(x, weight, eps)), 2
    dyt = _seeded_norm("dyt", width, dtype, device)
    if provider == "dyt-eager":
        return (lambda x, r: dyt(x)), 2
    if provider == "dyt-compiled":
        compiled = torch.compile(dyt, dynamic=False)
        return (lambda x, r: compiled(x)), 2
    fused = kernels.KernelDynamicTanh.from_module(dyt)
    if provider == "dyt-triton":
        return (lambda x, r: fused(x)), 2
    if provider == "dyt-add-triton":
        return (lambda x, r: fused.forward_add(x, r)), 4
    raise ValueError(f"unknown layer provider {provider!r}; known: {', '.join(LAYER_PROVIDERS)}")


def _rotation(fn: Callable, inputs: list[tuple[torch.Tensor, torch.Tensor]], graph: bool) -> Callable[[], None]:
    """One pass of ``fn`` over every input pair; on CUDA replayed from a CUDA graph when ``graph``."""
    def run() -> None:
        for x, r in inputs:
            fn(x, r)

    if not graph:
        return run
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # warm-up outside capture (allocations, lazy init, autotuning)
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        run()
    return cuda_graph.replay


def gpu_layer_bench(cases: list[LayerCase], providers: list[str] | None = None, rounds: int = 30, warmup: int = 3,
                device: str | torch.device = "cuda", min_bytes: int | None = None, graphs: bool = True,
                progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Per case and provider: median/p10/p90 microseconds per call, GB/s, and the fraction of copy's GB/s."""
    device = torch.device(device)
    clock = Clock(device)
    providers = list(providers or LAYER_PROVIDERS)
    use_graphs = graphs and clock.cuda
    floor = min_bytes if min_bytes is not None else 4 * l2_bytes(device)
    rows: list[dict] = []
    with torch.inference_mode():
        for index, case in enumerate(cases):
            if progress:
                progress(f"layer {case.label}", index, len(cases))
            dtype = torch_dtype(case.dtype)
            nbytes = case.tokens * case.width * torch.finfo(dtype).bits // 8
            count = max(2, math.ceil(floor / nbytes))
            g = torch.Generator(device=device).manual_seed(index)
            inputs = [(torch.randn(case.tokens, case.width, generator=g, device=device, dtype=dtype),
                       torch.randn(case.tokens, case.width, generator=g, device=device, dtype=dtype))
                      for _ in range(count)]
            runs, moved = {}, {}
            for provider in providers:
                fn, tensors = _layer_call(provider, case.width, dtype, device)
                runs[provider], moved[provider] = _rotation(fn, inputs, use_graphs), tensors * nbytes
                for _ in range(warmup):
                    runs[provider]()
            clock.sync()
            samples: dict[str, list[float]] = {p: [] for p in providers}
            for provider in interleaved_schedule(providers, rounds):
                samples[provider].append(clock.seconds(runs[provider]) / count)
            copy_gbps = None
            for provider in providers:
                per_call = np.asarray(samples[provider])
                median = float(np.median(per_call))
                gbps = moved[provider] / median / 1e9
                if provider == "copy":
                    copy_gbps = gbps
                rows.append({"case": case.label, "tokens": case.tokens, "width": case.width, "dtype": case.dtype,
                             "provider": provider, "median_us": median * 1e6,
                             "p10_us": float(np.percentile(per_call, 10)) * 1e6,
                             "p90_us": float(np.percentile(per_call, 90)) * 1e6,
                             "gbps": gbps, "calls_per_sample": count, "cuda_graph": use_graphs, "samples": rounds})
            for row in rows:
                if row["case"] == case.label:
                    row["copy_fraction"] = row["gbps"] / copy_gbps if copy_gbps else None
            del inputs, runs
            if clock.cuda:
                torch.cuda.empty_cache()
    return rows


def _decoder(norm: str, mode: str, config: dict, dtype: torch.dtype, device: torch.device) -> Callable:
    torch.manual_seed(0)  # the same default-initialised weights for every variant (norms draw no randoms)
    with torch.device(device):
        model = create_model("llama_small", norm, init_weights=False, **config)
    model = model.to(dtype=dtype).eval()
    if mode == "triton":
        model, _ = kernels.use_kernels(model)
    elif mode == "compiled":
        model = torch.compile(model)
    return model


def decoder_bench(config: dict | None = None, batch: int = 1, seq: int = 4096, dtype: str = "bf16",
                  variants: list[str] | None = None, warmup: int = 3, rounds: int = 20,
                  device: str | torch.device = "cuda",
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Forward latency of the decoder per variant (``norm/mode``), and ratios DyT / RMSNorm per mode."""
    device = torch.device(device)
    clock = Clock(device)
    config = {**DEFAULT_DECODER, **(config or {})}
    config["max_seq_len"] = max(int(config.get("max_seq_len", 0)), seq)
    variants = list(variants or DECODER_VARIANTS)
    for v in variants:
        if v not in DECODER_VARIANTS:
            raise ValueError(f"unknown decoder variant {v!r}; known: {', '.join(DECODER_VARIANTS)}")
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=g, device=device)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        models = {}
        for i, v in enumerate(variants):
            if progress:
                progress(f"decoder {v}: build, compile, warm up", i, len(variants))
            norm, mode = v.split("/")
            models[v] = _decoder(norm, mode, config, torch_dtype(dtype), device)
            for _ in range(warmup):
                models[v](ids)
        clock.sync()
        for v in interleaved_schedule(variants, rounds):
            samples[v].append(clock.seconds(lambda m=models[v]: m(ids)))
    rows = []
    for v in variants:
        ms = np.asarray(samples[v]) * 1e3
        rows.append({"variant": v, "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                     "p90_ms": float(np.percentile(ms, 90)), "samples": len(ms)})
    ratios = []
    for v in variants:
        norm, mode = v.split("/")
        baseline = "rmsnorm/compiled" if mode == "compiled" else "rmsnorm/eager"  # triton runs eager
        if norm == "dyt" and baseline in samples:
            ratios.append({"variant": v, "baseline": baseline, **median_ratio(samples[v], samples[baseline]).as_dict()})
    params = sum(p.numel() for p in next(iter(models.values())).parameters()) if models else 0
    return {"config": config, "batch": batch, "seq": seq, "dtype": dtype, "parameters": params,
            "results": rows, "ratios": ratios}


def device_facts(device: str | torch.device) -> dict:
    """What the figures were measured on: GPU name, memory, SMs, L2, and the software versions."""
    device = torch.device(device)
    facts: dict = {"device": str(device), "torch": torch.__version__}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count, l2_mib=round(l2_bytes(device) / 2**20, 1),
                     cuda=torch.version.cuda, capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    else:
        import platform

        facts.update(gpu=None, cpu=platform.processor() or platform.machine())
    return facts


def goals(layer_rows: list[dict], decoder: dict | None) -> list[dict]:
    """The issue's two goals, each with the measured figure and whether it is met."""
    out = []
    kernel = next((r for r in layer_rows if r["provider"] == "dyt-triton" and r["tokens"] == 4096
                   and r["width"] == 4096 and r["dtype"] == "bf16"), None)
    if kernel and kernel.get("copy_fraction") is not None:
        out.append({"goal": f"DyT kernel >= {GOAL_COPY_FRACTION:.0%} of copy bandwidth, 4096x4096 bf16",
                    "measured": f"{kernel['copy_fraction']:.1%} ({kernel['gbps']:.0f} GB/s)",
                    "met": kernel["copy_fraction"] >= GOAL_COPY_FRACTION})
    compiled = next((r for r in (decoder or {}).get("ratios", []) if r["variant"] == "dyt/compiled"), None)
    if compiled:
        out.append({"goal": "compiled DyT decoder no slower than compiled RMSNorm decoder",
                    "measured": f"ratio {compiled['ratio']:.3f} [{compiled['low']:.3f}, {compiled['high']:.3f}]",
                    "met": compiled["ratio"] <= 1.0})
    return out


def run_gpu_benchmark(device: str = "cuda", cases: list[LayerCase] | None = None, providers: list[str] | None = None,
                      layer_rounds: int = 30, decoder: bool = True, decoder_config: dict | None = None,
                      batch: int = 1, seq: int = 4096, decoder_dtype: str = "bf16",
                      decoder_variants: list[str] | None = None, warmup: int = 3, decoder_rounds: int = 20,
                      min_bytes: int | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> dict:
    """The whole suite as one report dict (see :mod:`dyt_deploy.bench.gpu_report`)."""
    from datetime import datetime, timezone

    cases = cases or default_layer_cases()
    layer = gpu_layer_bench(cases, providers, layer_rounds, warmup, device, min_bytes, progress=progress)
    dec = decoder_bench(decoder_config, batch, seq, decoder_dtype, decoder_variants, warmup, decoder_rounds, device,
                        progress) if decoder else None
    return {"schema": "dyt-deploy/gpu-bench-report", "schema_version": 1,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "facts": device_facts(device),
            "settings": {"layer_rounds": layer_rounds, "warmup": warmup, "decoder_rounds": decoder_rounds,
                         "min_bytes_per_sample": min_bytes if min_bytes is not None else 4 * l2_bytes(
                             torch.device(device))},
            "layer": layer, "decoder": dec, "goals": goals(layer, dec)}


__all__ = ["DECODER_VARIANTS", "LAYER_PROVIDERS", "Clock", "LayerCase", "decoder_bench",
           "default_layer_cases", "device_facts", "goals", "gpu_layer_bench", "run_gpu_benchmark"]
