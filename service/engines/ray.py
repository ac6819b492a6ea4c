"""The service on Ray Serve: one deployment per model, each with its own replicas, behind one
ingress that speaks the same Open Inference Protocol v2 (and the dashboard, comparison and stats
routes).

    serve run service.engines.ray:app_builder repository=/models num_replicas=2
    dyt-serve --engine ray --repository /models --replicas 2

* ``router`` (the ingress, ``@serve.ingress``): routes ``/v2/models/{name}/...`` by model name to
  that model's deployment, answers health, readiness (every model deployment answering within
  ``READY_TIMEOUT_S``), server metadata, the repository index, and the statistics, live ratios and
  controlled comparisons from every replica's numbers, and ``/metrics`` (counters of every replica
  added up; the latency histograms are Ray's own, per deployment).
* ``model-<name>``: a replica holds the very app ``dyt-serve`` runs (:func:`service.http.app.create_app`)
  with that one model loaded in its constructor (a model that fails to load fails the replica,
  which Serve reports and retries); the request runs through it unchanged, so JSON, binary tensors,
  errors and limits behave as in ``dyt-serve``. ``check_health`` fails when the model is not ready.
  A ``/generate_stream`` runs through the app directly (:class:`AppCall`) and comes back to the
  router as it is produced (a streaming deployment call); the router passes each event on, and
  when its client leaves, the call is cancelled, the app sees its client gone and the generation
  stops after the step under way.
* ``stats``: one replica holding a :class:`~service.telemetry.stats.MemoryStatsStore`. Every answer of a
  model replica carries that replica's cumulative statistics (versioned) and new latency samples,
  and a text-generation model's replica its generation statistics too (counts and new samples of
  time to first token, inter-token gaps and tokens/s); the router publishes them once the answer
  has reached it, before passing it on, so ``/v2/models/stats``, ``/api/live`` and ``/metrics``
  cover all replicas, and a request whose answer was lost with its replica (and which the client
  retries) is not counted. A stream also carries the replica's statistics right after its head (the
  generation now running), published without holding the stream up. A call whose client left
  (a dropped stream, a ``/generate`` cancelled) has no answer to carry them: the replica publishes
  what it recorded itself, once the app has ended the call (:meth:`ModelReplica.publish_soon`).

Ray is optional (``pip install "dyt-deploy[ray]"``): this module imports without it, and
:func:`build_app` says what to install.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import dyt_deploy
from dyt_deploy.errors import DytDeployError, MissingBackendError

from ..http.auth import key_problem
from ..http.dashboard_routes import dashboard_page, security_headers
from ..http.oip_routes import EXTENSIONS
from ..models.registry import model_folders
from ..protocol.generate import sse
from ..settings import Settings
from ..telemetry import compare
from ..telemetry.generation_stats import generation_summary, merge_generation_entries
from ..telemetry.metrics import MODEL_LABELS
from ..telemetry.stats import MemoryStatsStore, merge_entries

try:  # optional: the ray extra
    from ray import serve
except ImportError:  # pragma: no cover - exercised where ray is missing
    serve = None

log = logging.getLogger("dyt_deploy.service")

READY_TIMEOUT_S = 5.0
ROUTER_ONGOING = 1024
PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})
RETRY_AFTER_S = "1"
HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
STREAMED_ROUTES = ("/generate_stream",)  # answered as they are produced (server-sent events)
EVENT_STREAM = "text/event-stream"
LEAVE_GRACE_S = 5.0  # how long an app may take to end a call whose client left before it is cancelled
api = FastAPI(title="dyt-deploy inference service on Ray Serve", version=dyt_deploy.__version__)


@api.exception_handler(Exception)
async def internal_error(_: Request, err: Exception) -> JSONResponse:
    """Anything unexpected in the router is ``{"error": ...}`` too (500)."""
    return error(500, f"internal server error: {type(err).__name__}")


@api.middleware("http")
async def api_key_gate(request: Request, call_next: Any) -> Response:
    """The server's API key, checked in the router before anything else (401 without it)."""
    router = require_ray().get_replica_context().servable_object
    problem = router.key_problem(request.url.path, request.headers)
    if problem is not None:
        return error(401, problem, {"WWW-Authenticate": "Bearer"})
    return await call_next(request)


