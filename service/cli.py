"""``dyt-serve``: serve a model repository over the Open Inference Protocol v2.

    dyt-serve --repository repo --host 127.0.0.1 --port 8000 [--workers N]
    dyt-serve --engine ray --repository repo [--replicas N | --min-replicas A --max-replicas B]

The flags given win; every setting not given on the command line comes from its ``DYT_*``
environment variable when set (see service.settings), else its default. With ``--workers N``
uvicorn runs N processes, each loading every model; they share their statistics (a SQLite file)
and Prometheus values (prometheus_client's multiprocess mode) in one folder, so /v2/models/stats,
/metrics and the live comparison cover every worker. ``--engine ray`` runs the same app on Ray
Serve instead (service.engines.ray): one deployment per model, each with its replicas.

:func:`serve_command` is the Typer command (``dyt serve`` mounts it); :func:`main` is the
``dyt-serve`` console script.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import typer

from dyt_deploy.cli_common import flag_of, new_app, user_errors
from dyt_deploy.errors import DytDeployError, OptionError

from .settings import API_KEY_ENV, ENV_PREFIX, SETTINGS_ENV, Settings
from .telemetry.metrics import MULTIPROC_ENV
from .telemetry.stats import STATS_DIR_ENV, STATS_FILE, share_models, shared_store_from_environment

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
Provider = Literal["cpu", "cuda", "tensorrt"]
Backend = Literal["onnxruntime", "openvino"]
Engine = Literal["uvicorn", "ray"]


@user_errors
def serve_command(
    ctx: typer.Context,
    repository: Annotated[Path, typer.Option(help="model repository folder (Triton layout)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (8000, as Triton)")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    provider: Annotated[Provider, typer.Option(help="onnxruntime provider for .onnx models")] = "cpu",
    backend: Annotated[Backend, typer.Option(help=(
        "what runs .onnx models: onnxruntime (on --provider) or openvino (CPU); OpenVINO folders "
        "(1/model.xml) always run on OpenVINO"))] = "onnxruntime",
    threads: Annotated[int, typer.Option(help="onnxruntime / OpenVINO threads per model (0: one per core)")] = 0,
    api_key: Annotated[str | None, typer.Option(envvar=API_KEY_ENV, show_envvar=True, help=(
        "require this key on every route but /v2/health/live and /v2/health/ready"))] = None,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help=(
        "with --api-key, leave /metrics open to scrapers"))] = False,
    max_body_mb: Annotated[float, typer.Option(help="request body limit in MiB (413 above)")] = 64,
    max_in_flight: Annotated[int, typer.Option(help="requests handled at once, bodies complete (503 above)")] = 64,
    max_inflight_bytes: Annotated[int, typer.Option(help=(
        "body bytes of all requests in flight (503 above; a JSON inference body counts 16x)"))] = 512 << 20,
    max_json_mb: Annotated[float, typer.Option(help=(
        "memory budget of an all-JSON inference body in MiB: its limit is the model's largest valid request, "
        "at most this (413 above)"))] = 64,
    body_timeout: Annotated[float, typer.Option(help="seconds a request body may take to arrive (408)")] = 10,
    min_body_rate: Annotated[int, typer.Option(help=(
        "bytes/s a request body must arrive at after 2 s (408 below; 0: no minimum)"))] = 32 << 10,
    timeout: Annotated[float, typer.Option(help="request timeout in seconds (504)")] = 60,
    dynamic_batching: Annotated[list[str] | None, typer.Option(metavar="MODEL", help=(
        "batch MODEL's requests dynamically ('all' for every model); repeatable"))] = None,
    max_batch_size: Annotated[int, typer.Option(help="dynamic batching: items per batch")] = 8,
    max_queue_delay_us: Annotated[int, typer.Option(help="dynamic batching: wait for more")] = 1000,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="accept NaN/Inf in float inputs")] = False,
    max_generate_tokens: Annotated[int, typer.Option(help="generate: the most max_tokens a request asks (400)")] = 512,
    max_prompt_tokens: Annotated[int, typer.Option(help="generate: the longest prompt in tokens (400 above)")] = 2048,
    max_generations: Annotated[int, typer.Option(help="generate: generations at once per model (503 above)")] = 4,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn's log level")] = "info",
    engine: Annotated[Engine, typer.Option(help=(
        "uvicorn (this host, --workers processes) or ray (Ray Serve: a deployment per model)"))] = "uvicorn",
    replicas: Annotated[int, typer.Option(help="ray: replicas per model (unless autoscaled)")] = 1,
    min_replicas: Annotated[int | None, typer.Option(help="ray: autoscale each model from this many")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="ray: autoscale each model up to this many")] = None,
    target_ongoing_requests: Annotated[float, typer.Option(help="ray: autoscaling's requests per replica")] = 2,
    replica_cpus: Annotated[float, typer.Option(help="ray: CPUs reserved per replica")] = 1,
    replica_gpus: Annotated[float, typer.Option(help="ray: GPUs per replica (fractions share one)")] = 0,
    ray_address: Annotated[str | None, typer.Option(help="ray: join this cluster (default: a local one)")] = None,
) -> None:
    """Serve a model repository over the Open Inference Protocol v2 (KServe / Triton REST).

    Settings not given as flags come from DYT_* environment variables when set (DYT_THREADS,
    DYT_MAX_IN_FLIGHT, DYT_BATCHING, ...: see service.settings), else the defaults shown.
    """
    given = {name: value for name, value in ctx.params.items() if _given(ctx, name)}
    settings = settings_from_options({**given, "repository": repository, "max_batch_size": max_batch_size,
                                      "max_queue_delay_us": max_queue_delay_us})
    if engine == "ray":
        scaling = RayScaling(replicas, min_replicas, max_replicas, target_ongoing_requests, replica_cpus,
                             replica_gpus)
        serve_on_ray(settings, host, port, scaling, ray_address)
        return
    serve(settings, host, port, log_level)


class RayScaling(NamedTuple):
    """How each model deployment scales on Ray Serve (the --replicas... flags)."""

    replicas: int
    min_replicas: int | None
    max_replicas: int | None
    target_ongoing_requests: float
    cpus: float
    gpus: float

    def autoscaling(self) -> dict[str, Any] | None:
        """Serve's autoscaling_config when --min-replicas or --max-replicas is given, else None."""
        if self.min_replicas is None and self.max_replicas is None:
            return None
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(low, 1)
        if not 0 <= low <= high or high < 1:
            raise DytDeployError(f"--min-replicas {low} / --max-replicas {high}: need 0 <= min <= max and max >= 1")
        return {"min_replicas": low, "max_replicas": high,
                "target_ongoing_requests": self.target_ongoing_requests}


