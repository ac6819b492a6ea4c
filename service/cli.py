"""``dyt-serve``: serve a model repository over the Open Inference Protocol v2.

    dyt-serve --repository repo --host 127.0.0.1 --port 8000 [--workers N]

With ``--workers N`` uvicorn runs N processes, each loading every model; statistics, /metrics
and the live comparison are then per process (the one that answers).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dyt_deploy.errors import DytDeployError

from .settings import SETTINGS_ENV, BatchingConfig, Settings

API_KEY_ENV = "DYT_SERVE_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dyt-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder (Triton layout)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000, as Triton)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt"),
                        help="onnxruntime provider for .onnx models")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require this key on inference and comparison routes (default ${API_KEY_ENV})")
    parser.add_argument("--max-body-mb", type=float, default=64, help="request body limit in MiB (413 above)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="requests handled at once (503 above)")
    parser.add_argument("--timeout", type=float, default=60, help="request timeout in seconds (408/504)")
    parser.add_argument("--dynamic-batching", action="append", default=[], metavar="MODEL",
                        help="batch MODEL's requests dynamically ('all' for every model); repeatable")
    parser.add_argument("--max-batch-size", type=int, default=8, help="dynamic batching: items per batch")
    parser.add_argument("--max-queue-delay-us", type=int, default=1000, help="dynamic batching: wait for more")
    parser.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf in float inputs")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings of the parsed command line (checks the repository folder exists)."""
    if not args.repository.is_dir():
        raise DytDeployError(f"--repository {args.repository}: no such folder")
    if args.workers < 1 or args.max_in_flight < 1 or args.timeout <= 0:
        raise DytDeployError("--workers and --max-in-flight must be >= 1, --timeout > 0")
    batching = BatchingConfig(args.max_batch_size, args.max_queue_delay_us)
    return Settings(
        repository=str(args.repository.resolve()), provider=args.provider, threads=args.threads,
        api_key=args.api_key or None, max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_in_flight=args.max_in_flight, request_timeout_s=args.timeout, allow_nonfinite=args.allow_nonfinite,
        batching={("*" if name == "all" else name): batching for name in args.dynamic_batching},
    )


def serve(settings: Settings, host: str, port: int, workers: int, log_level: str) -> None:
    """Run uvicorn: the app itself with one worker, an app factory per process with several."""
    import uvicorn

    from .app import create_app
    if workers == 1:
        uvicorn.run(create_app(settings=settings), host=host, port=port, log_level=log_level)
        return
    os.environ[SETTINGS_ENV] = settings.to_json()
    uvicorn.run("service.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dyt-serve``; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        serve(settings, args.host, args.port, args.workers, args.log_level)
    except DytDeployError as err:
        print(f"dyt-serve: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
