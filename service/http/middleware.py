"""ASGI middleware that keeps bad or excessive traffic from hurting the server.

* :class:`InFlightLimit`: 503 with Retry-After when the bound of requests in flight is reached
  (health probes and /metrics are always answered). Behind service.http.admission.BodyGate, a request
  counts only once its body is complete.
* :class:`RequestTimeout`: 408 when the body has not arrived in time, 504 when handling took too long.

Body limits, body deadlines and the API key are service.http.admission's.

All answer ``{"error": "..."}`` as the Open Inference Protocol asks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from ..telemetry.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
UNCOUNTED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Send a complete ``{"error": message}`` JSON response."""
    body = json.dumps({"error": message}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first one), or None."""
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name), None)


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked transfer)."""
    length = header(scope, b"content-length")
    return (length is not None and length != "0") or header(scope, b"transfer-encoding") is not None


class InFlightLimit:
    """Answer 503 + Retry-After once ``max_in_flight`` requests are being handled."""

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: int, metrics: ServiceMetrics) -> None:
        self.app, self.max_in_flight, self.retry_after_s, self.metrics = app, max_in_flight, retry_after_s, metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            self.metrics.rejected.labels("in_flight").inc()
            return await send_error(send, 503, f"server busy: {self.in_flight} requests in flight (limit "
                                    f"{self.max_in_flight}); retry later", {"Retry-After": str(self.retry_after_s)})
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()


class RequestTimeout:
    """Cancel a request still unanswered after ``timeout_s``: 408 if its body was still arriving,
    504 if it was being processed (nothing is sent if the response had already started). An event
    stream (``text/event-stream``, a generation) is not cut once it has started."""

    def __init__(self, app: ASGIApp, timeout_s: float, metrics: ServiceMetrics) -> None:
        self.app, self.timeout_s, self.metrics = app, timeout_s, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"body_done": not has_body(scope), "started": False}

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
            return message

        scope_timer = anyio.move_on_after(self.timeout_s)

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"text/event-stream"):
                    scope_timer.deadline = math.inf
            await send(message)

        with scope_timer:
            await self.app(scope, tracking_receive, tracking_send)
        if scope_timer.cancelled_caught and not state["started"]:
            await self._send_timeout(send, bool(state["body_done"]))

    async def _send_timeout(self, send: Send, body_done: bool) -> None:
        reason = "processing" if body_done else "body"
        self.metrics.rejected.labels(f"timeout_{reason}").inc()
        status = 504 if body_done else 408
        what = "handling the request" if body_done else "receiving the request body"
        await send_error(send, status, f"request timed out after {self.timeout_s:g} s while {what}")
