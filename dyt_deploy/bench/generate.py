"""``dyt-bench --task text-generation``: prefill, time to first token and decode speed of a decoder
and its norm twins (DyT vs RMSNorm), on PyTorch, onnxruntime and onnxruntime-genai.

What is timed, per runner and variant, interleaved round by round as the latency benchmark does:

- ``prefill``: one call on a prompt with an empty cache, the first token chosen (greedy): the time to
  first token, at batch 1 and each prompt length (``BenchConfig.seqs``); items/s are prompt tokens/s.
- ``decode``: one new token per sequence on a cache of ``DECODE_CONTEXT`` tokens, at each batch
  (``BenchConfig.batches``); every call of ``decode_tokens`` steps is one sample; items/s are tokens/s.

Memory: the parameters of each variant, the KV cache at the largest batch, and the process's peak
resident memory. The report has the latency benchmark's schema (report.json/md/html).
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DytDeployError, first_line
from ..repository import library_versions
from .config import BenchConfig
from .harness import Timings, analyze
from .machine import machine_info
from .report import SCHEMA_ID, SCHEMA_VERSION
from .stats import interleaved_schedule, median_interval

GENERATION_RUNNERS = ("torch", "ort", "ort-genai")
DEFAULT_GENERATION_RUNNERS = {"cpu": ("torch", "ort", "ort-genai"), "cuda": ("torch",)}
DECODE_CONTEXT = 64  # tokens in the cache when decode speed is timed
Say = Callable[[str, int, int], None]


class TorchDecoding:
    """The zoo decoder's ``forward_cached`` in PyTorch on ``device`` (CUDA calls are synchronized)."""

    def __init__(self, model: nn.Module, device: str) -> None:
        self.model = model.to(device)
        self.device = torch.device(device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prefill(self, ids: np.ndarray) -> float:
        prompt = torch.from_numpy(ids).to(self.device)
        with torch.inference_mode():
            self._sync()
            start = time.perf_counter()
            logits, _ = self.model.forward_cached(prompt)
            logits[:, -1].argmax(-1).cpu()
            return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> list[float]:
        times = []
        with torch.inference_mode():
            logits, cache = self.model.forward_cached(torch.from_numpy(ids).to(self.device))
            for _ in range(steps):
                self._sync()
                start = time.perf_counter()
                token = logits[:, -1].argmax(-1, keepdim=True)
                logits, cache = self.model.forward_cached(token, cache)
                logits[:, -1].argmax(-1).cpu()
                times.append(time.perf_counter() - start)
        return times


class OrtDecoding:
    """The exported decoder graph in onnxruntime (CPU), past key/values fed back from numpy."""

    def __init__(self, onnx_path: Path, model: nn.Module, threads: int) -> None:
        from ..export.decoder import OnnxDecoder, decoder_spec
        from ..runners import create_runner

        spec = decoder_spec(model)
        self.runner = create_runner("ort", onnx_path, threads=threads)
        self.runner.activate()
        self.new_decoder = lambda: OnnxDecoder(self.runner, spec, "fp32")

    def _step(self, decoder: Any, ids: torch.Tensor, total: int, start_position: int) -> torch.Tensor:
        batch, seq = ids.shape
        mask = torch.ones(batch, total, dtype=torch.int64)
        positions = torch.arange(start_position, start_position + seq).expand(batch, seq).contiguous()
        return decoder(ids, mask, positions)

    def prefill(self, ids: np.ndarray) -> float:
        decoder = self.new_decoder()
        start = time.perf_counter()
        self._step(decoder, torch.from_numpy(ids), ids.shape[1], 0).argmax(-1)
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> list[float]:
        decoder, total = self.new_decoder(), ids.shape[1]
        logits = self._step(decoder, torch.from_numpy(ids), total, 0)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            token = logits.argmax(-1, keepdim=True)
            total += 1
            logits = self._step(decoder, token, total, total - 1)
            logits.argmax(-1)
            times.append(time.perf_counter() - start)
        return times

    def close(self) -> None:
        self.runner.deactivate()


class GenaiDecoding:
    """The exported folder (``genai_config.json``) in onnxruntime-genai: its own cache management."""

    def __init__(self, folder: Path) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise DytDeployError("onnxruntime-genai is not installed: pip install 'dyt-deploy[generate]'") from None
        self.og = og
        self.model = og.Model(str(folder))

    def _generator(self, ids: np.ndarray, new_tokens: int) -> Any:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=ids.shape[1] + new_tokens, batch_size=ids.shape[0], do_sample=False)
        return self.og.Generator(self.model, params)

    def prefill(self, ids: np.ndarray) -> float:
        generator = self._generator(ids, 1)
        start = time.perf_counter()
        generator.append_tokens(ids.astype(np.int32))
        generator.generate_next_token()
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> list[float]:
        generator = self._generator(ids, steps + 1)
        generator.append_tokens(ids.astype(np.int32))
        generator.generate_next_token()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            generator.generate_next_token()
            times.append(time.perf_counter() - start)
        return times


