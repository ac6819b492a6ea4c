"""The FastAPI app: ``create_app(repository, settings)``.

Models are discovered when the app is made (a missing repository fails at once), then loaded and
warmed in the lifespan, off the event loop; a model that fails to load is reported and the others
serve. The app's shared state is one :class:`~service.http.state.ServiceState` (``app.state.service``),
which routes reach through the ``StateDep`` dependency. Middleware (outermost first): the API key
(before any body is read), the body gate (the whole body read on a deadline, size and bytes in
flight bounded; see service.http.admission), the in-flight bound (requests with a complete body), the
processing timeout, and the inference lane (``POST .../infer`` straight to its handler, see
service.http.oip_routes.InferenceLane). Every error answers ``{"error": "..."}`` (:func:`answer_error`);
under /v1/ (the OpenAI routes) in OpenAI's shape (service.http.openai_errors.OpenAIErrorShape).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import dyt_deploy
from dyt_deploy.errors import DytDeployError

from ..errors import ServiceError
from ..protocol.schemas import add_infer_request_body, add_service_limits, validation_errors_are_400
from ..settings import SETTINGS_ENV, Settings
from .admission import ApiKeyGate, BodyGate
from .dashboard_routes import router as extra_router
from .generate_routes import router as generate_router
from .middleware import InFlightLimit, RequestTimeout
from .oip_routes import InferenceLane
from .oip_routes import router as v2_router
from .openai_errors import OpenAIErrorShape
from .openai_routes import router as openai_router
from .state import ModelsFactory, ServiceState

log = logging.getLogger("dyt_deploy.service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm every model in a worker thread, start the batchers; close them at shutdown."""
    registry = app.state.service.registry
    await registry.load()
    registry.start()
    ready = sum(m.ready for m in registry.models.values())
    log.info("dyt-serve: %d of %d models ready", ready, len(registry.models))
    try:
        yield
    finally:
        await registry.close()


def create_app(repository: str | Path | None = None, settings: Settings | None = None,
               models: ModelsFactory | None = None) -> FastAPI:
    """The service over ``repository`` (overrides ``settings.repository``); ``settings`` default to
    ``Settings()``, which reads ``DYT_*`` environment variables. ``models(settings, metrics)`` makes
    the model backend: by default the repository's models in this process
    (:class:`~service.models.registry.ModelRegistry`); Ray Serve's ingress passes its deployments'
    (``service.engines.ray.RayModels``). Every route, limit, error and header is the same either way."""
    settings = settings or Settings()
    if repository is not None:
        settings = settings.model_copy(update={"repository": str(repository)})
    state = ServiceState.create(settings, models)
    app = FastAPI(title="dyt-deploy inference service", version=dyt_deploy.__version__, lifespan=lifespan,
                  description="Open Inference Protocol v2 (KServe / Triton) with the binary tensor and "
                              "statistics extensions, plus DyT-vs-LayerNorm latency comparison.")
    app.state.service = state
    app.include_router(v2_router)
    app.include_router(generate_router)
    app.include_router(extra_router)
    app.include_router(openai_router)
    add_error_handlers(app)
    app.add_middleware(InferenceLane, on_error=answer_error)
    app.add_middleware(RequestTimeout, timeout_s=settings.request_timeout_s, metrics=state.metrics)
    app.add_middleware(InFlightLimit, max_in_flight=settings.max_in_flight, retry_after_s=settings.retry_after_s,
                       metrics=state.metrics)
    app.add_middleware(BodyGate, settings=settings, metrics=state.metrics,
                       json_limit_of=state.registry.json_limit)
    app.add_middleware(ApiKeyGate, api_key=settings.api_key, public_metrics=settings.public_metrics,
                       metrics=state.metrics)
    app.add_middleware(OpenAIErrorShape)  # outermost: /v1/ refusals in OpenAI's error shape
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
        document = validation_errors_are_400(add_infer_request_body(document))
        app.openapi_schema = add_service_limits(document, documented_limits(app.state.service.settings))
    return app.openapi_schema


def documented_limits(settings: Settings) -> dict[str, dict[tuple[str, ...], dict[str, Any]]]:
    """The settings that bound request fields, as the OpenAPI document shows them (the routes check
    the same settings): per path suffix, {property path ("*": a map's values): JSON Schema}."""
    max_tokens = {("parameters", "max_tokens"): {"maximum": settings.max_generate_tokens}}
    return {
        "/api/compare": {("rounds",): {"maximum": settings.compare_max_rounds},
                         ("dims",): {"properties": {"batch": {"type": "integer", "minimum": 1,
                                                              "maximum": settings.compare_max_batch}}}},
        "/generate": max_tokens,
        "/generate_stream": max_tokens,
    }


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def answer_error(request: Request, err: Exception) -> JSONResponse:
    """The answer to any error of a request: ``{"error": "..."}``, the protocol's shape, which
    tritonclient reads. The app's exception handler for every kind, and the inference lane's."""
    if isinstance(err, ServiceError):
        return error_response(err.status, str(err), err.headers)
    if isinstance(err, DytDeployError):
        return error_response(400, str(err))
    if isinstance(err, RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return error_response(400, f"invalid request: {problems}")
    if isinstance(err, StarletteHTTPException):
        return error_response(err.status_code, str(err.detail), getattr(err, "headers", None))
    if isinstance(err, ClientDisconnect):
        log.info("client %s disconnected before its request was read (%s %s)",
                 request.client.host if request.client else "unknown", request.method, request.url.path)
        return error_response(400, "client disconnected")  # nobody is left to read it
    log.exception("internal error", exc_info=err)
    return error_response(500, f"internal server error: {type(err).__name__}")


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": "..."}`` (:func:`answer_error`)."""
    for kind in (ServiceError, DytDeployError, RequestValidationError, StarletteHTTPException, ClientDisconnect,
                 Exception):
        app.add_exception_handler(kind, answer_error)


def app_from_environment() -> FastAPI:
    """App factory for ``uvicorn --factory`` worker processes: settings from $DYT_SERVE_SETTINGS."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise DytDeployError(f"${SETTINGS_ENV} is not set; start the service with dyt-serve")
    return create_app(settings=Settings.from_json(text))
