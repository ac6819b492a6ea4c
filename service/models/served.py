"""One model of the repository as the service serves it: loading and readiness, its metadata and
configuration, and the whole path of an inference request (:meth:`ServedModel.handle`).

A model that fails to load is kept, UNAVAILABLE with the reason, and the others load as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from starlette.responses import Response

from dyt_deploy.feeds import random_feed
from dyt_deploy.repository import latest_version, read_manifest
from dyt_deploy.runners import runner_for_folder
from dyt_deploy.specs import TensorSpec

from ..errors import BadRequest, DeadlineExceeded, ServiceError, Unavailable
from ..protocol import oip
from ..protocol.oip import Signature
from ..settings import BatchingConfig, Settings
from ..telemetry.metrics import ServiceMetrics
from ..telemetry.stats import ModelStats, RequestTiming
from .batching import DynamicBatcher
from .config import ServingConfig, config_answer, read_serving_config
from .worker import ModelWorker, batch_items

log = logging.getLogger("dyt_deploy.service")

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"]+/)+")  # the folders of an absolute path
INLINE_BYTES = 1 << 16  # JSON and outputs below this are coded on the event loop, larger ones in a thread
BINARY_INLINE_BYTES = 8 << 20  # binary tensor bytes decoded on the event loop up to this
T = TypeVar("T")


def example_feed(tensors: Sequence[dict[str, Any]], dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs (:func:`dyt_deploy.feeds.random_feed`, the project's one maker, numpy only) for
    tensors given as dyt.json entries (``{"name", "dtype", "shape"}``): named dims from ``dims``,
    else 1. For warm-up and controlled comparisons."""
    specs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in tensors]
    return random_feed(specs, dims, seed, default_dim=1)


def without_server_paths(text: str, repository: Path) -> str:
    """``text`` as clients may see it: paths inside the repository relative to it, other absolute
    paths cut to their last part (answers never show where the server keeps its files)."""
    for root in {str(repository.resolve()), str(repository.absolute())}:
        text = text.replace(root + os.sep, "").replace(root, ".")
    return ABSOLUTE_PATH.sub("", text)


def decode_in_thread(body: bytes, header_length: str | None) -> bool:
    """Whether decoding ``body`` is worth a thread hop: a JSON part over INLINE_BYTES (parsing it
    holds the event loop), or binary tensors over BINARY_INLINE_BYTES (checked for NaN/Inf, sliced
    without copies). A binary request of a few MB decodes in well under a millisecond."""
    json_part = len(body)
    if header_length is not None and header_length.isdigit() and len(header_length) <= 18:
        json_part = min(int(header_length), len(body))
    return json_part > INLINE_BYTES or len(body) > BINARY_INLINE_BYTES


async def timed_work(work: Callable[[], T], in_thread: bool) -> tuple[T, float]:
    """Run ``work`` (in a worker thread when large) and time it."""
    started = time.perf_counter()
    result = await anyio.to_thread.run_sync(work) if in_thread else work()
    return result, time.perf_counter() - started