def require_ray() -> Any:
    """The ``ray.serve`` module (one clear error when Ray is not installed)."""
    if serve is None:
        raise MissingBackendError('Ray Serve is not installed; pip install "dyt-deploy[ray]" (or "ray[serve]")')
    return serve


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class AppCall:
    """One HTTP request run through an ASGI app directly, its answer coming out as the app sends it.

    Every request of a replica goes this way, streamed (:meth:`ModelReplica.stream`) or collected
    (:meth:`ModelReplica.forward`); httpx's ASGITransport hands back an answer only once the app has
    finished it, and its ``receive`` never reports a disconnect before then. :meth:`answer` yields
    ``("head", status, headers)`` and then ``("body", chunk)`` as the app sends them; :meth:`leave`
    is the client going away: the app's ``receive`` then answers ``http.disconnect`` (what uvicorn
    says when a connection drops), so a streaming response ends as it does under dyt-serve; an app
    still running ``LEAVE_GRACE_S`` later is cancelled.
    """

    def __init__(self, app: Any, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        path, _, query = path.partition("?")
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                      "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                      "root_path": "", "client": ("127.0.0.1", 0), "server": ("replica", 80),
                      "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
        self.body: bytes | None = body
        self.sent: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.task = asyncio.create_task(self.run(app))

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        finally:
            self.sent.put_nowait(None)

    async def receive(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if not self.gone.is_set():
            self.sent.put_nowait(message)

    async def answer(self) -> AsyncIterator[tuple]:
        """The answer's head, then each body chunk, as the app sends them; raises what the app
        raised if the answer did not begin."""
        began = False
        while (message := await self.sent.get()) is not None:
            if message["type"] == "http.response.start":
                began = True
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                yield "head", message["status"], [(k, v) for k, v in headers if k.lower() not in HOP_HEADERS]
            elif message["type"] == "http.response.body" and message.get("body"):
                yield "body", bytes(message["body"])
        await asyncio.wait([self.task])  # it has ended: its outcome
        failure = None if self.task.cancelled() else self.task.exception()
        if not began:
            raise failure or RuntimeError("the app ended without an answer")
        if failure is not None:  # after its answer began (Starlette sent a 500 and re-raised, say)
            log.warning("request %s %s failed in its answer: %r", self.scope["method"], self.scope["path"], failure)

    def leave(self) -> None:
        """The client went away (see the class docstring)."""
        if not self.task.done():
            self.gone.set()
            asyncio.get_running_loop().call_later(LEAVE_GRACE_S, self.task.cancel)


@dataclass
class Handed:
    """How far one statistics object (a ModelStats or a GenerationStats) went out with answers: the
    version and the newest sample's sequence number last handed on."""

    version: int = 0
    sample: int = 0

    def take(self, stats: Any) -> tuple[int, dict, list] | None:
        """``(version, cumulative entry, new samples)`` of ``stats`` (its ``export``), or None when
        nothing was recorded since the last take."""
        version, entry, samples = stats.export(self.sample)
        if version == self.version:
            return None
        self.version, self.sample = version, max([self.sample, *(s[0] for s in samples)])
        return version, entry, samples


class ModelReplica:
    """One model's replica: the dyt-serve app with only ``model`` loaded, called in process;
    ``stats``: the stats deployment, for what a call whose client left recorded."""

    def __init__(self, repository: str, model: str, settings_json: str, stats: Any = None) -> None:
        from ..http.app import create_app

        self.app = create_app(repository, Settings.from_json(settings_json))
        registry = self.app.state.service.registry
        registry.models = {model: registry.get(model)}
        registry.load_all()
        if not registry.ready:
            raise DytDeployError(f"model {model} did not load: {registry.not_ready()}")
        self.model = registry.models[model]
        self.generation_stats = getattr(self.model, "generation_stats", None)  # a text-generation model's
        self.handed, self.generation_handed, self.started = Handed(), Handed(), False
        self.stats = stats
        self.publishing: set[asyncio.Task] = set()  # its own publishes (see publish_soon)
        self.source = require_ray().get_replica_context().replica_id.unique_id

    async def forward(self, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes) -> tuple[int, list[tuple[str, str]], bytes, tuple | None]:
        """One HTTP request through the replica's app; its status, headers and body, and the
        replica's statistics for the router to publish (see :meth:`statistics`)."""
        self.start()
        call = AppCall(self.app, method, path, [(k, v) for k, v in headers if k.lower() not in HOP_HEADERS], body)
        status, kept, chunks = 500, [], []
        try:
            async with aclosing(call.answer()) as answer:
                async for item in answer:
                    if item[0] == "head":
                        _, status, kept = item
                    else:
                        chunks.append(item[1])
        except asyncio.CancelledError:  # the client left (Serve cancels the call): the app sees it gone
            call.leave()
            self.publish_soon(call.task)
            raise
        return status, kept, b"".join(chunks), self.statistics()

    async def stream(self, method: str, path: str, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator[tuple]:
        """One HTTP request through the replica's app, its answer as it is produced (a streaming
        call: ``handle.options(stream=True)``): ``("head", status, headers)``, ``("body", chunk)``
        per chunk, then ``("end", statistics)``; right after the head, ``("stats", statistics)``
        when something was recorded (a generation started). When the call is cancelled (the
        router's client left), the app sees its client gone (:meth:`AppCall.leave`) and the replica
        publishes what it recorded once the app has ended the call (:meth:`publish_soon`)."""
        self.start()
        call = AppCall(self.app, method, path, [(k, v) for k, v in headers if k.lower() not in HOP_HEADERS], body)
        ended = False
        try:
            async with aclosing(call.answer()) as answer:
                async for item in answer:
                    yield item
                    if item[0] == "head" and (statistics := self.statistics()) is not None:
                        yield "stats", statistics
            ended = True
            yield "end", self.statistics()
        finally:
            call.leave()
            if not ended:
                self.publish_soon(call.task)

    def start(self) -> None:
        if not self.started:  # batchers need the replica's running event loop
            self.app.state.service.registry.start()
            self.started = True

    def statistics(self) -> tuple | None:
        """``(model, replica, inference, generation)`` for StatsCollector.publish, each of the last
        two ``(version, cumulative entry, new samples)`` or None when unchanged since the last
        answer (generation: a text-generation model's); None when neither changed."""
        inference = self.handed.take(self.model.stats)
        generation = self.generation_handed.take(self.generation_stats) if self.generation_stats is not None else None
        if inference is None and generation is None:
            return None
        return self.model.name, self.source, inference, generation

    def publish_soon(self, call: asyncio.Task | None = None) -> None:
        """Publish what this replica recorded to the stats deployment itself, once ``call`` (the
        app's task, when it runs apart) has ended: for a call whose client left, whose answer
        carries nothing to the router. (Otherwise the replica's next answer carries it.)"""
        if self.stats is None:
            return
        task = asyncio.get_running_loop().create_task(self._publish_after(call))
        self.publishing.add(task)
        task.add_done_callback(self.publishing.discard)

    async def _publish_after(self, call: asyncio.Task | None) -> None:
        if call is not None:
            await asyncio.wait([call], timeout=LEAVE_GRACE_S + 1)  # the app is cancelled LEAVE_GRACE_S after
        statistics = self.statistics()
        if statistics is None:
            return
        try:
            await self.stats.publish.remote(*statistics)
        except Exception as err:  # the stats deployment is gone or restarting: these are lost
            log.warning("model %s could not publish its statistics: %s: %s", self.model.name, type(err).__name__, err)

    def describe(self) -> dict[str, Any]:
        """Name, version, family, variant, state and this replica's id."""
        m = self.model
        return {"name": m.name, "version": m.version, "family": m.family, "variant": m.variant,
                "state": m.state, "reason": m.reason, "replica": self.source, "has_manifest": bool(m.manifest),
                "generative": self.generation_stats is not None, "folded": bool(m.manifest.get("folded"))}

    def ready(self) -> bool:
        return self.model.ready

    async def timed(self, dims: dict[str, int], seed: int = 0) -> float:
        """Compute time of one call on synthetic inputs of ``dims`` (controlled comparisons)."""
        settings = self.app.state.service.settings
        compare.check_dims([self.model], dims, settings.compare_max_elements)
        return await self.model.timed(self.model.example_feed(dims, seed))

    def check_health(self) -> None:
        """Serve's health check: a replica whose model is not ready is restarted."""
        if not self.model.ready:
            raise RuntimeError(f"model {self.model.name} is not ready: {self.model.reason}")


class StatsCollector:
    """Every replica's statistics (one replica of its own)."""

    def __init__(self, window: int = 2048) -> None:
        self.store = MemoryStatsStore(window)

    def publish(self, model: str, source: str, inference: tuple | None, generation: tuple | None = None) -> None:
        """A replica's ``(version, entry, samples)`` of its Triton statistics and of its generation
        statistics (either None: unchanged)."""
        if inference is not None:
            self.store.publish(model, source, *inference)
        if generation is not None:
            self.store.publish_generation(model, source, *generation)

    def snapshot(self, models: list[str], window: int) -> dict[str, Any]:
        """Per model: every source's entry (by source) and the newest ``window`` samples; under
        ``generation``, every source's generation entry and the newest ``window`` samples of each
        kind."""
        return {m: {"entries": self.store.by_source(m), "window": self.store.window(m, window),
                    "generation": {"entries": self.store.generation_entries(m),
                                   "window": self.store.generation_window(m, window)}}
                for m in models}


class RemoteStats:
    """What :func:`service.telemetry.compare.live_family` reads of a model's statistics, from a snapshot."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def samples(self) -> tuple[list[float], list[float]]:
        return [s[2] for s in self.snapshot["window"]], [s[3] for s in self.snapshot["window"]]

    @property
    def success_count(self) -> int:
        return sum(e["inference_stats"]["success"]["count"] for e in self.snapshot["entries"].values())


class RemoteGenerationStats:
    """What :func:`service.telemetry.compare.generation_of` reads of a model's generation statistics, from a
    snapshot: every replica's counts added up (``running`` of the replicas still alive, as
    :func:`~service.telemetry.generation_stats.merge_generation_entries` tells), percentiles over the merged
    window."""

    def __init__(self, snapshot: dict[str, Any], window: int) -> None:
        self.snapshot, self.window = snapshot, window

    def report(self) -> tuple[dict[str, Any], tuple[list[float], list[float]]]:
        return generation_summary(merge_generation_entries(self.snapshot["entries"]), self.snapshot["window"],
                                  self.window)


class RemoteModel:
    """A model deployment as the comparison code sees a ServedModel: name, family, variant, state,
    statistics (and a text-generation model's generation statistics), and ``timed`` through its
    handle."""

    def __init__(self, description: dict[str, Any], handle: Any, stats: RemoteStats | None = None,
                 generation_stats: RemoteGenerationStats | None = None) -> None:
        self.__dict__.update(description)
        self.handle, self.stats, self.ready = handle, stats, description["state"] == "READY"
        self.generation_stats = generation_stats

    async def timed(self, feed_dims: dict[str, int]) -> float:
        return await self.handle.timed.remote(feed_dims)


class MergedMetrics:
    """Prometheus counters from the statistics of every replica, added up: requests by outcome,
    inference and execution counts, and the cumulative seconds of each stage (Triton's
    ``nv_inference_*`` in spirit); for text-generation models (``generation``: their merged
    generation entries) generations by finish reason, their tokens by kind, and those running.
    Latency histograms stay per replica: Ray exports Serve's own per-deployment latency metrics
    (the time-to-first-token and inter-token histograms of dyt-serve are not rebuilt here: the
    replicas hand on samples of a window, not every observation; /api/live has their percentiles)."""

    STAGES = ("queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self, entries: list[dict], labels: dict[str, tuple[str, str, str]], ready: dict[str, bool],
                 generation: dict[str, dict] | None = None) -> None:
        self.entries, self.labels, self.ready, self.generation = entries, labels, ready, generation or {}

    def collect(self) -> Any:
        requests = CounterMetricFamily("dyt_inference_requests", "Inference requests by outcome, every replica.",
                                       labels=[*MODEL_LABELS, "outcome"])
        items = CounterMetricFamily("dyt_inference_items", "Batch items inferred, every replica.", labels=MODEL_LABELS)
        executions = CounterMetricFamily("dyt_executions", "Backend calls, every replica.", labels=MODEL_LABELS)
        seconds = CounterMetricFamily("dyt_stage_seconds", "Cumulative time per request stage, every replica.",
                                      labels=[*MODEL_LABELS, "stage"])
        ready = GaugeMetricFamily("dyt_model_ready", "1 when some replica of the model answers ready.",
                                  labels=MODEL_LABELS)
        for entry in self.entries:
            labels, stats = list(self.labels[entry["name"]]), entry["inference_stats"]
            for outcome in ("success", "fail"):
                requests.add_metric([*labels, outcome], stats[outcome]["count"])
            items.add_metric(labels, entry["inference_count"])
            executions.add_metric(labels, entry["execution_count"])
            for stage in self.STAGES:
                seconds.add_metric([*labels, stage], stats[stage]["ns"] / 1e9)
            ready.add_metric(labels, 1.0 if self.ready.get(entry["name"]) else 0.0)
        return [requests, items, executions, seconds, ready, *self.generation_metrics()]

    def generation_metrics(self) -> list[Any]:
        """dyt-serve's ``dyt_generate_requests`` (finish reason ``error``: failed), ``dyt_generate_tokens``
        and ``dyt_generations_running``, every replica."""
        if not self.generation:
            return []
        generations = CounterMetricFamily("dyt_generate_requests", "Generations by how they ended (stop, length, "
                                          "cancelled, error), every replica.", labels=[*MODEL_LABELS, "finish_reason"])
        tokens = CounterMetricFamily("dyt_generate_tokens", "Tokens of generations, by kind (prompt, output), "
                                     "every replica.", labels=[*MODEL_LABELS, "kind"])
        running = GaugeMetricFamily("dyt_generations_running", "Generations in progress, every replica (as of "
                                    "each replica's last answer).", labels=MODEL_LABELS)
        for name, entry in self.generation.items():
            labels = list(self.labels[name])
            for reason, count in entry["finished"].items():
                generations.add_metric([*labels, reason], count)
            generations.add_metric([*labels, "error"], entry["failed"])
            for kind in ("prompt", "output"):
                tokens.add_metric([*labels, kind], entry[f"{kind}_tokens"])
            running.add_metric(labels, entry["running"])
        return [generations, tokens, running]


class Router:
    """The ingress: routes by model name, aggregates health and statistics."""

    def __init__(self, models: dict[str, Any], stats: Any, window: int = 2048, max_rounds: int = 1000,
                 api_key: str | None = None, public_metrics: bool = False) -> None:
        self.models, self.stats, self.window, self.max_rounds = models, stats, window, max_rounds
        self.api_key, self.public_metrics = api_key, public_metrics
        self.descriptions: dict[str, dict[str, Any]] = {}
        self.compare_lock = asyncio.Lock()
        self.running: str | None = None
        self.reports: dict[str, dict[str, Any]] = {}
        self.publishing: set[asyncio.Task] = set()  # background publishes (see publish_soon)

    def key_problem(self, path: str, headers: Any) -> str | None:
        """Why a request is refused for its API key (None: it passes): as dyt-serve, every route
        but the health probes needs the key when one is set (and /metrics too, unless public)."""
        if path in PROBES or (path == "/metrics" and self.public_metrics):
            return None
        bearer = headers.get("authorization", "")
        given = headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
        return key_problem(given, self.api_key)

    async def describe(self, name: str) -> dict[str, Any]:
        if name not in self.descriptions:
            self.descriptions[name] = await self.models[name].describe.remote()
        return self.descriptions[name]

    async def is_ready(self, name: str) -> bool:
        try:
            return await asyncio.wait_for(self.models[name].ready.remote(), READY_TIMEOUT_S)
        except Exception:  # no replica answered: starting, failed or gone
            return False

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> JSONResponse:
        states = await asyncio.gather(*(self.is_ready(n) for n in self.models))
        missing = [n for n, ok in zip(self.models, states, strict=True) if not ok]
        if not missing:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": f"models not ready: {', '.join(missing)}"}, status_code=503)

    @api.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "dyt-deploy", "version": dyt_deploy.__version__, "extensions": EXTENSIONS}

    @api.post("/v2/repository/index")
    async def repository_index(self) -> list[dict[str, Any]]:
        entries = []
        for name in self.models:
            ready = await self.is_ready(name)
            entry = {"name": name, "version": "", "state": "READY" if ready else "UNAVAILABLE", "reason": ""}
            if ready:
                entry["version"] = (await self.describe(name))["version"] or ""
            entries.append(entry)
        return entries

    async def merged_stats(self, names: list[str], snapshot: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Each model's Triton statistics, every replica added up (from ``snapshot`` when given)."""
        snapshot = snapshot if snapshot is not None else await self.stats.snapshot.remote(names, 1)
        described = [await self.describe(n) for n in names]
        return [merge_entries(n, d["version"], list(snapshot[n]["entries"].values()))
                for n, d in zip(names, described, strict=True)]

    @api.get("/v2/models/stats")
    async def all_model_stats(self) -> dict[str, Any]:
        return {"model_stats": await self.merged_stats(list(self.models))}

    @api.get("/api/replicas")
    async def replicas(self) -> dict[str, dict[str, int]]:
        """Per model, the requests each replica answered (by replica id)."""
        snapshot = await self.stats.snapshot.remote(list(self.models), 1)
        return {name: {source: e["inference_stats"]["success"]["count"] for source, e in s["entries"].items()}
                for name, s in snapshot.items()}

    @api.api_route("/v2/models/{name}", methods=["GET"])
    async def model_root(self, name: str, request: Request) -> Response:
        return await self.route(name, "", request)

    @api.api_route("/v2/models/{name}/{rest:path}", methods=["GET", "POST"])
    async def model_path(self, name: str, rest: str, request: Request) -> Response:
        return await self.route(name, "/" + rest, request)

    async def route(self, name: str, rest: str, request: Request) -> Response:
        """A model route: statistics from every replica here, anything else to one replica."""
        if name not in self.models:
            return error(404, f"unknown model {name!r}; known: {', '.join(self.models) or '(none)'}")
        if rest == "/stats" or (rest.startswith("/versions/") and rest.endswith("/stats")):
            return JSONResponse({"model_stats": await self.merged_stats([name])})
        if rest.endswith(STREAMED_ROUTES):
            return await self.streamed(name, request)
        try:
            status, headers, body, statistics = await self.models[name].forward.remote(
                request.method, request.url.path, request.headers.items(), await request.body())
        except Exception as err:  # the replica died or none is running: the client may retry
            return error(503, f"model {name!r} has no replica to answer ({type(err).__name__}); retry",
                         {"Retry-After": RETRY_AFTER_S})
        if statistics is not None:  # the answer is here: now it counts
            await self.stats.publish.remote(*statistics)
        return Response(body, status_code=status, headers=dict(headers))

    def publish_soon(self, statistics: tuple) -> None:
        """Publish a replica's statistics in the background (what a stream carries after its head:
        nothing waits for it; versions keep a later publish from being undone)."""

        async def publish() -> None:
            try:
                await self.stats.publish.remote(*statistics)
            except Exception as err:  # the stats deployment is gone or restarting
                log.warning("statistics of model %s not published: %s: %s", statistics[0], type(err).__name__, err)

        task = asyncio.get_running_loop().create_task(publish())
        self.publishing.add(task)
        task.add_done_callback(self.publishing.discard)

    async def streamed(self, name: str, request: Request) -> Response:
        """A request whose answer may be a stream (:data:`STREAMED_ROUTES`): its replica's answer as
        the replica produces it (:meth:`ModelReplica.stream`). An event stream is passed on event by
        event (:meth:`relay`); any other answer (a 400, a 503) is returned whole."""
        call = self.models[name].options(stream=True).stream.remote(
            request.method, request.url.path, request.headers.items(), await request.body())
        try:
            _, status, headers = await call.__anext__()
        except Exception as err:  # the replica died or none is running: the client may retry
            call.cancel()
            return error(503, f"model {name!r} has no replica to answer ({type(err).__name__}); retry",
                         {"Retry-After": RETRY_AFTER_S})
        if dict((k.lower(), v) for k, v in headers).get("content-type", "").startswith(EVENT_STREAM):
            return StreamingResponse(self.relay(name, call), status_code=status, headers=dict(headers))
        chunks = []
        try:
            async for kind, value in call:
                if kind == "body":
                    chunks.append(value)
                elif value is not None:  # "stats", "end"
                    await self.stats.publish.remote(*value)
        except Exception as err:
            return error(503, f"model {name!r} lost its replica while answering ({type(err).__name__}); retry",
                         {"Retry-After": RETRY_AFTER_S})
        return Response(b"".join(chunks), status_code=status, headers=dict(headers))

    async def relay(self, name: str, call: Any) -> AsyncIterator[bytes]:
        """An event stream's chunks as they arrive; the replica's statistics published after its
        head (in the background) and at its end; the replica's call cancelled when this ends first
        (the client left: Starlette cancels the response), so that the replica's app sees its client
        gone (and the replica publishes what it recorded itself)."""
        ended = False
        try:
            async for kind, value in call:
                if kind == "body":
                    yield value
                elif kind == "stats":
                    self.publish_soon(value)
                else:
                    ended = True
                    if value is not None:
                        await self.stats.publish.remote(*value)
        except Exception as err:  # the replica died mid-stream: the status is sent, say it in an event
            log.warning("stream of model %s lost its replica: %s: %s", name, type(err).__name__, err)
            yield sse({"error": f"model {name!r} lost its replica while streaming ({type(err).__name__})"})
        finally:
            if not ended:
                call.cancel()

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus counters of every replica added up (see :class:`MergedMetrics`)."""
        names = list(self.models)
        snapshot = await self.stats.snapshot.remote(names, 1)
        entries = await self.merged_stats(names, snapshot)
        labels = {e["name"]: await self.labels(e["name"]) for e in entries}
        ready = {n: await self.is_ready(n) for n in self.models}
        generation = {n: merge_generation_entries(snapshot[n]["generation"]["entries"]) for n in names
                      if (await self.describe(n)).get("generative")}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MergedMetrics(entries, labels, ready, generation))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def labels(self, name: str) -> tuple[str, str, str]:
        description = await self.describe(name)
        return name, description["family"], description["variant"]

    @api.get("/", response_class=HTMLResponse)
    async def dashboard(self) -> HTMLResponse:
        """dyt-serve's dashboard page, with the same security headers."""
        page = dashboard_page()
        return HTMLResponse(page, headers=security_headers(page))

    async def families(self, with_stats: bool) -> dict[str, list[RemoteModel]]:
        names = [n for n in self.models if await self.is_ready(n)]
        snapshot = await self.stats.snapshot.remote(names, self.window) if with_stats else {}
        grouped: dict[str, list[RemoteModel]] = {}
        for name in names:
            description = await self.describe(name)
            if description["has_manifest"]:
                stats = RemoteStats(snapshot[name]) if with_stats else None
                generation = (RemoteGenerationStats(snapshot[name]["generation"], self.window)
                              if with_stats and description.get("generative") else None)
                grouped.setdefault(description["family"], []).append(
                    RemoteModel(description, self.models[name], stats, generation))
        return grouped

    @api.get("/api/live")
    async def live_report(self) -> dict[str, Any]:
        families = await self.families(with_stats=True)
        report = [compare.live_family(models) for _, models in sorted(families.items())]
        return {"window": self.window, "families": report, "comparison_running": self.running,
                "comparisons": compare.comparison_index(self.reports)}

    @api.post("/api/compare")
    async def run_compare(self, request: Request) -> JSONResponse:
        """The controlled comparison: each variant's deployment timed in turn, interleaved."""
        try:
            body = await request.json()
            family, dims = str(body["family"]), {str(k): int(v) for k, v in (body.get("dims") or {}).items()}
            rounds, warmup = int(body.get("rounds", 20)), int(body.get("warmup", 3))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            return error(400, f"invalid comparison request ({type(err).__name__}: {err}); send "
                              '{"family": ..., "dims": {...}, "rounds": N, "warmup": N}')
        if not 1 <= rounds <= self.max_rounds or warmup < 0:
            return error(400, f"rounds must be 1..{self.max_rounds} and warmup at least 0")
        models = (await self.families(with_stats=False)).get(family, [])
        if len(models) < 2:
            return error(404 if not models else 503, f"family {family!r} has {len(models)} ready variant(s); "
                                                     "a comparison needs two")
        if self.compare_lock.locked():
            return error(409, "a comparison is already running; retry when it ends")
        async with self.compare_lock:
            self.running = family
            try:
                report = await self.comparison(models, dims, rounds, warmup)
            except Exception as err:  # a replica refused the dims (its BadRequest) or died
                cause = getattr(err, "cause", None) or err
                return error(getattr(cause, "status", 500), f"comparison failed: {cause}")
            finally:
                self.running = None
        self.reports[family] = report
        return JSONResponse(report)

    async def comparison(self, models: list[RemoteModel], dims: dict[str, int], rounds: int,
                         warmup: int) -> dict[str, Any]:
        from dyt_deploy.bench.stats import interleaved_schedule

        for model in models:
            for _ in range(warmup):
                await model.timed(dims)
        by_name = {m.name: m for m in models}
        timings: dict[str, list[float]] = {m.name: [] for m in models}
        for name in interleaved_schedule(list(by_name), rounds):
            timings[name].append(await by_name[name].timed(dims))
        return compare.comparison_report(models, timings, dims, rounds, warmup)  # type: ignore[arg-type]

    @api.get("/api/compare/{family}")
    async def last_compare(self, family: str) -> JSONResponse:
        if family not in self.reports:
            return error(404, f"no comparison of family {family!r} has run yet; POST /api/compare")
        return JSONResponse(self.reports[family])


# The ingress is made when the module is imported, in the driver and in each replica alike: Serve
# binds ``self`` of the routes by patching these functions, which travel to replicas by reference.
RouterIngress = serve.ingress(api)(Router) if serve is not None else None


def deployment_options(num_replicas: int | None = 1, autoscaling: dict[str, Any] | None = None,
                       num_cpus: float = 1.0, num_gpus: float = 0.0,
                       max_ongoing_requests: int = 16) -> dict[str, Any]:
    """Serve options of each model deployment: ``num_replicas`` fixed, or ``autoscaling`` (Serve's
    autoscaling_config: ``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ...) when
    given; CPUs and GPUs reserved per replica (Ray's logical resources)."""
    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
                               "max_ongoing_requests": max_ongoing_requests}
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas
    return options


def build_app(repository: str | Path, settings: Settings | None = None, models: list[str] | None = None,
              num_replicas: int = 1, autoscaling: dict[str, Any] | None = None, num_cpus: float = 1.0,
              num_gpus: float = 0.0, max_ongoing_requests: int = 16, router_cpus: float = 0.1) -> Any:
    """The Serve application over ``repository``: the router, one deployment per model (every model
    folder, or those named in ``models``) with the given scaling, and the stats deployment.

    ``settings`` are those of dyt-serve (threads, batching, limits...) and apply in each replica;
    default ``Settings()``. Pass the result to ``serve.run(app, route_prefix="/")``.
    """
    serve_module = require_ray()
    repository = Path(repository).resolve()
    settings = (settings or Settings()).model_copy(update={"repository": str(repository)})
    names = models or [f.name for f in model_folders(repository)]
    unknown = sorted(set(names) - {f.name for f in model_folders(repository)})
    if unknown or not names:
        raise DytDeployError(f"no model folder {', '.join(unknown) or ''} in {repository}; "
                             "export one with dyt-export --repository")
    replica = serve_module.deployment(ModelReplica)
    stats = serve_module.deployment(StatsCollector, name="stats", num_replicas=1, max_ongoing_requests=ROUTER_ONGOING,
                                    ray_actor_options={"num_cpus": 0}).bind(settings.stats_window)
    options = deployment_options(num_replicas, autoscaling, num_cpus, num_gpus, max_ongoing_requests)
    handles = {name: replica.options(name=f"model-{name}", **options).bind(
        str(repository), name, settings.to_json(), stats) for name in names}
    # the router and the stats deployment only pass requests on: never the bound (Serve's default is 5)
    router = serve_module.deployment(RouterIngress, name="router", max_ongoing_requests=ROUTER_ONGOING,
                                     ray_actor_options={"num_cpus": router_cpus})
    return router.bind(handles, stats, settings.stats_window, settings.compare_max_rounds, settings.api_key,
                       settings.public_metrics)


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run service.engines.ray:app_builder repository=... num_replicas=2`` and the
    ``import_path`` of ``serve deploy`` config files: ``args`` are :func:`build_app`'s keywords
    (strings from the command line are converted); ``threads`` sets the runners' threads."""
    keywords = dict(args)
    threads = int(keywords.pop("threads", 0))
    for key in ("num_replicas", "max_ongoing_requests"):
        if key in keywords:
            keywords[key] = int(keywords[key])
    for key in ("num_cpus", "num_gpus", "router_cpus"):
        if key in keywords:
            keywords[key] = float(keywords[key])
    if isinstance(keywords.get("models"), str):
        keywords["models"] = keywords["models"].split(",")
    return build_app(settings=Settings(threads=threads), **keywords)


def run(app: Any, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
        num_cpus: float | None = None) -> None:
    """Start (or join, with ``address``) Ray, start Serve's HTTP proxy on ``host:port`` and run
    ``app`` until interrupted (Ctrl-C or SIGTERM; then Serve and Ray are shut down). What
    ``dyt-serve --engine ray`` does."""
    import ray

    serve_module = require_ray()
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    serve_module.start(http_options={"host": host, "port": port})
    signal.signal(signal.SIGTERM, _interrupt)  # Kubernetes and process managers stop with SIGTERM
    try:
        serve_module.run(app, name="dyt", route_prefix="/")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve_module.shutdown()
        ray.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
