"""Admission: what a request must pass before the app sees it, as two ASGI middlewares.

* :class:`ApiKeyGate`: with an API key set, every route but the health probes (and ``/metrics``
  with ``public_metrics``) answers 401 to a request without the key, before its body is read.
* :class:`BodyGate`: reads the whole body first, on a short deadline (408) and at a minimum
  average rate once a grace has passed (408), with a bounded number of bodies being read at once,
  in all and per client (503; when all are taken, a new request takes the slot of the slowest read
  below the minimum rate instead), a size limit (413; all-JSON inference bodies, and the JSON
  part of a binary-extension body, up to the model's largest valid request within max_json_bytes),
  gzip/deflate bodies inflated here within the same limits and a ratio, and a bound on the memory
  of all requests in flight (503; JSON bytes count what decoding them costs, a compressed body its
  inflated size). Only a complete body reaches the app, so a slow client holds a body-read slot,
  never an inference slot (the in-flight bound counts requests past this gate).

Every refusal answers ``{"error": "..."}`` as the Open Inference Protocol asks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.requests import Request

from ..errors import ServiceError
from ..protocol.oip import HEADER_LENGTH, inflate_body
from ..settings import Settings
from ..telemetry.metrics import ServiceMetrics
from .auth import key_problem
from .middleware import ASGIApp, Message, Receive, Scope, Send, header, send_error

log = logging.getLogger("dyt_deploy.service")

PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
SMALL_BODY_BYTES = 64 << 10  # bodies of routes other than inference (repository index, comparison)
# what a JSON inference body costs while decoded, in times its size (measured, msgspec): ~14 for short
# numbers ("0.5,": a 32-byte Python float per 4 bytes), ~3.5 for float32 values as clients write them
JSON_MEMORY_FACTOR = 16
BODY_KEY = "dyt.body"  # the scope key under which BodyGate leaves the body it read (see request_body)
INFER_PATH = re.compile(r"/v2/models/(?P<model_name>[^/]+)(?:/versions/(?P<model_version>[^/]+))?/infer")
MAX_LENGTH_DIGITS = 18  # a Content-Length longer than this is over every limit (and int() of it is costly)
EVICTABLE_AFTER_S = 0.1  # a body read younger than this is never dropped for a new one (its bytes may be on the way)


class ApiKeyGate:
    """401 for a request without the server's API key (none set: every request passes). Open:
    the health probes, and ``/metrics`` when ``public_metrics``."""

    def __init__(self, app: ASGIApp, api_key: str | None, public_metrics: bool,
                 metrics: ServiceMetrics | None = None) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics
        self.open_paths = PROBE_PATHS | ({"/metrics"} if public_metrics else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        given = header(scope, b"x-api-key")
        authorization = header(scope, b"authorization")
        if given is None and authorization is not None and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        problem = key_problem(given, self.api_key)
        if problem is None:
            return await self.app(scope, receive, send)
        if self.metrics is not None:
            self.metrics.rejected.labels("api_key").inc()
        await send_error(send, 401, problem, {"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class BodyRules:
    """How much body a request may send, what its JSON part may be, and what a 413 says about it.

    ``json_part``: the JSON part's length from Inference-Header-Content-Length (None: the whole
    body is JSON). ``encoding``: its Content-Encoding (None: sent as is).
    """

    limit: int
    json_limit: int
    json_part: int | None = None
    encoding: str | None = None
    advice: str = ""

    def cost(self, size: int) -> int:
        """What a body of ``size`` bytes costs in memory while decoded: JSON bytes count
        JSON_MEMORY_FACTOR times, binary tensor bytes once."""
        json_bytes = size if self.json_part is None else min(self.json_part, size)
        return size + json_bytes * (JSON_MEMORY_FACTOR - 1)

    def too_large(self, size: int, at_least: bool = False) -> BodyRefused:
        what = "JSON request body" if self.json_part is None and self.advice else "request body"
        return BodyRefused(413, f"{what} of {'at least ' if at_least else ''}{size} bytes is over the limit of "
                           f"{self.limit} bytes{self.advice}", "body_size")


class BodyRefused(Exception):
    """The body cannot be admitted: ``status`` and ``message`` are the answer."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class ClientGone(Exception):
    """The client disconnected before its body was complete."""