class ServedModel:
    """One model folder of the repository, loaded (or not) into a runner on its own worker."""

    def __init__(self, folder: Path, settings: Settings, metrics: ServiceMetrics) -> None:
        self.folder, self.name, self.settings, self.metrics = folder, folder.name, settings, metrics
        self.state, self.reason = LOADING, ""
        self.manifest: dict[str, Any] = {}
        self.signature: Signature | None = None
        self.config = ServingConfig()
        self.version: str | None = None
        self.runtime = ""  # the runner's kind once loaded ("ort", "openvino", ...)
        self.batching: BatchingConfig | None = None
        self.batcher: DynamicBatcher | None = None
        self.stats = ModelStats(settings.stats_window)
        self.worker = ModelWorker(self.name, self.stats)
        self.source = f"pid-{os.getpid()}"  # who answers its requests (a Ray model: each replica's id)

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

    @property
    def labels(self) -> tuple[str, str, str]:
        """The model's Prometheus labels: model, family, variant."""
        return self.name, self.family, self.variant

    # ---------------------------------------------------------------------------------------
    # Lifecycle

    def load(self) -> None:
        """Read the folder, activate the runner and warm it up; any failure leaves the model
        UNAVAILABLE with the reason (and is logged), never raised."""
        started = time.perf_counter()
        try:
            self._load()
        except Exception as err:  # a broken model must not take the others down
            self.state = UNAVAILABLE
            self.reason = without_server_paths(f"{type(err).__name__}: {err}", self.folder.parent)[:2000]
            log.warning("model %s failed to load: %s", self.name, self.reason)
            return
        self.state, self.reason = READY, ""
        log.info("model %s ready in %.2f s", self.name, time.perf_counter() - started)

    def _load(self) -> None:
        self.manifest = read_manifest(self.folder)
        self.config = read_serving_config(self.folder)
        self.signature = Signature.from_manifest(self.manifest, self.config.max_batch_size)
        self.version = latest_version(self.folder)
        self.batching = self._batching_config()
        # several models take turns on the same cores: idle onnxruntime threads must not spin
        runner = runner_for_folder(self.folder, self.version, provider=self.settings.provider,
                                   backend=self.settings.backend, threads=self.settings.threads, spin=False)
        self.runtime = runner.name
        runner.activate()
        self.worker.attach(runner, self.signature.batched)
        for seed in range(self.settings.warmup_runs):
            runner.infer(self.example_feed({}, seed))

    def _batching_config(self) -> BatchingConfig | None:
        chosen = self.settings.batching_for(self.name) or self.config.batching
        if chosen is None or self.signature is None or not self.signature.batched:
            return None
        return BatchingConfig(min(chosen.max_batch_size, self.signature.max_batch_size), chosen.max_queue_delay_us)

    def start_batcher(self) -> None:
        """Start the dynamic batcher on the running event loop (ready models with batching only)."""
        if self.ready and self.batching is not None and self.batcher is None:
            self.batcher = DynamicBatcher(self.worker.run_batch, self.worker.executor, self.batching)
            self.batcher.start()

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await self.worker.close()

    # ---------------------------------------------------------------------------------------
    # Inference

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> Response:
        """One inference request, start to end: inflate, decode and check, run, encode; the
        request's stage times go to the model's statistics and the service's metrics."""
        self.require_ready()
        encoding = headers.get("content-encoding", "identity")
        if encoding.lower() != "identity":  # (behind BodyGate, bodies come inflated: on Ray they do not)
            limit = self.json_limit() if headers.get(oip.HEADER_LENGTH) is None else self.settings.max_body_bytes
            body = await anyio.to_thread.run_sync(oip.inflate_body, body, encoding, limit,
                                                  self.settings.max_inflate_ratio)
        started = time.perf_counter()
        try:
            content, extra, timing, items = await self._answer(body, headers.get(oip.HEADER_LENGTH))
        except Exception:
            self.stats.record_failure(time.perf_counter() - started)
            self.metrics.observe_failure(self.labels)
            raise
        timing = RequestTiming(timing.queue_s, timing.input_s, timing.infer_s, timing.output_s,
                               time.perf_counter() - started)
        self.stats.record_success(timing, items)
        self.metrics.observe_success(self.labels, timing)
        return Response(content, headers=extra)

    async def _answer(self, body: bytes, header_length: str | None) -> tuple[bytes, dict[str, str],
                                                                              RequestTiming, int]:
        """Decode, run and encode one request; its body, headers, stage times and batch items."""
        signature = self.require_signature()
        request, input_s = await timed_work(
            lambda: oip.decode_request(body, header_length, signature, self.settings.allow_nonfinite),
            decode_in_thread(body, header_length))
        try:
            outputs, queue_s, infer_s = await self.infer(request.inputs, request.timeout_s)
        except ServiceError:
            raise
        except Exception as err:  # the backend refused inputs that passed the signature checks
            raise BadRequest(f"model {self.name!r} could not run these inputs: {type(err).__name__}: {err}") from err
        size = sum(a.nbytes for a in outputs.values() if isinstance(a, np.ndarray))
        (content, extra), output_s = await timed_work(
            lambda: oip.encode_response(self.name, self.version, request, outputs, signature),
            size > INLINE_BYTES)
        items = request.batch_size if signature.batched else 1
        return content, extra, RequestTiming(queue_s, input_s, infer_s, output_s, 0.0), items

    async def infer(self, feed: dict[str, np.ndarray],
                    timeout_s: float | None = None) -> tuple[dict[str, np.ndarray], float, float]:
        """Run one request off the event loop (through the batcher when batching is on);
        returns its outputs, queue time and compute time.

        ``timeout_s`` (the request's own ``timeout``): past it the request is answered with 504; if
        it is still queued it never runs, a backend call already under way finishes unseen.
        """
        self.require_ready()
        if timeout_s is None:
            return await self._infer(feed)
        try:
            return await asyncio.wait_for(self._infer(feed), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"model {self.name!r} did not answer within the request's timeout of "
                                   f"{round(timeout_s * 1e6)} µs") from None

    async def _infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        if self.batcher is not None:
            return await self.batcher.submit(feed, batch_items(feed))
        return await self.worker.run(feed)

    def example_feed(self, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs for this model (see :func:`example_feed`)."""
        return example_feed(self.manifest["inputs"], dims, seed)

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        """Compute time of one call made on the model's worker (between traffic calls)."""
        return await self.worker.timed(feed)

    async def run_aside(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """One call on the model's worker outside the traffic statistics (the dashboard's labelled
        examples): its outputs and compute seconds."""
        self.require_ready()
        return await self.worker.executor.call(self._run_aside, feed)

    def _run_aside(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        runner = self.worker.runner
        outputs = runner.infer(feed)
        return outputs, float(runner.last_inference_time or 0.0)

    def answered_by(self) -> dict[str, int]:
        """Requests answered (inferences and generations), by who answered them: this process
        (a Ray model: by replica)."""
        generations = getattr(self, "generation_stats", None)
        finished = generations.finished["stop"] + generations.finished["length"] if generations is not None else 0
        return {self.source: self.stats.success_count + finished}

    # ---------------------------------------------------------------------------------------
    # Descriptions

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable(f"model {self.name!r} is not ready: {self.reason or self.state}")

    def json_limit(self) -> int:
        """The largest all-JSON inference body this model takes (413 above it): its largest valid
        request (:func:`service.protocol.oip.json_body_limit`), within ``max_json_bytes``."""
        cap = min(self.settings.max_json_bytes, self.settings.max_body_bytes)
        return cap if self.signature is None else oip.json_body_limit(self.signature, cap)

    def require_signature(self) -> Signature:
        if self.signature is None:
            raise Unavailable(f"model {self.name!r} is not available: {self.reason or self.state}")
        return self.signature

    def metadata(self) -> dict[str, Any]:
        """Model metadata (OIP): dynamic dims -1; the family and variant as parameters."""
        sig = self.require_signature()
        return {"name": self.name, "versions": [self.version] if self.version else [],
                "platform": self.config.platform, "inputs": [t.metadata() for t in sig.inputs],
                "outputs": [t.metadata() for t in sig.outputs],
                "parameters": {"family": self.family, "norm": self.variant}}

    def triton_config(self) -> dict[str, Any]:
        """The model configuration as Triton's ``/config`` returns it (what perf_analyzer reads)."""
        sig = self.require_signature()
        return config_answer(self.name, self.manifest, self.config.platform, sig.max_batch_size, self.batching,
                             gpu=self.settings.provider != "cpu" and self.runtime != "openvino",
                             backend=self.config.backend)

    def index_entry(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version or "", "state": self.state, "reason": self.reason}