def generation_benchmark(config: BenchConfig, work: Path, say: Say) -> dict:
    """Run the generation benchmark ``config`` describes (``task="text-generation"``); the report dict."""
    say("build the variants", 0, 0)
    models = _variant_models(config)
    contenders, not_timed = _contenders(config, models, work, say)
    if not any(variant == config.baseline for _, variant in contenders):
        raise DytDeployError(f"the baseline {config.baseline!r} could not be timed on any runner "
                             f"({'; '.join(f'{k}: {v}' for k, v in not_timed.items()) or 'none ran'})")
    timings = Timings()
    workloads = _workloads(config, int(next(iter(models.values())).config["vocab_size"]))
    for shape, (kind, ids) in workloads.items():
        _time_shape(contenders, shape, kind, ids, config, timings, say)
    report = _report(config, timings, workloads, models, not_timed)
    for contender in contenders.values():
        if hasattr(contender, "close"):
            contender.close()
    return report


def _variant_models(config: BenchConfig) -> dict[str, nn.Module]:
    """Zoo decoder twins: the same seeded weights outside the norms (``bench.variants.zoo_variants``)."""
    from .variants import model_variants, zoo_variants

    if config.model is not None:
        made = model_variants(config.model, list(config.variants), arch=config.model_arch, weights=config.weights,
                              trust_pickle=config.trust_pickle)
    else:
        made = zoo_variants(config.arch, list(config.variants), **config.overrides)
    for variant, model in made.models.items():
        if not hasattr(model, "forward_cached"):
            raise DytDeployError(f"--task text-generation times the zoo's llama decoders; {variant} is a "
                                 f"{type(model).__name__} (try --model llama_small)")
    return made.models


def _contenders(config: BenchConfig, models: dict[str, nn.Module], work: Path,
                say: Say) -> tuple[dict[tuple[str, str], Any], dict[str, str]]:
    """(runner, variant) -> a timing object; runners that could not start, with why."""
    contenders: dict[tuple[str, str], Any] = {}
    not_timed: dict[str, str] = {}
    for variant, model in models.items():
        if "torch" in config.runners:
            contenders[("torch", variant)] = TorchDecoding(model, config.device)
        if {"ort", "ort-genai"} & set(config.runners):
            say(f"export and check the {variant} decoder", 0, 0)
            folder = _export(model, work / variant, config.threads)
            for kind in ("ort", "ort-genai"):
                if kind in config.runners:
                    try:
                        contenders[(kind, variant)] = (OrtDecoding(folder / "model.onnx", model,
                                                                   config.threads) if kind == "ort"
                                                       else GenaiDecoding(folder))
                    except Exception as err:  # a missing or refusing backend: reported, the others still run
                        not_timed[f"{kind}/{variant}"] = first_line(err)
    return contenders, not_timed


def _export(model: nn.Module, folder: Path, threads: int) -> Path:
    """The decoder graph (pattern form, fp32) and its genai_config.json in ``folder``, greedy-checked."""
    from ..export.api import save_onnx
    from ..export.config import DEFAULT_OPSET
    from ..export.decoder import GENAI_CONFIG, check_decoding, decoder_to_onnx, genai_config

    folder.mkdir(parents=True, exist_ok=True)
    save_onnx(decoder_to_onnx(model.cpu(), "fp32", DEFAULT_OPSET), folder / "model.onnx")
    check = check_decoding(folder / "model.onnx", model, "fp32", steps=8)
    if not check.passed:
        raise DytDeployError(f"{folder.name}: the exported decoder does not decode as PyTorch does; not timed")
    genai = genai_config(model, "fp32")
    # runners take turns on the same cores: no thread spinning after a call (as the ort runner does)
    options = genai["model"]["decoder"]["session_options"]
    options.update({"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"})
    if threads:
        options["intra_op_num_threads"] = threads
    (folder / GENAI_CONFIG).write_text(json.dumps(genai, indent=2) + "\n")
    return folder