def whole_body_limit(settings: Settings) -> Callable[[str], int]:
    """The JSON limit of every model when the gate knows no models: ``max_json_bytes``."""
    return lambda _model: min(settings.max_json_bytes, settings.max_body_bytes)


class BodyGate:
    """Read each request body completely (deadline, count and byte bounds) before the app runs;
    inflate a gzip or deflate inference body here, counting its inflated bytes.

    ``json_limit_of``: a model's name -> the largest all-JSON inference body it takes (default:
    ``max_json_bytes`` for every model).
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics,
                 json_limit_of: Callable[[str], int] | None = None) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics
        self.json_limit_of = json_limit_of or whole_body_limit(settings)
        self.readers: set[BodyRead] = set()
        self.reading_by_client: dict[str, int] = {}
        self.bytes_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not announces_body(scope):
            return await self.app(scope, receive, send)
        charged = 0
        try:
            rules = self.rules(scope)
            declared = declared_length(scope)
            if declared is not None and declared > rules.limit:
                raise rules.too_large(declared)
            charged = self.charge(rules.cost(declared or 0), charged)
            body = await self.read_body(scope, receive, rules)
            charged = self.charge(rules.cost(len(body)), charged)
            if rules.encoding is not None:  # counted at its worst before inflation, at its size after
                worst = min(rules.limit, self.settings.max_inflate_ratio * len(body))
                charged = self.charge(rules.cost(worst), charged)
                body = await self.inflate(scope, body, rules)
                charged = self.charge(rules.cost(len(body)), charged)
        except BodyRefused as refused:
            self.metrics.rejected.labels(refused.reason).inc()
            self.bytes_in_flight -= charged
            retry = {"Retry-After": str(self.settings.retry_after_s)} if refused.status == 503 else None
            return await send_error(send, refused.status, refused.message, retry)
        except ClientGone:
            self.bytes_in_flight -= charged
            log.info("client %s disconnected before its request body was complete (%s %s)",
                     client_of(scope), scope.get("method"), scope["path"])
            return None
        scope[BODY_KEY] = body
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            self.bytes_in_flight -= charged

    def rules(self, scope: Scope) -> BodyRules:
        """The limits of this request's body: an inference body up to max_body_bytes, its JSON part
        (all of it without Inference-Header-Content-Length) up to the model's JSON limit (413 at
        once when the header announces more); other routes' bodies up to 64 KiB."""
        settings = self.settings
        match = INFER_PATH.fullmatch(scope["path"])
        if match is None:
            small = min(SMALL_BODY_BYTES, settings.max_body_bytes)
            return BodyRules(small, small)
        json_limit = self.json_limit_of(match["model_name"])
        advice = json_advice(json_limit)
        encoding = header(scope, b"content-encoding")
        encoding = None if encoding is None or encoding.strip().lower() == "identity" else encoding
        json_part = json_part_length(scope)
        if json_part is None:
            return BodyRules(json_limit, json_limit, None, encoding, advice)
        if json_part > json_limit:
            raise BodyRefused(413, f"the JSON part of {json_part} bytes (Inference-Header-Content-Length) is over "
                              f"the limit of {json_limit} bytes{advice}", "body_size")
        return BodyRules(settings.max_body_bytes, json_limit, json_part, encoding)

    def charge(self, cost: int, charged: int) -> int:
        """Count a request's cost as in flight, in place of the ``charged`` counted so far; 503 over
        the bound (a request alone is admitted whatever its cost: its size limit bounds it).
        Returns what is now counted for it."""
        bound, others = self.settings.max_inflight_bytes, self.bytes_in_flight - charged
        if cost > charged and others and others + cost > bound:
            raise BodyRefused(503, f"server busy: {others} bytes of requests in flight, this one would add "
                              f"{cost} (limit {bound}); retry later", "inflight_bytes")
        self.bytes_in_flight += cost - charged
        return cost

    async def inflate(self, scope: Scope, body: bytes, rules: BodyRules) -> bytes:
        """The body inflated (bounded by its kind's limit and max_inflate_ratio); the scope then
        describes the inflated body."""
        ratio = self.settings.max_inflate_ratio
        try:
            body = await anyio.to_thread.run_sync(inflate_body, body, rules.encoding, rules.limit, ratio)
        except ServiceError as err:
            raise BodyRefused(err.status, str(err) + (rules.advice if err.status == 413 else ""),
                              "body_size" if err.status == 413 else "bad_encoding") from None
        if rules.json_part is not None and rules.json_part > len(body):
            raise BodyRefused(400, f"Inference-Header-Content-Length {rules.json_part} does not fit the inflated "
                              f"body of {len(body)} bytes", "bad_length")
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-encoding",
                                                                                    b"content-length")]
        scope["headers"].append((b"content-length", str(len(body)).encode()))
        return body

    async def read_body(self, scope: Scope, receive: Receive, rules: BodyRules) -> bytes:
        """The whole body, read while holding a body-read slot: within body_timeout_s, and (after
        body_grace_s) at min_body_rate on average; a slow read may lose its slot to a new one."""
        reader = self.take_read_slot(client_of(scope))
        try:
            with reader.cancel:
                return await self.receive_all(receive, rules, reader)
            raise reader.refusal(self.settings)
        finally:
            self.release_read_slot(reader)

    async def receive_all(self, receive: Receive, rules: BodyRules, reader: BodyRead) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            reader.advance(len(chunk), self.settings)
            if reader.received > rules.limit:
                raise rules.too_large(reader.received, at_least=True)
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def take_read_slot(self, client: str) -> BodyRead:
        """A body-read slot for ``client``: 503 when the client has max_body_reads_per_client, or
        when all max_body_reads are taken and none of them is a slow read to drop."""
        settings = self.settings
        if self.reading_by_client.get(client, 0) >= settings.max_body_reads_per_client:
            raise BodyRefused(503, f"too many request bodies being received from {client} at once (limit "
                              f"{settings.max_body_reads_per_client}); retry later", "body_reads_client")
        if self.reading >= settings.max_body_reads and not self.drop_slowest():
            raise BodyRefused(503, f"server busy: {self.reading} request bodies being received (limit "
                              f"{settings.max_body_reads}), none of them slow; retry later", "body_reads")
        reader = BodyRead(client, settings)
        self.readers.add(reader)
        self.reading_by_client[client] = self.reading_by_client.get(client, 0) + 1
        return reader

    def drop_slowest(self) -> bool:
        """Give the slot of the slowest read below min_body_rate (one at least EVICTABLE_AFTER_S old)
        to a new request: the slow one is answered 408. False when there is none."""
        now = anyio.current_time()
        slow = [r for r in self.readers if r.evictable(now, self.settings.min_body_rate)]
        if not slow:
            return False
        victim = min(slow, key=lambda r: r.rate(now))
        victim.evicted = True
        victim.cancel.cancel()
        self.release_read_slot(victim)
        self.metrics.rejected.labels("slow_body").inc()
        return True

    def release_read_slot(self, reader: BodyRead) -> None:
        if reader not in self.readers:  # already given to another request
            return
        self.readers.discard(reader)
        left = self.reading_by_client[reader.client] - 1
        if left:
            self.reading_by_client[reader.client] = left
        else:
            del self.reading_by_client[reader.client]

    @property
    def reading(self) -> int:
        """Request bodies being received now."""
        return len(self.readers)


