"""The norm layer alone: latency and achieved bandwidth next to a plain memory copy's."""

from __future__ import annotations

import time

import torch

from ..nn import create_norm
from .stats import interleaved_schedule

LAYER_KINDS = ("layernorm", "rmsnorm", "dyt")


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth_gbps(megabytes: int = 256, repeats: int = 10) -> float:
    """GB/s of ``dst.copy_(src)`` on a buffer far larger than the caches (bytes read + written)."""
    src = torch.ones(megabytes << 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = _median_seconds(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() / seconds / 1e9


def cpu_layer_bench(tokens: list[int], widths: list[int], kinds: tuple[str, ...] = LAYER_KINDS, repeats: int = 30,
                    dtype: torch.dtype = torch.float32) -> list[dict]:
    """Median forward time of each norm kind per (tokens, width), interleaved across kinds.

    ``gbps`` counts one read of x and one write of y (parameters are negligible).
    """
    rows = []
    for n in tokens:
        for width in widths:
            x = torch.randn(n, width, dtype=dtype)
            layers = {k: create_norm(k, width).to(dtype).eval() for k in kinds}
            samples: dict[str, list[float]] = {k: [] for k in kinds}
            with torch.inference_mode():
                for kind in kinds:
                    layers[kind](x)
                for kind in interleaved_schedule(list(kinds), repeats):
                    start = time.perf_counter()
                    layers[kind](x)
                    samples[kind].append(time.perf_counter() - start)
            for kind, values in samples.items():
                median = sorted(values)[len(values) // 2]
                rows.append({"kind": kind, "tokens": n, "width": width, "median_us": median * 1e6,
                             "gbps": 2 * x.numel() * x.element_size() / median / 1e9})
    return rows
