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
* ``ingress`` (:class:`Ingress`): the app, whose model backend is
  :class:`~service.engines.ray_models.RayModels`: a model registry whose models run their requests
  on the deployments' handles.
  HTTP parsing, validation, limits (body size and read time, in-flight bound, time-outs), the API
  key, errors, headers, statistics, metrics, the dashboard and comparisons are the app's, defined
  once; the ingress records each answer's statistics as dyt-serve does, with the replica that
  answered (``/api/replicas``). Readiness follows the deployments (each model asked every
  ``READY_POLL_S``). One ingress replica: the statistics are its own.
* The HTTP proxy (Ray's own uvicorn): :func:`~service.engines.ray_proxy.proxy_middlewares`,
  installed through Ray's proxy callback, puts the API key in front of Ray's own routes
  (``/-/routes``, ``/-/healthz``), drops the headers with which a client could lift Ray's
  time-outs, and gives the proxy dyt-serve's HTTP parser (malformed requests and oversized heads
  answered in JSON).

Ray is optional (``pip install "dyt-deploy[ray]"``): this module imports without it, and
:func:`build_app` says what to install.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from dyt_deploy.errors import DytDeployError, MissingBackendError

from ..models.generative import is_generative
from ..models.registry import ModelRegistry, model_folders
from ..protocol.generate import GenerateRequest
from ..settings import Settings
from ..telemetry.metrics import ServiceMetrics
from .ray_models import RayModels
from .ray_proxy import ray_environment

try:  # optional: the ray extra
    from ray import serve
except ImportError:  # pragma: no cover - exercised where ray is missing
    serve = None

log = logging.getLogger("dyt_deploy.service")

INGRESS_ONGOING = 4096  # the app bounds requests in flight itself (503 past --max-in-flight)


def require_ray() -> Any:
    """The ``ray.serve`` module (one clear error when Ray is not installed)."""
    if serve is None:
        raise MissingBackendError('Ray Serve is not installed; pip install "dyt-deploy[ray]" (or "ray[serve]")')
    return serve


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

    def state(self) -> dict[str, str]:
        """The model's state and reason (the ingress's readiness poll: :meth:`describe` once, then this)."""
        return {"state": self.model.state, "reason": self.model.reason}

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