def _workloads(config: BenchConfig, vocab: int) -> dict[str, tuple[str, np.ndarray]]:
    """shape label -> (kind, token ids): prefill at each prompt length, decode at each batch."""
    rng = np.random.default_rng(0)
    loads = {f"prefill,batch=1,prompt={prompt}": ("prefill", rng.integers(0, vocab, (1, prompt)))
             for prompt in config.seqs}
    for batch in config.batches:
        loads[f"decode,batch={batch},context={DECODE_CONTEXT}"] = (
            "decode", rng.integers(0, vocab, (batch, DECODE_CONTEXT)))
    return loads


def _time_shape(contenders: dict[tuple[str, str], Any], shape: str, kind: str, ids: np.ndarray, config: BenchConfig,
                timings: Timings, say: Say) -> None:
    """Warm every contender up on ``shape``, then ``iters`` interleaved rounds."""
    def run(contender: Any) -> list[float]:
        return [contender.prefill(ids)] if kind == "prefill" else contender.decode(ids, config.decode_tokens)

    for contender in contenders.values():
        for _ in range(max(1, config.warmup) if kind == "prefill" else 1):
            run(contender)
    schedule = interleaved_schedule(list(contenders), config.iters)
    for done, key in enumerate(schedule, 1):
        for seconds in run(contenders[key]):
            timings.add(key[0], shape, key[1], seconds)
        say(f"timing {shape}", done, len(schedule))


def _items(shape: str) -> int:
    sizes = dict(p.split("=") for p in shape.split(",") if "=" in p)
    return int(sizes["prompt"]) if shape.startswith("prefill") else int(sizes["batch"])


def _report(config: BenchConfig, timings: Timings, workloads: dict, models: dict[str, nn.Module],
            not_timed: dict[str, str]) -> dict:
    rows = analyze(timings, config.baseline, _items)
    return {
        "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(), "versions": library_versions(),
        "settings": {"arch": config.arch if config.model is None else str(config.model), "task": "text-generation",
                     "variants": list(models), "baseline": config.baseline, "runners": list(config.runners),
                     "shapes": list(workloads), "warmup": config.warmup, "iters": config.iters,
                     "decode_tokens": config.decode_tokens, "threads": config.threads or "default",
                     "device": config.device, "overrides": config.overrides, "not_timed": not_timed,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")},
        "results": [{**r.as_dict(), "median_ci_ms": list(median_interval(timings.seconds[(r.group, r.shape,
                                                                                            r.variant)]))}
                    for r in rows],
        "memory": _memory(models, config),
        "layer": None, "profile": None,
        "notes": ["Text generation: prefill rows are the time to first token (batch 1, the prompt, the first token "
                  "chosen), items/s there are prompt tokens/s; decode rows time one new token per sequence on a "
                  f"{DECODE_CONTEXT}-token cache, items/s there are generated tokens/s; each decode call of "
                  f"{config.decode_tokens} steps gives {config.decode_tokens} samples."],
    }


def _machine() -> dict:
    return machine_info()


def _memory(models: dict[str, nn.Module], config: BenchConfig) -> dict:
    """Parameter and KV-cache megabytes per variant (fp32), and the process's peak resident memory."""
    out: dict[str, Any] = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    batch, context = max(config.batches), DECODE_CONTEXT + config.decode_tokens
    for variant, model in models.items():
        c = model.config
        params = sum(p.numel() for p in model.parameters())
        cache = 2 * c["depth"] * batch * c["dim"] * context * 4
        out[variant] = {"parameters": params, "parameters_mb": params * 4 / 2**20,
                        f"kv_cache_mb_batch{batch}_context{context}": cache / 2**20}
    if config.device != "cpu" and torch.cuda.is_available():
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out
