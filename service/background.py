"""The uvicorn server the service runs on (:func:`make_server`, what ``dyt-serve`` runs), and
:func:`serve_in_thread`: the same in a background thread on loopback, for the demo, notebooks and
tests.

Two departures from plain uvicorn: a SIGTERM or Ctrl-C that ends in a clean drain exits 0 (uvicorn
re-raises the signal once drained, so the process would end with status 143), and a malformed HTTP
request gets a JSON ``{"error": ...}`` 400 like every other refusal (with the httptools parser,
uvicorn's default where it is installed; the pure-Python h11 parser keeps uvicorn's plain-text 400).
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


def json_error_protocol() -> Any:
    """uvicorn's httptools protocol answering malformed HTTP with a JSON 400 ("auto" without httptools)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                     b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return JsonErrorHttpToolsProtocol


def make_server(app: Any, host: str, port: int, log_level: str = "info", **config: Any) -> DrainingServer:
    """The server ``dyt-serve`` runs ``app`` on (see the module's docstring); the service's own log
    lines (models loaded, clients gone mid-body, ...) go where uvicorn's go, at ``log_level``."""
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           http=json_error_protocol(), **config))
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
