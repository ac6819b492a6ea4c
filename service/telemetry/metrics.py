"""Prometheus metrics of the service, on a registry of its own (one per app, so tests can make
several apps in one process).

Latency histograms use exponential buckets from 20 µs to about 2.6 s (factor 2): the defaults of
prometheus_client start at 5 ms, too coarse for sub-millisecond inference. Labels: ``model``,
``family`` and ``variant`` (the norm: layernorm, dyt, ...), never request ids.

With several worker processes (``dyt-serve --workers N``) prometheus_client runs in its
multiprocess mode: ``$PROMETHEUS_MULTIPROC_DIR`` is set before the workers start, each writes its
values to files there, and /metrics adds up every worker's (gauges: in-flight summed over live
workers, readiness the minimum over them).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .stats import RequestTiming

LATENCY_BUCKETS = tuple(20e-6 * 2**k for k in range(18))
MODEL_LABELS = ("model", "family", "variant")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ServiceMetrics:
    """The service's counters, gauges and histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dyt_inference_requests", "Inference requests by outcome (success, fail).",
                                (*MODEL_LABELS, "outcome"), registry=self.registry)
        self.request_seconds = self._histogram("dyt_request_duration_seconds",
                                               "Server-side end-to-end time of successful inference requests.")
        self.queue_seconds = self._histogram("dyt_queue_duration_seconds", "Wait for the model's worker.")
        self.compute_seconds = self._histogram("dyt_compute_infer_duration_seconds",
                                               "Backend compute time (the runner's last_inference_time).")
        self.in_flight = Gauge("dyt_requests_in_flight", "HTTP requests being handled (health/metrics excluded).",
                               registry=self.registry, multiprocess_mode="livesum")
        self.rejected = Counter("dyt_requests_rejected", "Requests refused before handling, by reason.",
                                ("reason",), registry=self.registry)
        self.model_ready = Gauge("dyt_model_ready", "1 when the model is loaded and warmed, else 0.",
                                 MODEL_LABELS, registry=self.registry, multiprocess_mode="livemin")
        self.generations = Counter("dyt_generate_requests", "Generations by how they ended (stop, length, "
                                   "cancelled, error).", (*MODEL_LABELS, "finish_reason"), registry=self.registry)
        self.generate_tokens = Counter("dyt_generate_tokens", "Tokens of generations, by kind (prompt, output).",
                                       (*MODEL_LABELS, "kind"), registry=self.registry)
        self.time_to_first_token = self._histogram("dyt_generate_time_to_first_token_seconds",
                                                   "From a generation's start to its first token.")
        self.inter_token = self._histogram("dyt_generate_inter_token_seconds",
                                           "Between consecutive tokens of a generation.")
        self.generations_running = Gauge("dyt_generations_running", "Generations in progress.", MODEL_LABELS,
                                         registry=self.registry, multiprocess_mode="livesum")

    def _histogram(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, MODEL_LABELS, buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_success(self, labels: tuple[str, str, str], timing: RequestTiming) -> None:
        self.requests.labels(*labels, "success").inc()
        self.request_seconds.labels(*labels).observe(timing.total_s)
        self.queue_seconds.labels(*labels).observe(timing.queue_s)
        self.compute_seconds.labels(*labels).observe(timing.infer_s)

    def observe_failure(self, labels: tuple[str, str, str]) -> None:
        self.requests.labels(*labels, "fail").inc()

    def observe_generation(self, labels: tuple[str, str, str], finish_reason: str, prompt_tokens: int,
                           output_tokens: int, time_to_first_token_s: float | None, gaps_s: list[float]) -> None:
        """One generation that ended (``finish_reason`` stop, length, cancelled or error)."""
        self.generations.labels(*labels, finish_reason).inc()
        self.generate_tokens.labels(*labels, "prompt").inc(prompt_tokens)
        self.generate_tokens.labels(*labels, "output").inc(output_tokens)
        if time_to_first_token_s is not None:
            self.time_to_first_token.labels(*labels).observe(time_to_first_token_s)
        histogram = self.inter_token.labels(*labels)
        for gap in gaps_s:
            histogram.observe(gap)

    def render(self) -> bytes:
        """The exposition text: this registry's, or every worker's in multiprocess mode."""
        folder = os.environ.get(MULTIPROC_ENV)
        if not folder:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=folder)
        return generate_latest(combined)
