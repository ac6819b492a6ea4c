"""Helpers of the service tests: request builders, the limits the strict server is configured with,
and the background server (service.engines.uvicorn) re-exported."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from httpx_sse import EventSource

from service.engines.uvicorn import BackgroundServer, serve_in_thread

__all__ = ["BackgroundServer", "serve_in_thread"]

API_KEY = "test-key-123"
STRICT_BODY_LIMIT = 256 << 10
STRICT_IN_FLIGHT = 3
STRICT_TIMEOUT_S = 2.0
STRICT_BODY_TIMEOUT_S = 1.0
BATCH_DELAY_US = 150_000


def images(batch: int = 2, seed: int = 0) -> np.ndarray:
    """A float32 batch the ViTs take: (batch, 3, 32, 32)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def json_request(array: np.ndarray, name: str = "pixel_values", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}]}


class SlowDecoder:
    """A decoder that sleeps before each step (to leave time to disconnect mid-generation)."""

    def __init__(self, decoder: Any, seconds: float) -> None:
        self.decoder, self.seconds = decoder, seconds
        self.vocab_size, self.max_length = decoder.vocab_size, decoder.max_length

    def __call__(self, *args: Any) -> Any:
        time.sleep(self.seconds)
        return self.decoder(*args)


def free_port() -> int:
    """A loopback port nobody listens on now (for a server in another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_ray(environment: dict[str, str] | None = None) -> Iterator[str]:
    """A local Ray instance (2 CPUs, no dashboard, a small object store; Ray's processes inherit
    ``environment``) and Serve's HTTP proxy on a free loopback port; yields the proxy's
    ``host:port``, shuts both down at the end. Skips the test, with the reason, where Ray cannot start."""
    import pytest
    import ray
    from ray import serve

    with pytest.MonkeyPatch.context() as patch:
        for name, value in (environment or {}).items():
            patch.setenv(name, value)
        try:
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
        except Exception as err:  # pragma: no cover - depends on the host
            pytest.skip(f"Ray could not start here: {type(err).__name__}: {err}")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def wait_until_ready(url: str, timeout_s: float = 120) -> None:
    """Until ``url``'s /v2/health/ready answers 200 (a Serve application starting)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/v2/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the Serve application did not become ready"
        time.sleep(0.5)


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until ``url``'s /v2/health/ready answers 200; fails at once if ``process`` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server at {url} did not become ready in {timeout_s:g} s")


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON ``data`` of each server-sent event of a streamed response, as they arrive, read as a
    browser's EventSource reads them (httpx-sse): an event is complete only at its blank line, so
    events not separated by one would run together, and a last one without it is lost."""
    for event in EventSource(response).iter_sse():
        assert event.event == "message", event  # no named events: EventSource.onmessage gets them all
        yield json.loads(event.data)


def framed_events(raw: bytes) -> list[dict[str, Any]]:
    """The events of a whole raw event-stream body, checking its framing byte for byte: each is one
    ``data: {json}`` line and a blank line."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    blocks = raw[:-2].split(b"\n\n")
    assert all(block.startswith(b"data: ") and b"\n" not in block for block in blocks), raw[:200]
    return [json.loads(block[len(b"data: "):]) for block in blocks]
