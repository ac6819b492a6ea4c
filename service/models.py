"""Served models: the repository loaded into runners, readiness, per-model workers and statistics.

Each model has one worker thread (a ``ThreadPoolExecutor`` of one): every backend call of that
model, from traffic, a dynamic batch or a controlled comparison, runs there one at a time, so the
runner is never used concurrently and its ``last_inference_time`` is that call's. A model that
fails to load is kept, UNAVAILABLE with the reason, and the others load as usual.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyt_deploy.errors import DytDeployError
from dyt_deploy.repository import DEFAULT_MAX_BATCH_SIZE, MANIFEST_NAME, list_model_folders, read_manifest
from dyt_deploy.runners.base import Runner

from .batching import DynamicBatcher
from .errors import DeadlineExceeded, NotFound, Unavailable
from .protocol import DATATYPES, Signature, TensorSpec
from .settings import BatchingConfig, Settings
from .stats import ModelStats

log = logging.getLogger("dyt_deploy.service")

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
_TRITON_DATA_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "FP64": "TYPE_FP64", "BF16": "TYPE_BF16",
                      "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}


@dataclass(frozen=True)
class ModelConfig:
    """What the service reads from a model's config.pbtxt."""

    platform: str = "onnxruntime_onnx"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batching: BatchingConfig | None = None


def read_config(folder: Path) -> ModelConfig:
    """Platform, max_batch_size and dynamic_batching of a Triton config.pbtxt (defaults when absent)."""
    path = folder / "config.pbtxt"
    if not path.is_file():
        return ModelConfig()
    text = path.read_text()
    platform = re.search(r'platform\s*:\s*"([^"]+)"', text)
    max_batch = re.search(r"max_batch_size\s*:\s*(\d+)", text)
    max_batch_size = int(max_batch.group(1)) if max_batch else DEFAULT_MAX_BATCH_SIZE
    dynamic = re.search(r"dynamic_batching\s*\{([^}]*)\}", text)
    batching = None
    if dynamic and max_batch_size > 0:
        delay = re.search(r"max_queue_delay_microseconds\s*:\s*(\d+)", dynamic.group(1))
        batching = BatchingConfig(max_batch_size, int(delay.group(1)) if delay else 0)
    return ModelConfig(platform.group(1) if platform else "onnxruntime_onnx", max_batch_size, batching)


