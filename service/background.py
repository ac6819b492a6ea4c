"""Run the service (or any ASGI app) with uvicorn in a background thread on loopback: for the demo,
notebooks and tests. ``dyt-serve`` is the way to run it for real."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    startup_timeout_s: float = 120.0) -> Iterator[BackgroundServer]:
    """Start uvicorn in a daemon thread (port 0: one the OS picks), wait until its lifespan has
    loaded the models, and stop it when the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
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
