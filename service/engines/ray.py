"""The service on Ray Serve: the very app ``dyt-serve`` runs (:func:`service.http.app.create_app`)
as the ingress, its models one deployment each, with their own replicas.

    serve run service.engines.ray:app_builder repository=/models num_replicas=2
    dyt-serve --engine ray --repository /models --replicas 2

Only what is Ray's lives here:

* ``model-<name>`` (:class:`ModelReplica`): a replica holds that one model, loaded in its
  constructor (a model that fails to load fails the replica, which Serve reports and retries). It
  answers decoded tensors (:meth:`ModelReplica.infer`, through its batcher and worker as in
  dyt-serve), generations as a stream of pieces (:meth:`ModelReplica.generate`), timed calls for
  comparisons and its description (metadata, configuration, state). ``check_health`` fails when
  the model is not ready.
* ``ingress`` (:class:`Ingress`): the app, whose model backend is :class:`RayModels`: a model
  registry whose models (:class:`RemoteModel`) run their requests on the deployments' handles.
  HTTP parsing, validation, limits (body size and read time, in-flight bound, time-outs), the API
  key, errors, headers, statistics, metrics, the dashboard and comparisons are the app's, defined
  once; the ingress records each answer's statistics as dyt-serve does, with the replica that
  answered (``/api/replicas``). Readiness follows the deployments (each model asked every
  ``READY_POLL_S``). One ingress replica: the statistics are its own.
* The HTTP proxy (Ray's own uvicorn): :func:`proxy_middlewares`, installed through Ray's proxy
  callback, puts the API key in front of Ray's own routes (``/-/routes``, ``/-/healthz``), drops
  the headers with which a client could lift Ray's time-outs, and gives the proxy dyt-serve's HTTP
  parser (malformed requests and oversized heads answered in JSON).

Ray is optional (``pip install "dyt-deploy[ray]"``): this module imports without it, and
:func:`build_app` says what to install.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from dyt_deploy.errors import DytDeployError, MissingBackendError

from ..errors import ServiceError, Unavailable
from ..models.generative import GenerationTrack, GenerativeModel, decoder_spec_of, is_generative
from ..models.registry import ModelRegistry, model_folders
from ..models.served import UNAVAILABLE, ServedModel
from ..protocol.generate import GenerateRequest, GenerationFailed
from ..protocol.oip import Signature
from ..settings import SETTINGS_ENV, Settings
from ..telemetry.metrics import ServiceMetrics

try:  # optional: the ray extra
    from ray import serve
except ImportError:  # pragma: no cover - exercised where ray is missing
    serve = None

log = logging.getLogger("dyt_deploy.service")

READY_TIMEOUT_S = 5.0  # a model whose replicas do not answer within this is not ready
READY_POLL_S = 2.0  # how often the ingress asks each model deployment
FIRST_LOAD_TIMEOUT_S = 600.0  # how long the ingress waits for a model's first answer when it starts
INGRESS_ONGOING = 4096  # the app bounds requests in flight itself (503 past --max-in-flight)
RETRY_AFTER_S = 1
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
# a client could lift Ray's request time-out or its cancellation on disconnect with these
EDGE_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})


def require_ray() -> Any:
    """The ``ray.serve`` module (one clear error when Ray is not installed)."""
    if serve is None:
        raise MissingBackendError('Ray Serve is not installed; pip install "dyt-deploy[ray]" (or "ray[serve]")')
    return serve


def remote_error(name: str, err: BaseException) -> Exception:
    """What the client is told when a call to model ``name``'s deployment fails: the service's
    own error raised in the replica (a 400, a 503...) as it is; a replica that died, or none
    running, or all busy: 503 with Retry-After (the client may retry); anything else as raised
    (the app answers it as for dyt-serve)."""
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, ServiceError | DytDeployError | GenerationFailed):
        return cause
    kind = type(cause).__name__
    if kind in {"RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError",
                "BackPressureError", "WorkerCrashedError"} or isinstance(cause, asyncio.TimeoutError):
        return Unavailable(f"model {name!r} has no replica to answer ({kind}); retry", RETRY_AFTER_S)
    return cause if isinstance(cause, Exception) else RuntimeError(str(cause))


# ---------------------------------------------------------------------------------------------
# The model deployments


class ModelReplica:
    """One model's replica: ``model`` of ``repository`` loaded here, with the settings of dyt-serve
    (threads, batching, limits)."""

    def __init__(self, repository: str, model: str, settings_json: str) -> None:
        settings = Settings.from_json(settings_json).model_copy(update={"repository": repository})
        registry = ModelRegistry(settings, ServiceMetrics())
        registry.models = {model: registry.get(model)}
        registry.load_all()
        if not registry.ready:
            raise DytDeployError(f"model {model} did not load: {registry.not_ready()}")
        self.registry, self.model, self.started = registry, registry.models[model], False
        self.model.source = require_ray().get_replica_context().replica_id.unique_id

    def start(self) -> None:
        if not self.started:  # the batcher needs the replica's running event loop
            self.registry.start()
            self.started = True

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to know of the model: its dyt.json, configuration, version,
        batching, runner, state and this replica's id."""
        m = self.model
        return {"manifest": m.manifest, "config": m.config, "version": m.version, "batching": m.batching,
                "runtime": m.runtime, "state": m.state, "reason": m.reason, "replica": m.source}

    async def infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float, str]:
        """One request's decoded inputs through the model (its batcher, its worker): outputs,
        queue and compute seconds, and who answered."""
        self.start()
        outputs, queue_s, infer_s = await self.model.infer(feed)
        return outputs, queue_s, infer_s, self.model.source

    async def generate(self, request: GenerateRequest) -> AsyncIterator[tuple]:
        """A generation, streamed (``handle.options(stream=True)``): ``("started", prompt tokens,
        replica)``, then ``("piece", index, text)`` per token, then ``("end", held-back text,
        finish reason)``. The limits are checked before anything is yielded (a 400 or 503 reaches
        the ingress as the stream's first item); when the ingress cancels the call (its client
        left), the generation stops after the step under way."""
        self.start()
        run = await self.model.start(request)
        try:
            yield "started", run.record.prompt_tokens, self.model.source
            async for index, piece in run.pieces():
                yield "piece", index, piece
            yield "end", run.rest(), run.finish_reason
        finally:
            run.close()

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        """Compute time of one call (controlled comparisons)."""
        self.start()
        return await self.model.timed(feed)

    async def run_aside(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """One call outside the traffic statistics (the dashboard's labelled examples)."""
        self.start()
        return await self.model.run_aside(feed)

    def check_health(self) -> None:
        """Serve's health check: a replica whose model is not ready is restarted."""
        if not self.model.ready:
            raise RuntimeError(f"model {self.model.name} is not ready: {self.model.reason}")


# ---------------------------------------------------------------------------------------------
# The models as the ingress's app sees them


class RemoteModel(ServedModel):
    """A model deployment, as the app serves any model: requests are decoded, checked, timed and
    answered here by :class:`ServedModel`'s own code; only the run itself goes to a replica."""

    def __init__(self, name: str, handle: Any, settings: Settings, metrics: ServiceMetrics) -> None:
        super().__init__(settings.repository_path / name, settings, metrics)
        self.deployment = handle  # (ServedModel.handle is the request path)
        self.answers: dict[str, int] = {}  # requests answered, by replica
        self.described = False

    def load(self) -> None:  # pragma: no cover - the registry's load() describes remote models
        raise TypeError("a remote model is described by RayModels.load, not loaded")

    async def describe(self, timeout_s: float) -> None:
        """Ask a replica what it serves; READY when one answers, else UNAVAILABLE with the reason
        (a model described once keeps its description)."""
        try:
            found = await asyncio.wait_for(self.deployment.describe.remote(), timeout_s)
        except Exception as err:
            self.state = UNAVAILABLE
            self.reason = f"no replica of model {self.name!r} answered within {timeout_s:g} s ({type(err).__name__})"
            return
        if not self.described:
            self._take(found)
            self.described = True
        self.state, self.reason = found["state"], found["reason"]

    def _take(self, found: dict[str, Any]) -> None:
        self.manifest, self.config, self.version = found["manifest"], found["config"], found["version"]
        self.batching, self.runtime = found["batching"], found["runtime"]
        self.signature = Signature.from_manifest(self.manifest, self.config.max_batch_size)

    def start_batcher(self) -> None:
        """Nothing to start: requests are batched in the replicas."""

    async def close(self) -> None:
        """Nothing to close: the replicas hold the runners."""

    def answered(self, source: str) -> None:
        self.answers[source] = self.answers.get(source, 0) + 1

    def answered_by(self) -> dict[str, int]:
        return dict(self.answers)

    async def _infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        try:
            outputs, queue_s, infer_s, source = await self.deployment.infer.remote(feed)
        except Exception as err:
            raise remote_error(self.name, err) from None
        self.answered(source)
        return outputs, queue_s, infer_s

    async def timed(self, feed: dict[str, np.ndarray]) -> float:
        try:
            return await self.deployment.timed.remote(feed)
        except Exception as err:
            raise remote_error(self.name, err) from None

    async def run_aside(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        self.require_ready()
        try:
            return await self.deployment.run_aside.remote(feed)
        except Exception as err:
            raise remote_error(self.name, err) from None


class RemoteGenerativeModel(RemoteModel, GenerativeModel):
    """A text-generation deployment: generations run in a replica and stream back
    (:class:`RemoteGenerationRun`); admission (``--max-generations``), statistics and metrics are
    the ingress's, as dyt-serve's are its own."""

    def _take(self, found: dict[str, Any]) -> None:
        super()._take(found)
        self.spec = decoder_spec_of(self.manifest)  # a comparison's example feeds

    async def start(self, request: GenerateRequest) -> RemoteGenerationRun:
        self.require_ready()
        if self.running >= self.settings.max_generations:
            raise Unavailable(f"model {self.name!r} is generating for {self.running} requests (limit "
                              f"{self.settings.max_generations}, --max-generations); retry later",
                              self.settings.retry_after_s)
        call = self.deployment.options(stream=True).generate.remote(request)
        try:
            _, prompt_tokens, source = await call.__anext__()
        except Exception as err:  # the request's limits (400), a busy replica (503), none running
            call.cancel()
            raise remote_error(self.name, err) from None
        return RemoteGenerationRun(self, call, prompt_tokens, source)


class RemoteGenerationRun(GenerationTrack):
    """A generation streamed from a replica: its pieces as they come, timed here; :meth:`stop`
    cancels the replica's call (its generation stops after the step under way)."""

    def __init__(self, model: RemoteGenerativeModel, call: Any, prompt_tokens: int, source: str) -> None:
        super().__init__(model, prompt_tokens)
        self.call, self.source, self.held = call, source, ""

    async def pieces(self) -> AsyncIterator[tuple[int, str]]:
        try:
            while self.finish_reason is None:
                try:
                    item = await self.call.__anext__()
                except StopAsyncIteration:
                    item = ("lost",)
                except Exception as err:
                    self.failed = True
                    raise GenerationFailed(f"model {self.model.name!r} failed while generating: "
                                           f"{remote_error(self.model.name, err)}") from None
                if item[0] == "piece":
                    self._tick()
                    yield item[1], item[2]
                elif item[0] == "end":
                    self.held, self.finish_reason = item[1], item[2]
                else:
                    self.failed = True
                    raise GenerationFailed(f"model {self.model.name!r}: its replica ended the stream early")
        finally:
            self.close()

    def rest(self) -> str:
        return self.held

    def stop(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
            self.call.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop()
        if self.finish_reason in ("stop", "length"):
            self.model.answered(self.source)
        self._finish()


class RayModels(ModelRegistry):
    """The app's model backend on Ray Serve: a :class:`RemoteModel` per model deployment."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, handles: dict[str, Any],
                 generative: set[str]) -> None:
        self.settings = settings
        self.models = {name: (RemoteGenerativeModel if name in generative else RemoteModel)(
            name, handle, settings, metrics) for name, handle in handles.items()}
        self.watching: asyncio.Task | None = None

    async def load(self) -> None:
        """Wait for each model's first answer (the deployments start beside the ingress), then
        follow their readiness in the background."""
        await asyncio.gather(*(m.describe(FIRST_LOAD_TIMEOUT_S) for m in self.models.values()))
        self.watching = asyncio.get_running_loop().create_task(self.watch())

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(READY_POLL_S)
            await asyncio.gather(*(m.describe(READY_TIMEOUT_S) for m in self.models.values()))

    def load_all(self) -> None:  # pragma: no cover - see load()
        raise TypeError("RayModels are loaded with await load()")

    async def close(self) -> None:
        if self.watching is not None:
            self.watching.cancel()


class Ingress:
    """The ingress deployment: the service's app over :class:`RayModels` (built in the replica,
    after the deployment handles have reached it)."""

    def __init__(self, handles: dict[str, Any], generative: list[str], settings_json: str) -> None:
        self.handles, self.generative = handles, set(generative)
        self.settings = Settings.from_json(settings_json)

    def __serve_build_asgi_app__(self) -> Any:
        from ..http.app import create_app

        return create_app(settings=self.settings, models=lambda settings, metrics: RayModels(
            settings, metrics, self.handles, self.generative))


# ---------------------------------------------------------------------------------------------
# Ray's HTTP proxy


class EdgeHeaders:
    """Drops the request headers with which a client could lift Ray's request time-out or its
    cancellation when the client leaves (``x-request-timeout-seconds``,
    ``x-request-disconnect-disabled``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(k in EDGE_HEADERS for k, _ in scope["headers"]):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k not in EDGE_HEADERS]}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Any]:
    """Ray's proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, run in the proxy
    process before it serves): the API key of ``$DYT_SERVE_SETTINGS`` checked before Ray's own
    routes as before the app's (health probes open), the edge headers dropped, and dyt-serve's HTTP
    parser (JSON 400 for malformed HTTP, 431 for heads over 64 KiB) for the proxy's server."""
    import uvicorn.config
    from starlette.middleware import Middleware

    from ..http.admission import ApiKeyGate
    from . import uvicorn as engine

    if engine.HttpToolsProtocol is not None:  # the proxy's server takes uvicorn's "auto" protocol
        uvicorn.config.HTTP_PROTOCOLS["auto"] = "service.engines.uvicorn:BoundedHttpToolsProtocol"
    text = os.environ.get(SETTINGS_ENV)
    settings = Settings.from_json(text) if text else Settings()
    return [Middleware(ApiKeyGate, api_key=settings.api_key, public_metrics=settings.public_metrics),
            Middleware(EdgeHeaders)]


