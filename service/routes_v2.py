"""The Open Inference Protocol v2 routes, with Triton's binary tensor, statistics, model
configuration and repository-index extensions. Every model route also answers under
``/v2/models/{name}/versions/{version}/...``.
"""

from __future__ import annotations

import functools
import inspect
import time
import zlib
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import dyt_deploy

from . import protocol
from .auth import require_api_key
from .errors import BadRequest, PayloadTooLarge, ServiceError, Unavailable
from .models import ModelRegistry, ServedModel
from .schemas import (
    ERROR_RESPONSES,
    InferenceResponse,
    LiveBody,
    ModelMetadata,
    ModelReadyBody,
    ReadyBody,
    ServerMetadata,
)
from .stats import RequestTiming

EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_configuration", "model_repository_index"]
INLINE_BYTES = 1 << 16  # bodies and outputs below this are coded on the event loop, larger ones in a thread

router = APIRouter()


def registry_of(request: Request) -> ModelRegistry:
    return request.app.state.registry


def without_version(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` with its ``model_version`` parameter hidden (for the route without /versions/)."""
    signature = inspect.signature(endpoint)

    @functools.wraps(endpoint)
    async def unversioned(**kwargs: Any) -> Any:
        return await endpoint(**kwargs)

    unversioned.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "model_version"])
    return unversioned


def model_route(path: str, endpoint: Callable[..., Any], method: str = "GET", **kwargs: Any) -> None:
    """Register ``endpoint`` under /v2/models/{model_name}{path} and its /versions/{model_version} twin."""
    name = endpoint.__name__
    router.add_api_route("/v2/models/{model_name}" + path, without_version(endpoint), methods=[method], name=name,
                         operation_id=name, responses=ERROR_RESPONSES, **kwargs)
    router.add_api_route("/v2/models/{model_name}/versions/{model_version}" + path, endpoint, methods=[method],
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
async def server_ready(request: Request) -> JSONResponse:
    """Ready: every model of the repository is loaded and warmed (503 otherwise, with the reasons)."""
    registry = registry_of(request)
    if registry.ready:
        return JSONResponse({"ready": True})
    waiting = "; ".join(f"{m.name}: {m.reason or m.state}" for m in registry.models.values() if not m.ready)
    return JSONResponse({"ready": False, "error": f"models not ready: {waiting}"}, status_code=503)


@router.get("/v2/models/stats", tags=["statistics"])
async def all_model_stats(request: Request) -> dict[str, Any]:
    """Statistics of every model (Triton's statistics extension)."""
    return {"model_stats": [m.stats.as_triton(m.name, m.version) for m in registry_of(request).models.values()]}


@router.post("/v2/repository/index", tags=["repository"])
async def repository_index(request: Request) -> list[dict[str, Any]]:
    """Every model folder with its state (READY, UNAVAILABLE) and, when it failed, the reason.
    Body (optional): ``{"ready": true}`` to list only ready models."""
    body = await request.body()
    only_ready = bool(protocol.parse_json_header(body).get("ready", False)) if body.strip() else False
    models = registry_of(request).models.values()
    return [m.index_entry() for m in models if m.ready or not only_ready]


async def model_metadata(model_name: str, request: Request, model_version: str | None = None) -> dict[str, Any]:
    """Model metadata: inputs and outputs with datatypes and shapes (-1 = dynamic)."""
    return registry_of(request).get(model_name, model_version).metadata()


async def model_ready(model_name: str, request: Request, model_version: str | None = None) -> JSONResponse:
    """200 when the model is ready; 503 with the reason otherwise."""
    model = registry_of(request).get(model_name, model_version)
    if model.ready:
        return JSONResponse({"name": model.name, "ready": True})
    return JSONResponse({"name": model.name, "ready": False, "state": model.state, "reason": model.reason,
                         "error": f"model {model.name!r} is not ready: {model.reason or model.state}"},
                        status_code=503)


async def model_config(model_name: str, request: Request, model_version: str | None = None) -> dict[str, Any]:
    """The model's configuration in Triton's JSON form (max_batch_size, inputs, dynamic_batching)."""
    return registry_of(request).get(model_name, model_version).triton_config()


async def model_stats(model_name: str, request: Request, model_version: str | None = None) -> dict[str, Any]:
    """One model's statistics: counts and cumulative queue/compute times (Triton's schema)."""
    model = registry_of(request).get(model_name, model_version)
    return {"model_stats": [model.stats.as_triton(model.name, model.version)]}


async def model_infer(model_name: str, request: Request, model_version: str | None = None,
                      _: None = Depends(require_api_key)) -> Response:
    """Inference: JSON tensors, or Triton's binary tensor extension (Inference-Header-Content-Length)."""
    model = registry_of(request).get(model_name, model_version)
    if not model.ready:
        raise Unavailable(f"model {model.name!r} is not ready: {model.reason or model.state}")
    body = await read_body(request)
    started = time.perf_counter()
    try:
        content, headers, timing, items = await run_inference(model, body, request.headers)
    except Exception:
        record_failure(request, model, time.perf_counter() - started)
        raise
    timing = RequestTiming(timing.queue_s, timing.input_s, timing.infer_s, timing.output_s,
                           time.perf_counter() - started)
    model.stats.record_success(timing, items)
    request.app.state.metrics.observe_success((model.name, model.family, model.variant), timing)
    return Response(content, headers=headers)


def record_failure(request: Request, model: ServedModel, seconds: float) -> None:
    model.stats.record_failure(seconds)
    request.app.state.metrics.observe_failure((model.name, model.family, model.variant))


async def run_inference(model: ServedModel, body: bytes, headers: Any) -> tuple[bytes, dict[str, str],
                                                                                  RequestTiming, int]:
    """Decode, run and encode one request; returns the body, headers, stage times and batch items."""
    settings = model.settings
    signature = model.signature
    assert signature is not None

    def decode() -> protocol.InferRequest:
        return protocol.decode_request(body, headers.get(protocol.HEADER_LENGTH), signature,
                                       settings.allow_nonfinite)

    decoded, input_s = await maybe_in_thread(decode, len(body) > INLINE_BYTES)
    try:
        outputs, queue_s, infer_s = await model.infer(decoded.inputs, decoded.timeout_s)
    except ServiceError:
        raise
    except Exception as err:  # the backend refused inputs that passed the signature checks
        raise BadRequest(f"model {model.name!r} could not run these inputs: {type(err).__name__}: {err}") from err
    size = sum(a.nbytes for a in outputs.values() if isinstance(a, np.ndarray))
    (content, extra), output_s = await maybe_in_thread(
        lambda: protocol.encode_response(model.name, model.version, decoded, outputs, signature),
        size > INLINE_BYTES)
    items = decoded.batch_size if signature.batched else 1
    return content, extra, RequestTiming(queue_s, input_s, infer_s, output_s, 0.0), items


async def maybe_in_thread(work: Callable[[], Any], in_thread: bool) -> tuple[Any, float]:
    """Run ``work`` (in a worker thread when large) and time it."""
    started = time.perf_counter()
    result = await anyio.to_thread.run_sync(work) if in_thread else work()
    return result, time.perf_counter() - started


async def read_body(request: Request) -> bytes:
    """The request body, inflated when sent with Content-Encoding gzip or deflate (bounded by the
    body limit after inflation, so a small compressed bomb is refused too)."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    limit = request.app.state.settings.max_body_bytes
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"body is not valid {encoding} data: {err}") from None
    if len(inflated) > limit:
        raise PayloadTooLarge(f"inflated request body is over the limit of {limit} bytes")
    return inflated


model_route("", model_metadata, response_model=ModelMetadata, tags=["models"])
model_route("/ready", model_ready, response_model=ModelReadyBody, tags=["health"])
model_route("/config", model_config, tags=["models"])
model_route("/stats", model_stats, tags=["statistics"])
model_route("/infer", model_infer, method="POST", response_model=InferenceResponse, tags=["inference"])
