"""The uvicorn server the service runs on (:func:`make_server`, what ``dyt-serve`` runs), and
:func:`serve_in_thread`: the same in a background thread on loopback, for the demo, notebooks and
tests.

Two departures from plain uvicorn: a SIGTERM or Ctrl-C that ends in a clean drain exits 0 (uvicorn
re-raises the signal once drained, so the process would end with status 143), a malformed HTTP
request gets a JSON ``{"error": ...}`` 400 like every other refusal, and a request line and headers
over MAX_HEAD_BYTES a JSON 431 at once (with the httptools parser, uvicorn's default where it is
installed; the pure-Python h11 parser keeps uvicorn's plain-text 400, with the same bound).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from dyt_deploy.errors import DytDeployError


@dataclass
class BackgroundServer:
    """A running server; ``address`` is ``host:port`` (tritonclient's form), ``url`` has the scheme."""

    address: str
    app: Any
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://{self.address}"


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose SIGINT/SIGTERM handling drains in-flight requests and then returns
    (instead of re-raising the signal)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


MAX_HEAD_BYTES = 64 << 10  # a request line and headers larger than this are refused (431)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 parser, bounded by h11_max_incomplete_event_size
    HttpToolsProtocol = None


def json_error(status: bytes, message: str) -> bytes:
    """A complete ``{"error": message}`` response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body)) + body


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol that answers malformed HTTP with a JSON 400, and a request
        whose line and headers pass MAX_HEAD_BYTES with a JSON 431 (then closes the connection):
        httptools itself bounds neither, and would buffer every header before the app is called."""

        head_bytes: int | None = 0  # bytes of the head being received (None: in a body)

        def data_received(self, data: bytes) -> None:
            if self.head_bytes is not None:
                self.head_bytes += len(data)
            super().data_received(data)
            if self.head_bytes is not None and self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.logger.warning("request headers over %d bytes refused", MAX_HEAD_BYTES)
                self.transport.write(json_error(b"431 Request Header Fields Too Large", "request line and "
                                                f"headers are over the limit of {MAX_HEAD_BYTES} bytes"))
                self.transport.close()

        def on_headers_complete(self) -> None:
            self.head_bytes = None
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.head_bytes = 0
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            self.transport.write(json_error(b"400 Bad Request", f"malformed HTTP request: {msg}"))
            self.transport.close()


def http_options() -> dict[str, Any]:
    """uvicorn's HTTP options of the one-process server: the bounded httptools protocol where
    httptools is installed, else h11 with the same bound. (--workers processes keep uvicorn's
    default: handed to uvicorn's process supervisor, either left one of two workers idle.)"""
    if HttpToolsProtocol is None:
        return {"http": "h11", "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    return {"http": BoundedHttpToolsProtocol}


def make_server(app: Any, host: str, port: int, log_level: str = "info", **config: Any) -> DrainingServer:
    """The server ``dyt-serve`` runs ``app`` on (see the module's docstring); the service's own log
    lines (models loaded, clients gone mid-body, ...) go where uvicorn's go, at ``log_level``."""
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level, **http_options(),
                                           **config))
    service_log = logging.getLogger("dyt_deploy")
    service_log.setLevel(log_level.upper())
    for handler in logging.getLogger("uvicorn").handlers:
        if handler not in service_log.handlers:
            service_log.addHandler(handler)
    return server


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    startup_timeout_s: float = 120.0) -> Iterator[BackgroundServer]:
    """Start uvicorn in a daemon thread (port 0: one the OS picks), wait until its lifespan has
    loaded the models, and stop it when the block ends."""
    server = make_server(app, host, port, log_level="warning")
    thread = threading.Thread(target=server.run, name="dyt-serve-background", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise DytDeployError("the service did not start (see its log above)")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield BackgroundServer(f"{host}:{bound_port}", app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
