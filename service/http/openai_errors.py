"""Errors under ``/v1/`` in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, which
the ``openai`` client (and LangChain, LlamaIndex ...) reads into its exception's ``.message``,
``.param`` and ``.code``; every other path keeps the Open Inference Protocol's ``{"error": "..."}``.

Two pieces: :func:`openai_errors` turns a refusal raised in an OpenAI route into that body, with the
field it names; :class:`OpenAIErrorShape`, the outermost middleware, rewrites the refusals made before
a route runs (the API key's 401, the body gate's 408/413/503, the in-flight bound's 503, an unknown
path's 404) from the protocol's shape into OpenAI's, keeping their status and headers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse

from ..errors import ServiceError
from ..protocol.openai import OpenAIErrorBody, error_body
from .middleware import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("dyt_deploy.service")

PREFIX = "/v1/"
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorBody, "description": "Bad request: the field is in error.param"},
    401: {"model": OpenAIErrorBody, "description": "Missing or wrong API key (Authorization: Bearer KEY)"},
    404: {"model": OpenAIErrorBody, "description": "Unknown model"},
    413: {"model": OpenAIErrorBody, "description": "Request body too large"},
    503: {"model": OpenAIErrorBody, "description": "Model not ready, or busy: retry after Retry-After"},
}


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def error_response(err: ServiceError) -> JSONResponse:
    """The OpenAI answer to a refusal: its status and headers, the field it names (``param``)."""
    body = error_body(err.status, str(err), getattr(err, "param", None), getattr(err, "code", None))
    return JSONResponse(body, status_code=err.status, headers=err.headers or None)


def openai_errors(route: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``route`` answering its refusals (and failures) in OpenAI's shape."""

    @functools.wraps(route)
    async def answering(*args: Any, **kwargs: Any) -> Any:
        try:
            return await route(*args, **kwargs)
        except ServiceError as err:
            return error_response(err)
        except Exception as err:  # the app's own 500 handler sits outside every middleware
            log.exception("internal error in %s", route.__name__)
            return JSONResponse(error_body(500, f"internal server error: {type(err).__name__}"), status_code=500)

    return answering


def reshaped(status: int, body: bytes) -> bytes | None:
    """A protocol error body ``{"error": "message"}`` in OpenAI's shape (None: not one)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("error"), str):
        return None
    return json.dumps(error_body(status, value["error"])).encode()


class OpenAIErrorShape:
    """For paths under /v1/: a JSON error answer of the protocol's shape is sent in OpenAI's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_openai_path(scope["path"]):
            return await self.app(scope, receive, send)
        held: Message | None = None
        chunks: list[bytes] = []

        async def reshaping_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400 and is_json(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            body = reshaped(held["status"], body) or body
            headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
            await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshaping_send)


def is_json(start: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in start.get("headers", []))