class BodyRead:
    """One body being received: its client, progress, and the cancel scope whose deadline is the
    sooner of body_timeout_s and the moment its average rate would fall below min_body_rate."""

    def __init__(self, client: str, settings: Settings) -> None:
        self.client, self.started, self.received, self.evicted = client, anyio.current_time(), 0, False
        self.cancel = anyio.CancelScope()
        self.advance(0, settings)

    def advance(self, size: int, settings: Settings) -> None:
        """Count ``size`` more bytes and move the deadline accordingly."""
        self.received += size
        deadline = self.started + settings.body_timeout_s
        if settings.min_body_rate:
            deadline = min(deadline, self.started + max(settings.body_grace_s, self.received / settings.min_body_rate))
        self.cancel.deadline = deadline

    def rate(self, now: float) -> float:
        return self.received / max(now - self.started, 1e-6)

    def evictable(self, now: float, min_rate: int) -> bool:
        return now - self.started >= EVICTABLE_AFTER_S and self.rate(now) < min_rate

    def refusal(self, settings: Settings) -> BodyRefused:
        """The 408 of a read that was cut: dropped for a new request, too slow, or out of time."""
        seconds = anyio.current_time() - self.started
        if self.evicted:
            return BodyRefused(408, f"request body too slow ({self.received} bytes in {seconds:.1f} s, below "
                               f"{settings.min_body_rate} bytes/s): its slot went to another request", "slow_body")
        if seconds < settings.body_timeout_s - 0.01:
            return BodyRefused(408, f"request body too slow: {self.received} bytes in {seconds:.1f} s while "
                               f"receiving the request body, below the minimum of {settings.min_body_rate} "
                               "bytes/s", "slow_body")
        return BodyRefused(408, f"request timed out after {settings.body_timeout_s:g} s while receiving "
                           "the request body", "timeout_body")


