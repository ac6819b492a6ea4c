"""The Open Inference Protocol v2 routes, with Triton's binary tensor, statistics, model
configuration and repository-index extensions. Every model route also answers under
``/v2/models/{name}/versions/{version}/...``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import dyt_deploy

from ..protocol import oip
from ..protocol.schemas import (
    ERROR_RESPONSES,
    InferenceResponse,
    LiveBody,
    ModelMetadata,
    ModelReadyBody,
    ReadyBody,
    ServerMetadata,
)
from .admission import INFER_PATH, request_body
from .auth import require_api_key
from .state import StateDep, get_state_of

EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_configuration", "model_repository_index",
              "generate"]

router = APIRouter()


def without_version(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` with its ``model_version`` parameter hidden (for the route without /versions/)."""
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    async def unversioned(**kwargs: Any) -> Any:
        return await endpoint(**kwargs)

    unversioned.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "model_version"])
    return unversioned


def model_route(path: str, endpoint: Callable[..., Any], method: str = "GET", on: APIRouter | None = None,
                **kwargs: Any) -> None:
    """Register ``endpoint`` under /v2/models/{model_name}{path} and its /versions/{model_version} twin
    (on this module's router, or ``on``)."""
    name, target = endpoint.__name__, on or router
    target.add_api_route("/v2/models/{model_name}" + path, without_version(endpoint), methods=[method], name=name,
                         operation_id=name, responses=ERROR_RESPONSES, **kwargs)
    target.add_api_route("/v2/models/{model_name}/versions/{model_version}" + path, endpoint, methods=[method],
                         name=f"{name}_version", operation_id=f"{name}_version", responses=ERROR_RESPONSES, **kwargs)


@router.get("/v2", response_model=ServerMetadata, tags=["health"])
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it implements."""
    return {"name": "dyt-deploy", "version": dyt_deploy.__version__, "extensions": EXTENSIONS}


@router.get("/v2/health/live", response_model=LiveBody, tags=["health"])
async def server_live() -> dict[str, bool]:
    """Live: the process answers HTTP (never depends on the models)."""
    return {"live": True}


@router.get("/v2/health/ready", response_model=ReadyBody, tags=["health"], responses={503: {"model": ReadyBody}})
async def server_ready(state: StateDep) -> JSONResponse:
    """Ready: every model of the repository is loaded and warmed (503 otherwise, with the reasons)."""
    if state.registry.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": f"models not ready: {state.registry.not_ready()}"}, status_code=503)


@router.get("/v2/models/stats", tags=["statistics"])
async def all_model_stats(state: StateDep) -> dict[str, Any]:
    """Statistics of every model (Triton's statistics extension)."""
    return {"model_stats": [m.stats.as_triton(m.name, m.version) for m in state.registry.models.values()]}


@router.post("/v2/repository/index", tags=["repository"])
async def repository_index(request: Request, state: StateDep) -> list[dict[str, Any]]:
    """Every model folder with its state (READY, UNAVAILABLE) and, when it failed, the reason.
    Body (optional): ``{"ready": true}`` to list only ready models."""
    body = await request.body()
    only_ready = bool(oip.parse_json_header(body).get("ready", False)) if body.strip() else False
    return [m.index_entry() for m in state.registry.models.values() if m.ready or not only_ready]


async def model_metadata(model_name: str, state: StateDep, model_version: str | None = None) -> dict[str, Any]:
    """Model metadata: inputs and outputs with datatypes and shapes (-1 = dynamic)."""
    return state.registry.get(model_name, model_version).metadata()


async def model_ready(model_name: str, state: StateDep, model_version: str | None = None) -> JSONResponse:
    """200 when the model is ready; 503 with the reason otherwise."""
    model = state.registry.get(model_name, model_version)
    if model.ready:
        return JSONResponse({"name": model.name, "ready": True})
    return JSONResponse({"name": model.name, "ready": False, "state": model.state, "reason": model.reason,
                         "error": f"model {model.name!r} is not ready: {model.reason or model.state}"},
                        status_code=503)


async def model_config(model_name: str, state: StateDep, model_version: str | None = None) -> dict[str, Any]:
    """The model's configuration in Triton's JSON form (max_batch_size, inputs, dynamic_batching)."""
    return state.registry.get(model_name, model_version).triton_config()


async def model_stats(model_name: str, state: StateDep, model_version: str | None = None) -> dict[str, Any]:
    """One model's statistics: counts and cumulative queue/compute times (Triton's schema)."""
    model = state.registry.get(model_name, model_version)
    return {"model_stats": [model.stats.as_triton(model.name, model.version)]}


async def infer(request: Request) -> Response:
    """The inference handler, from the request alone: what :class:`InferenceLane` calls."""
    params = request.path_params
    model = get_state_of(request).registry.get(params["model_name"], params.get("model_version"))
    model.require_ready()
    return await model.handle(await request_body(request), request.headers)


async def model_infer(model_name: str, request: Request, state: StateDep, model_version: str | None = None,
                      _: None = Depends(require_api_key)) -> Response:
    """Inference: JSON tensors, or Triton's binary tensor extension (Inference-Header-Content-Length)."""
    return await infer(request)  # (POST requests are answered by InferenceLane; this route documents them)


class InferenceLane:
    """ASGI middleware that hands ``POST .../infer`` straight to :func:`infer`, past FastAPI's
    router, dependency solving and per-route middleware (the service's gates, in-flight bound and
    timeout stay in front of it). The route :func:`model_infer` still documents the request and
    answers other methods (405).

    On 2 cores that path cost ~0.5 ms a request (~0.1 ms of CPU in a warm loop, several times that
    between inferences, when the caches are cold), a tenth of vit_tiny's inference: ``make
    bench-service`` measures what is left. Errors are answered by ``on_error``, the app's own
    exception handler (:func:`service.http.app.answer_error`).
    """

    PATH = INFER_PATH

    def __init__(self, app: Any, on_error: Callable[[Request, Exception], Awaitable[Response]]) -> None:
        self.app, self.on_error = app, on_error

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = self.PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            return await self.app(scope, receive, send)
        scope["path_params"] = {k: v for k, v in match.groupdict().items() if v is not None}
        request = Request(scope, receive)
        try:
            response = await infer(request)
        except Exception as err:
            response = await self.on_error(request, err)
        await response(scope, receive, send)


model_route("", model_metadata, response_model=ModelMetadata, tags=["models"])
model_route("/ready", model_ready, response_model=ModelReadyBody, tags=["health"])
model_route("/config", model_config, tags=["models"])
model_route("/stats", model_stats, tags=["statistics"])
model_route("/infer", model_infer, method="POST", response_model=InferenceResponse, tags=["inference"])