def ray_environment(settings: Settings) -> dict[str, str]:
    """The environment Ray's processes need (set before Ray starts: its processes inherit it): the
    proxy callback and the settings it reads."""
    return {PROXY_CALLBACK_ENV: "service.engines.ray:proxy_middlewares", SETTINGS_ENV: settings.to_json()}


# ---------------------------------------------------------------------------------------------
# The application


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
              num_gpus: float = 0.0, max_ongoing_requests: int = 16, ingress_cpus: float = 0.1) -> Any:
    """The Serve application over ``repository``: the ingress and one deployment per model (every
    model folder, or those named in ``models``) with the given scaling.

    ``settings`` are those of dyt-serve (threads, batching, limits, API key...): the ingress's app
    and each replica apply them; default ``Settings()``. Pass the result to
    ``serve.run(app, route_prefix="/")`` in a Ray started with :func:`ray_environment` (as
    :func:`run` does), so that the proxy checks the API key too.
    """
    serve_module = require_ray()
    repository = Path(repository).resolve()
    settings = (settings or Settings()).model_copy(update={"repository": str(repository)})
    folders = {f.name: f for f in model_folders(repository)}
    names = models or list(folders)
    unknown = sorted(set(names) - set(folders))
    if unknown or not names:
        raise DytDeployError(f"no model folder {', '.join(unknown) or ''} in {repository}; "
                             "export one with dyt-export --repository")
    replica = serve_module.deployment(ModelReplica)
    options = deployment_options(num_replicas, autoscaling, num_cpus, num_gpus, max_ongoing_requests)
    handles = {name: replica.options(name=f"model-{name}", **options).bind(str(repository), name, settings.to_json())
               for name in names}
    generative = [name for name in names if is_generative(folders[name])]
    ingress = serve_module.deployment(serve_module.ingress()(Ingress), name="ingress",
                                      max_ongoing_requests=INGRESS_ONGOING,
                                      ray_actor_options={"num_cpus": ingress_cpus})
    return ingress.bind(handles, generative, settings.to_json())


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run service.engines.ray:app_builder repository=... num_replicas=2`` and the
    ``import_path`` of ``serve deploy`` config files: ``args`` are :func:`build_app`'s keywords
    (strings from the command line are converted); ``threads`` sets the runners' threads."""
    keywords = dict(args)
    threads = int(keywords.pop("threads", 0))
    for key in ("num_replicas", "max_ongoing_requests"):
        if key in keywords:
            keywords[key] = int(keywords[key])
    for key in ("num_cpus", "num_gpus", "ingress_cpus"):
        if key in keywords:
            keywords[key] = float(keywords[key])
    if isinstance(keywords.get("models"), str):
        keywords["models"] = keywords["models"].split(",")
    return build_app(settings=Settings(threads=threads), **keywords)


def start_ray(settings: Settings, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
              num_cpus: float | None = None) -> None:
    """Start (or join, with ``address``) Ray with :func:`ray_environment`, and Serve's HTTP proxy
    on ``host:port``."""
    import ray

    serve_module = require_ray()
    os.environ.update(ray_environment(settings))
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    serve_module.start(http_options={"host": host, "port": port})


def run(app: Any, settings: Settings, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
        num_cpus: float | None = None) -> None:
    """Start Ray and Serve (:func:`start_ray`) and run ``app`` until interrupted (Ctrl-C or
    SIGTERM; then Serve and Ray are shut down). What ``dyt-serve --engine ray`` does."""
    import ray

    serve_module = require_ray()
    start_ray(settings, host, port, address, num_cpus)
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