def json_advice(json_limit: int) -> str:
    """What a 413 of a JSON body adds: the JSON limit is the model's largest valid request (or the
    server's budget, --max-json-mb); what is larger goes as binary tensors."""
    return (f" for JSON ({json_limit} bytes: this model's largest valid request, within the server's "
            "--max-json-mb); send large tensors with the binary tensor extension "
            "(Inference-Header-Content-Length; tritonclient: binary_data=True)")


def json_part_length(scope: Scope) -> int | None:
    """The Inference-Header-Content-Length (None when absent; a value that is not a number is left
    to the protocol's 400, counted as the whole body here)."""
    value = header(scope, HEADER_LENGTH.encode())
    if value is None or not value.strip().isdigit() or len(value.strip()) > MAX_LENGTH_DIGITS:
        return None
    return int(value)


def announces_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked transfer)."""
    length = header(scope, b"content-length")
    return (length is not None and length.strip("0 ") != "") or header(scope, b"transfer-encoding") is not None


def declared_length(scope: Scope) -> int | None:
    """The Content-Length (None when absent); one too long to be real counts as over every limit."""
    value = header(scope, b"content-length")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise BodyRefused(400, f"Content-Length {value[:40]!r} is not a number of bytes", "bad_length")
    return int(value) if len(value) <= MAX_LENGTH_DIGITS else 10**MAX_LENGTH_DIGITS


def client_of(scope: Scope) -> str:
    """The client's address (host only: one client, many ports)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def request_body(request: Request) -> bytes:
    """The request's body: the very bytes :class:`BodyGate` read, or (behind no gate) Starlette's.

    Starlette's ``Request.body()`` joins its chunks again, and its stream ends with an empty chunk,
    so a replayed body would be copied once more: ~0.2 ms for a 600 KB tensor on a cold allocation.
    """
    body = request.scope.get(BODY_KEY)
    return body if body is not None else await request.body()


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the complete body once, then whatever the connection says next
    (``http.disconnect`` when the client leaves)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
