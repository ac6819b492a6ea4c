"""The dyt-deploy inference service: one FastAPI app (Open Inference Protocol v2, Triton's generate
extension, the DyT-vs-LayerNorm dashboard and comparison API, Prometheus /metrics) served by two
engines: uvicorn (``dyt-serve``) and Ray Serve (``dyt-serve --engine ray``).

``create_app(repository, settings)`` (service.http.app) makes the app over a model repository;
``dyt-serve`` (service.cli:main, also ``dyt serve``) runs it.

Subpackages, each importing only those above it in this list:

* ``service.errors``, ``service.settings``: the errors every layer raises; the settings (DYT_*).
* ``service.protocol``: wire formats, pure (OIP codec, schemas, generate fields).
* ``service.telemetry``: statistics, generation statistics, Prometheus metrics, comparisons.
* ``service.models``: the registry, served and generative models, workers, batching.
* ``service.http``: the app, routes, middleware, API key, state.
* ``service.engines``: uvicorn and Ray Serve.
* ``service.cli``, ``service.demo``: the command line and the demo's server side.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    """``service.create_app`` without importing the app (FastAPI, the models) with the package."""
    if name == "create_app":
        from .http.app import create_app

        return create_app
    raise AttributeError(f"module 'service' has no attribute {name!r}")