def latest_version(folder: Path) -> str:
    """The highest numeric version folder (Triton's default policy serves the latest)."""
    versions = [p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")]
    if not versions:
        raise DytDeployError(f"{folder}: no numeric version folder (expected {folder.name}/1/model.onnx)")
    return max(versions, key=int)


def make_runner(folder: Path, version: str, settings: Settings) -> Runner:
    """A runner for ``folder/version``: model.onnx in onnxruntime, else model.plan in TensorRT."""
    onnx_path, plan_path = folder / version / "model.onnx", folder / version / "model.plan"
    if onnx_path.is_file():
        from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
        # several models take turns on the same cores: idle threads must not spin (see the runner)
        return OnnxRuntimeRunner(onnx_path, provider=settings.provider, threads=settings.threads, spin=False)
    if plan_path.is_file():
        from dyt_deploy.runners.tensorrt import TensorRTRunner
        return TensorRTRunner(plan_path)
    raise DytDeployError(f"{folder / version}: no model.onnx or model.plan")


def synthetic_feed(inputs: tuple[TensorSpec, ...], dims: dict[str, int], seed: int = 0,
                   default_dim: int = 1) -> dict[str, np.ndarray]:
    """Inputs for warm-up and comparisons: named dims from ``dims`` (else ``default_dim``);
    floats standard normal; integers and booleans one (a valid token id in any vocabulary of two
    or more, and an attend-everywhere mask)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = tuple(d if isinstance(d, int) else dims.get(d, default_dim) for d in spec.shape)
        dtype = DATATYPES[spec.datatype]
        if dtype.kind == "f" or spec.datatype == "BF16":
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[spec.name] = np.ones(shape, dtype)
    return feed


@dataclass(frozen=True)
class Execution:
    """One backend call over one or more requests: when it started, its compute time, and each
    request's outputs."""

    started: float
    infer_s: float
    outputs: list[dict[str, np.ndarray]]


class ServedModel:
    """One model folder of the repository, loaded (or not) into a runner."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder, self.name, self.settings = folder, folder.name, settings
        self.state, self.reason = LOADING, ""
        self.manifest: dict[str, Any] = {}
        self.signature: Signature | None = None
        self.config = ModelConfig()
        self.version: str | None = None
        self.runner: Runner | None = None
        self.batching: BatchingConfig | None = None
        self.batcher: DynamicBatcher | None = None
        self.stats = ModelStats(settings.stats_window)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.name}")

    @property
    def family(self) -> str:
        return str(self.manifest.get("family") or self.name)

    @property
    def variant(self) -> str:
        """The norm variant ("layernorm", "dyt", ...), the label the comparison pairs up."""
        return str(self.manifest.get("norm") or "unknown")

    @property
    def ready(self) -> bool:
        return self.state == READY

    def load(self) -> None:
        """Read the folder, activate the runner and warm it up; any failure leaves the model
        UNAVAILABLE with the reason (and is logged), never raised."""
        started = time.perf_counter()
        try:
            self._load()
        except Exception as err:  # a broken model must not take the others down
            self.state, self.reason = UNAVAILABLE, f"{type(err).__name__}: {err}"[:2000]
            log.warning("model %s failed to load: %s", self.name, self.reason)
            return
        self.state, self.reason = READY, ""
        log.info("model %s ready in %.2f s", self.name, time.perf_counter() - started)

    def _load(self) -> None:
        self.manifest = read_manifest(self.folder)
        self.config = read_config(self.folder)
        self.signature = Signature.from_manifest(self.manifest, self.config.max_batch_size)
        self.version = latest_version(self.folder)
        self.batching = self._batching_config()
        runner = make_runner(self.folder, self.version, self.settings)
        runner.activate()
        self.runner = runner
        for seed in range(self.settings.warmup_runs):
            runner.infer(synthetic_feed(self.signature.inputs, {}, seed))

    def _batching_config(self) -> BatchingConfig | None:
        chosen = self.settings.batching_for(self.name) or self.config.batching
        if chosen is None or self.signature is None or not self.signature.batched:
            return None
        size = min(chosen.max_batch_size, self.signature.max_batch_size)
        return BatchingConfig(size, chosen.max_queue_delay_us)

    def start_batcher(self) -> None:
        """Start the dynamic batcher on the running event loop (ready models with batching only)."""
        if self.ready and self.batching is not None and self.batcher is None:
            self.batcher = DynamicBatcher(self.run_batch, self.executor, self.batching)
            self.batcher.start()

    def run_batch(self, feeds: list[dict[str, np.ndarray]]) -> Execution:
        """Blocking, on the model's worker: one backend call over ``feeds`` (concatenated along
        dim 0 when there are several), outputs split back per request."""
        assert self.runner is not None
        started = time.perf_counter()
        feed = feeds[0] if len(feeds) == 1 else {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        prepared = time.perf_counter()
        outputs = self.runner.infer(feed)
        infer_s = self.runner.last_inference_time or (time.perf_counter() - prepared)
        called = time.perf_counter()
        per_request = [outputs] if len(feeds) == 1 else split_outputs(outputs, [_items(f) for f in feeds])
        items = sum(_items(f) for f in feeds) if self.signature is not None and self.signature.batched else 1
        self.stats.record_execution(items, prepared - started, infer_s, time.perf_counter() - called)
        return Execution(started, infer_s, per_request)

    def run_timed(self, feed: dict[str, np.ndarray]) -> float:
        """Blocking, on the model's worker: one call's compute time, outside the traffic statistics."""
        assert self.runner is not None
        self.runner.infer(feed)
        return float(self.runner.last_inference_time or 0.0)

    async def infer(self, feed: dict[str, np.ndarray],
                    timeout_s: float | None = None) -> tuple[dict[str, np.ndarray], float, float]:
        """Run one request off the event loop (through the batcher when batching is on);
        returns its outputs, queue time and compute time.

        ``timeout_s`` (the request's own ``timeout``): past it the request is answered with 504; if
        it is still queued it never runs, a backend call already under way finishes unseen.
        """
        if not self.ready:
            raise Unavailable(f"model {self.name!r} is not ready: {self.reason or self.state}")
        if timeout_s is None:
            return await self._infer(feed)
        try:
            return await asyncio.wait_for(self._infer(feed), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"model {self.name!r} did not answer within the request's timeout of "
                                   f"{round(timeout_s * 1e6)} µs") from None

    async def _infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        if self.batcher is not None:
            return await self.batcher.submit(feed, _items(feed))
        enqueued = time.perf_counter()
        execution = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, [feed])
        return execution.outputs[0], execution.started - enqueued, execution.infer_s

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        """Compute time of one call made on the model's worker (between traffic calls)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run_timed, feed)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await asyncio.get_running_loop().run_in_executor(self.executor, self._deactivate)
        self.executor.shutdown(wait=False)

    def _deactivate(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()

    def metadata(self) -> dict[str, Any]:
        """Model metadata (OIP): dynamic dims -1; the family and variant as parameters."""
        sig = self._require_signature()
        return {"name": self.name, "versions": [self.version] if self.version else [],
                "platform": self.config.platform, "inputs": [t.metadata() for t in sig.inputs],
                "outputs": [t.metadata() for t in sig.outputs],
                "parameters": {"family": self.family, "norm": self.variant}}

    def triton_config(self) -> dict[str, Any]:
        """The model configuration as Triton's ``/config`` returns it (what perf_analyzer reads)."""
        sig = self._require_signature()
        config: dict[str, Any] = {
            "name": self.name, "platform": self.config.platform, "max_batch_size": sig.max_batch_size,
            "input": [_config_tensor(t, sig.batched) for t in sig.inputs],
            "output": [_config_tensor(t, sig.batched) for t in sig.outputs],
            "instance_group": [{"count": 1, "kind": "KIND_GPU" if self.settings.provider != "cpu" else "KIND_CPU"}],
        }
        if self.batching is not None:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": self.batching.max_queue_delay_us,
                                          "preferred_batch_size": [self.batching.max_batch_size]}
        return config

    def _require_signature(self) -> Signature:
        if self.signature is None:
            raise Unavailable(f"model {self.name!r} is not available: {self.reason or self.state}")
        return self.signature

    def index_entry(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version or "", "state": self.state, "reason": self.reason}


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    shape = spec.shape[1:] if batched else spec.shape
    data_type = _TRITON_DATA_TYPES.get(spec.datatype, f"TYPE_{spec.datatype}")
    return {"name": spec.name, "data_type": data_type, "dims": [d if isinstance(d, int) else -1 for d in shape]}


def _items(feed: dict[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def split_outputs(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Split batched outputs along dim 0 into one dict per request of ``sizes`` items."""
    cuts = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, cuts) for name, array in outputs.items()}
    return [{name: parts[i] for name, parts in pieces.items()} for i in range(len(sizes))]


def model_folders(repository: Path) -> list[Path]:
    """Model folders: those with a dyt.json, and those with only a config.pbtxt (reported as
    unavailable rather than silently skipped)."""
    if not repository.is_dir():
        raise DytDeployError(f"model repository {repository} is not a folder")
    folders = set(list_model_folders(repository))
    folders |= {p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")
                and (p / "config.pbtxt").is_file() and not (p / MANIFEST_NAME).is_file()}
    return sorted(folders)


class ModelRegistry:
    """Every model of the repository, by name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = {f.name: ServedModel(f, settings) for f in model_folders(settings.repository_path)}

    def load_all(self) -> None:
        """Load and warm every model, one after the other (blocking; run it off the event loop)."""
        for model in self.models.values():
            model.load()

    def start(self) -> None:
        for model in self.models.values():
            model.start_batcher()

    async def close(self) -> None:
        for model in self.models.values():
            await model.close()

    @property
    def ready(self) -> bool:
        """Strict readiness (Triton's default): every model of the repository is ready."""
        return all(m.ready for m in self.models.values())

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model called ``name`` (404 for an unknown name or a version it does not serve)."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}; known: {', '.join(self.models) or '(none)'}")
        if version is not None and model.version is not None and version != model.version:
            raise NotFound(f"model {name!r} has no version {version!r}; served: {model.version}")
        return model

    def families(self) -> dict[str, list[ServedModel]]:
        """Models grouped by family, in name order."""
        grouped: dict[str, list[ServedModel]] = {}
        for model in self.models.values():
            if model.manifest:
                grouped.setdefault(model.family, []).append(model)
        return grouped