def serve_on_ray(settings: Settings, host: str, port: int, scaling: RayScaling, address: str | None) -> None:
    """Deploy the repository on Ray Serve (a local Ray instance unless ``address``) and serve
    until interrupted."""
    if scaling.replicas < 1:
        raise DytDeployError(f"--replicas {scaling.replicas}: need at least 1")
    autoscaling = scaling.autoscaling()
    from .engines.ray import build_app, run

    app = build_app(settings.repository, settings, num_replicas=scaling.replicas, autoscaling=autoscaling,
                    num_cpus=scaling.cpus, num_gpus=scaling.gpus)
    run(app, settings, host, port, address)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was set on the command line or by its envvar (not a default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def settings_from_options(options: dict[str, Any]) -> Settings:
    """Settings from the command line's options given (keys as serve_command's parameters); those
    not given come from ``DYT_*`` environment variables or the defaults. Checks the repository
    folder exists; invalid values are one error naming each flag."""
    repository = Path(options["repository"])
    if not repository.is_dir():
        raise DytDeployError(f"--repository {repository}: no such folder")
    values: dict[str, Any] = {"repository": str(repository.resolve())}
    for name in ("provider", "backend", "threads", "workers", "max_in_flight", "allow_nonfinite", "public_metrics",
                 "max_inflight_bytes", "max_generate_tokens", "max_prompt_tokens", "max_generations", "min_body_rate"):
        if name in options:
            values[name] = options[name]
    if options.get("api_key"):
        values["api_key"] = options["api_key"]
    if "max_body_mb" in options:
        values["max_body_bytes"] = int(options["max_body_mb"] * (1 << 20))
    if "max_json_mb" in options:
        values["max_json_bytes"] = int(options["max_json_mb"] * (1 << 20))
    if "timeout" in options:
        values["request_timeout_s"] = options["timeout"]
    if "body_timeout" in options:
        values["body_timeout_s"] = options["body_timeout"]
    if options.get("dynamic_batching"):
        batching = {"max_batch_size": options["max_batch_size"], "max_queue_delay_us": options["max_queue_delay_us"]}
        values["batching"] = {("*" if name == "all" else name): batching for name in options["dynamic_batching"]}
    try:
        return Settings(**values)
    except OptionError as err:
        problems = "; ".join(f"{_source(field, values)}: {message}" for field, message in err.problems)
        raise DytDeployError(problems) from None


def _source(field: str, flags: dict[str, Any]) -> str:
    """Where a bad setting came from: its flag (``batching.*.max_batch_size`` -> ``--max-batch-size``)
    when one set it, else its environment variable."""
    top = field.split(".")[0]
    if top not in flags:
        return "$" + (API_KEY_ENV if top == "api_key" else ENV_PREFIX + top.upper())
    return flag_of(field.split(".")[-1] if top == "batching" else top)


def serve(settings: Settings, host: str, port: int, log_level: str) -> None:
    """Run uvicorn: the app itself with one worker, an app factory per process with several (each
    reads the settings back from ``$DYT_SERVE_SETTINGS``)."""
    import uvicorn

    from .engines.uvicorn import make_server
    from .http.app import create_app
    if settings.workers == 1:  # a clean drain after SIGTERM exits 0; malformed HTTP gets a JSON 400
        server = make_server(create_app(settings=settings), host, port, log_level)
        server.run()
        if not server.started:
            raise DytDeployError(f"dyt-serve could not start on {host}:{port} (see the log above)")
        return
    os.environ[SETTINGS_ENV] = settings.to_json()
    folder = shared_folder()
    try:
        uvicorn.run("service.cli:worker_app", factory=True, host=host, port=port, workers=settings.workers,
                    log_level=log_level)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def shared_folder() -> str | None:
    """The folder the worker processes share statistics and Prometheus values in: a new one
    (returned, to remove at exit), or ``$PROMETHEUS_MULTIPROC_DIR`` when set (kept; its Prometheus
    files should be cleared between runs, as prometheus_client asks; an earlier run's statistics
    file is removed here)."""
    given = os.environ.get(MULTIPROC_ENV)
    folder = given or tempfile.mkdtemp(prefix="dyt-serve-")
    for stale in Path(folder).glob(STATS_FILE + "*"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = os.environ[STATS_DIR_ENV] = folder
    return None if given else folder


def worker_app() -> Any:
    """App factory of a ``--workers N`` process: the app of $DYT_SERVE_SETTINGS whose models
    publish their statistics to the shared store (named by the process id)."""
    from .http.app import app_from_environment

    app = app_from_environment()
    state = app.state.service
    store = shared_store_from_environment(state.settings.stats_window)
    if store is not None:
        share_models(state.registry.models, store, f"pid-{os.getpid()}")
    return app


app = new_app(__doc__.split("\n\n")[0])
app.command("serve")(serve_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dyt-serve``: runs the command on ``argv`` (default: sys.argv); returns the
    exit status (user errors print one ``error:`` line and give 2)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="dyt-serve")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
