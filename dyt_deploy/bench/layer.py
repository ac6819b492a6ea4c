"""The norm layer alone: latency and achieved bandwidth next to a plain memory copy's.

Each row's bandwidth is set beside a copy of the same tensor, timed in the same interleaved schedule:
at sizes that fit in the caches both run from cache, far above what a copy of a buffer larger than
the caches reaches (``copy_bandwidth_gbps``, main memory). A norm layer "above 100% of copy" against
that main-memory figure is a cache-resident size, not a layer faster than memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..nn import create_norm
from .stats import interleaved_schedule

LAYER_KINDS = ("layernorm", "rmsnorm", "dyt")
COPY = "copy"  # the same-size copy timed beside the layers
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


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


def last_level_cache_bytes(cache_dir: Path = CACHE_DIR) -> int | None:
    """The largest cache of CPU 0 in bytes, from Linux's sysfs (None where it is not readable)."""
    sizes = []
    for size_file in cache_dir.glob("index*/size"):
        text = size_file.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=None)


def cpu_layer_bench(tokens: list[int], widths: list[int], kinds: tuple[str, ...] = LAYER_KINDS, repeats: int = 30,
                    dtype: torch.dtype = torch.float32) -> list[dict]:
    """Median forward time of each norm kind per (tokens, width), interleaved across kinds and a copy
    of the same tensor (``copy_gbps``: its bandwidth, the row's own reference).

    ``gbps`` counts one read of x and one write of y (parameters are negligible); ``in_cache``: x and
    y together fit in the last-level cache (None where its size is unknown).
    """
    cache = last_level_cache_bytes()
    rows = []
    for n in tokens:
        for width in widths:
            x = torch.randn(n, width, dtype=dtype)
            moved = 2 * x.numel() * x.element_size()
            medians = _interleaved_medians(x, kinds, repeats)
            for kind in kinds:
                rows.append({"kind": kind, "tokens": n, "width": width, "median_us": medians[kind] * 1e6,
                             "gbps": moved / medians[kind] / 1e9, "copy_gbps": moved / medians[COPY] / 1e9,
                             "bytes": moved, "in_cache": None if cache is None else moved < cache})
    return rows


def _interleaved_medians(x: torch.Tensor, kinds: tuple[str, ...], repeats: int) -> dict[str, float]:
    """Median seconds of each norm kind on ``x`` and of copying ``x``, timed in one rotated schedule."""
    width = x.shape[-1]
    layers = {k: create_norm(k, width).to(x.dtype).eval() for k in kinds}
    target = torch.empty_like(x)
    calls = {**{k: (lambda layer=layer: layer(x)) for k, layer in layers.items()}, COPY: lambda: target.copy_(x)}
    samples: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()
        for kind in interleaved_schedule(list(calls), repeats):
            start = time.perf_counter()
            calls[kind]()
            samples[kind].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
