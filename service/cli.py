"""``dyt-serve``: serve a model repository over the Open Inference Protocol v2.

    dyt-serve --repository repo --host 127.0.0.1 --port 8000 [--workers N]

The flags given win; every setting not given on the command line comes from its ``DYT_*``
environment variable when set (see service.settings), else its default. With ``--workers N``
uvicorn runs N processes, each loading every model; statistics, /metrics and the live comparison
are then per process (the one that answers).

:func:`serve_command` is the Typer command (``dyt serve`` mounts it); :func:`main` is the
``dyt-serve`` console script.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from dyt_deploy.cli_common import flag_of, new_app, user_errors
from dyt_deploy.errors import DytDeployError, OptionError

from .settings import API_KEY_ENV, ENV_PREFIX, SETTINGS_ENV, Settings

LogLevel = Literal["critical", "error", "warning", "info", "debug"]
Provider = Literal["cpu", "cuda", "tensorrt"]
Backend = Literal["onnxruntime", "openvino"]


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
        "require this key on inference and comparison routes"))] = None,
    max_body_mb: Annotated[float, typer.Option(help="request body limit in MiB (413 above)")] = 64,
    max_in_flight: Annotated[int, typer.Option(help="requests handled at once (503 above)")] = 64,
    timeout: Annotated[float, typer.Option(help="request timeout in seconds (408/504)")] = 60,
    dynamic_batching: Annotated[list[str] | None, typer.Option(metavar="MODEL", help=(
        "batch MODEL's requests dynamically ('all' for every model); repeatable"))] = None,
    max_batch_size: Annotated[int, typer.Option(help="dynamic batching: items per batch")] = 8,
    max_queue_delay_us: Annotated[int, typer.Option(help="dynamic batching: wait for more")] = 1000,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="accept NaN/Inf in float inputs")] = False,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn's log level")] = "info",
) -> None:
    """Serve a model repository over the Open Inference Protocol v2 (KServe / Triton REST).

    Settings not given as flags come from DYT_* environment variables when set (DYT_THREADS,
    DYT_MAX_IN_FLIGHT, DYT_BATCHING, ...: see service.settings), else the defaults shown.
    """
    given = {name: value for name, value in ctx.params.items() if _given(ctx, name)}
    settings = settings_from_options({**given, "repository": repository, "max_batch_size": max_batch_size,
                                      "max_queue_delay_us": max_queue_delay_us})
    serve(settings, host, port, log_level)


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
    for name in ("provider", "backend", "threads", "workers", "max_in_flight", "allow_nonfinite"):
        if name in options:
            values[name] = options[name]
    if options.get("api_key"):
        values["api_key"] = options["api_key"]
    if "max_body_mb" in options:
        values["max_body_bytes"] = int(options["max_body_mb"] * (1 << 20))
    if "timeout" in options:
        values["request_timeout_s"] = options["timeout"]
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

    from .app import create_app
    if settings.workers == 1:
        uvicorn.run(create_app(settings=settings), host=host, port=port, log_level=log_level)
        return
    os.environ[SETTINGS_ENV] = settings.to_json()
    uvicorn.run("service.app:app_from_environment", factory=True, host=host, port=port, workers=settings.workers,
                log_level=log_level)


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
