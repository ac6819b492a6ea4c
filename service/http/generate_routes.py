"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` (one JSON answer) and
``/generate_stream`` (server-sent events, one per token), for text-generation models
(:class:`~service.models.generative.GenerativeModel`). Request and answer fields: :mod:`service.protocol.generate`.

When the client goes away, generation stops after the step under way: ``/generate`` asks the
connection between steps, a stream is cancelled by Starlette when the connection drops (its
generator's ``finally`` stops the decoding). Server-side timeouts: ``/generate`` answers within the
server's request timeout (504 past it, and the generation stops); a stream starts at once and is not
cut by it (``max_tokens`` and the server's ``--max-generate-tokens`` bound its length).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import BadRequest, ServiceError
from ..models.generative import GenerationRun, GenerativeModel
from ..protocol.generate import (
    GenerateRequest,
    GenerateResponse,
    GenerateTokenEvent,
    StreamError,
    parse_generate_request,
    sse,
)
from .admission import request_body
from .auth import require_api_key
from .oip_routes import model_route
from .state import StateDep

log = logging.getLogger("dyt_deploy.service")
router = APIRouter()
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of events


def generative(state: Any, model_name: str, model_version: str | None) -> GenerativeModel:
    """The model, ready and able to generate (404 unknown, 503 not ready, 400 not a text-generation model)."""
    model = state.registry.get(model_name, model_version)
    model.require_ready()
    if not isinstance(model, GenerativeModel):
        raise BadRequest(f"model {model.name!r} does not generate text (it is not a text-generation export: "
                         f"dyt-export MODEL --task text-generation --repository R); use "
                         f"POST /v2/models/{model.name}/infer")
    return model


async def started_run(request: Request, state: Any, model_name: str, model_version: str | None) -> tuple[
        GenerativeModel, GenerateRequest, GenerationRun]:
    model = generative(state, model_name, model_version)
    body = parse_generate_request(await request_body(request))
    return model, body, await model.start(body)


def header(model: GenerativeModel, body: GenerateRequest) -> dict[str, Any]:
    """The fields every answer and event starts with."""
    fields = {"id": body.id} if body.id is not None else {}
    return {**fields, "model_name": model.name, "model_version": model.version or ""}


async def model_generate(model_name: str, request: Request, state: StateDep, model_version: str | None = None,
                         _: None = Depends(require_api_key)) -> JSONResponse:
    """Generate text for ``text_input`` and answer it whole: text_output, finish_reason
    (stop, length, cancelled), prompt and output token counts, time to first token, tokens/s."""
    model, body, run = await started_run(request, state, model_name, model_version)
    text = await collect(request, model, run)
    return JSONResponse({**header(model, body), "text_output": text, **run.summary()})


async def collect(request: Request, model: Any, run: Any) -> str:
    """The whole text of a run (a generation answered whole, by any protocol); it stops between
    steps when the client has gone."""
    parts: list[str] = []
    try:
        async with aclosing(run.pieces()) as pieces:
            async for _index, piece in pieces:
                parts.append(piece)
                if run.finish_reason is None and await request.is_disconnected():
                    run.stop()
                    log.info("generation on %s stopped: its client disconnected", model.name)
                    break
    finally:
        run.close()
    parts.append(run.rest())
    return "".join(parts)


class EventStream(StreamingResponse):
    """A stream of a generation's events whose run is closed however the response ends (finished,
    client gone, server stopping), even if its body never started."""

    def __init__(self, events: AsyncIterator[bytes], run: GenerationRun) -> None:
        super().__init__(events, media_type="text/event-stream", headers=STREAM_HEADERS)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.run.close()


async def model_generate_stream(model_name: str, request: Request, state: StateDep,
                                model_version: str | None = None,
                                _: None = Depends(require_api_key)) -> StreamingResponse:
    """Generate text for ``text_input`` as server-sent events: ``data: {json}`` per token (text_output
    piece, index), then one with finish_reason, token counts and timing; an error after the
    stream began is an event ``{"error": ...}``."""
    model, body, run = await started_run(request, state, model_name, model_version)
    return EventStream(events(model, body, run), run)


async def events(model: GenerativeModel, body: GenerateRequest, run: GenerationRun) -> AsyncIterator[bytes]:
    """The stream's events (see :func:`model_generate_stream`)."""
    first = header(model, body)
    try:
        async with aclosing(run.pieces()) as pieces:
            async for index, piece in pieces:
                yield sse({**first, "text_output": piece, "index": index})
        yield sse({**first, "text_output": run.rest(), **run.summary()})
    except ServiceError as err:
        yield sse({"error": str(err)})
    except Exception as err:  # nobody else can tell the client: the answer has begun
        log.exception("generation stream on %s failed", model.name)
        yield sse({"error": f"internal server error: {type(err).__name__}"})
    finally:
        run.close()


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place (an OpenAPI body cannot
    point into the schema's own ``$defs``)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


GENERATE_BODY = {"required": True, "content": {"application/json": {"schema": inline_schema(GenerateRequest)}}}

model_route("/generate", model_generate, method="POST", on=router, response_model=GenerateResponse,
            tags=["generation"], openapi_extra={"requestBody": GENERATE_BODY})
def stream_event_schema() -> dict[str, Any]:
    """The JSON of one stream event's ``data``: a token, the last event, or an error."""
    return {"anyOf": [inline_schema(GenerateTokenEvent), inline_schema(GenerateResponse), inline_schema(StreamError)]}


# itemSchema (OpenAPI 3.2's word for the schema of each item of a sequential media type): each
# event's data; every event ends with a blank line, as server-sent events must.
STREAM_ANSWER = {"200": {"description": "server-sent events, each `data: {json}` and a blank line: one per token "
                                        "(text_output, index), the last with finish_reason, prompt_tokens, "
                                        "output_tokens, time_to_first_token_ms, tokens_per_s; `data: {\"error\": "
                                        "...}` if it fails after it began",
                         "content": {"text/event-stream": {"schema": {"type": "string"},
                                                           "itemSchema": stream_event_schema()}}}}
model_route("/generate_stream", model_generate_stream, method="POST", on=router, tags=["generation"],
            response_class=StreamingResponse, openapi_extra={"requestBody": GENERATE_BODY, "responses": STREAM_ANSWER})
