"""The request path's overhead: what keeps an inference request off FastAPI's slow paths.

The figures (served / in-process latency) come from ``make bench-service``; these tests hold the
properties that made them: no thread hop for a dependency, no second copy of the body, inference
requests straight to their handler behind the gates.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute
from service_testlib import images, json_request
from starlette.requests import Request

from service.http.admission import BODY_KEY, ApiKeyGate, BodyGate, request_body
from service.http.app import create_app
from service.http.middleware import InFlightLimit, RequestTimeout
from service.http.oip_routes import InferenceLane
from service.models.worker import WorkerThread
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """The API routes in matching order, included routers flattened (FastAPI 0.16x keeps an
    included router as one entry holding the original router)."""
    found: list[APIRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += _api_routes(inner.routes) if inner is not None else [route] if isinstance(route, APIRoute) else []
    return found


def _dependency_calls(dependant: Any) -> list[Any]:
    calls = []
    for sub in dependant.dependencies:
        calls += [sub.call, *_dependency_calls(sub)]
    return calls


def _is_coroutine(call: Any) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one (FastAPI's security classes)."""
    return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)


def test_every_route_dependency_is_a_coroutine(repository: Path) -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a thread hop on every request."""
    app = create_app(repository, Settings())
    routes = _api_routes(app.routes)
    calls = {c for r in routes for c in _dependency_calls(r.dependant)}
    assert calls, "the routes have dependencies (the state, the API key)"
    blocking = sorted(getattr(c, "__qualname__", repr(c)) for c in calls if not _is_coroutine(c))
    assert blocking == []


def test_the_inference_lane_sits_behind_the_gates_and_answers_like_the_app(server: Any) -> None:
    """Inference requests skip FastAPI's routing but not the gates, bounds and timeout in front of
    it; its errors are the app's."""
    app = create_app(server.app.state.service.settings.repository, Settings())
    order = [m.cls for m in app.user_middleware]  # outermost first
    assert order[-1] is InferenceLane and order.index(RequestTimeout) == len(order) - 2
    assert {ApiKeyGate, BodyGate, InFlightLimit} <= set(order[:-1])
    with httpx.Client(base_url=server.url) as client:
        good = client.post("/v2/models/vit-dyt/infer", json=json_request(images(1)))
        assert good.status_code == 200 and good.json()["outputs"][0]["name"] == "logits"
        versioned = client.post("/v2/models/vit-dyt/versions/1/infer", json=json_request(images(1)))
        assert versioned.json()["outputs"] == good.json()["outputs"]
        unknown = client.post("/v2/models/nope/infer", json=json_request(images(1)))
        assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
        wrong_version = client.post("/v2/models/vit-dyt/versions/7/infer", json=json_request(images(1)))
        assert wrong_version.status_code == 404 and "no version '7'" in wrong_version.json()["error"]
        broken = client.post("/v2/models/vit-dyt/infer", content=b"{not json")
        assert broken.status_code == 400 and "error" in broken.json()
        assert client.get("/v2/models/vit-dyt/infer").status_code == 405  # other methods: FastAPI's route
    assert "/v2/models/{model_name}/infer" in app.openapi()["paths"]  # still documented


def _call(app: Any, chunks: list[bytes]) -> list[dict[str, Any]]:
    """Run one POST with a body in ``chunks`` through the ASGI ``app``; the messages it sent."""
    messages = iter([{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                     for i, c in enumerate(chunks)])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    length = sum(map(len, chunks))
    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "client": ("127.0.0.1", 1),
             "headers": [(b"content-length", str(length).encode())], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent


def test_body_gate_hands_the_body_it_read_to_the_route() -> None:
    """The route gets the very bytes the gate joined: Starlette's ``Request.body()`` would join its
    stream again (body + a closing empty chunk), one more copy of every tensor."""
    chunks = [b"a" * 70_000, b"b" * 70_000, b"c" * 5]
    seen: dict[str, Any] = {}

    async def route(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        seen["body"] = await request_body(request)
        seen["gate"] = scope.get(BODY_KEY)
        seen["starlette"] = await request.body()  # the replayed stream still serves other readers
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = _call(BodyGate(route, Settings(), ServiceMetrics()), chunks)
    assert sent[0]["status"] == 204
    assert seen["body"] == b"".join(chunks)
    assert seen["body"] is seen["gate"]
    assert seen["starlette"] == seen["body"] and seen["starlette"] is not seen["body"]

    seen.clear()
    sent = _call(route, chunks)  # behind no gate: Starlette's body
    assert sent[0]["status"] == 204 and seen["gate"] is None and seen["body"] == b"".join(chunks)


def test_worker_thread_runs_calls_in_order_on_one_thread() -> None:
    """The model's worker: calls (awaited, or submitted as an Executor) run one at a time, in order,
    on its one thread; errors reach the caller; a cancelled waiter leaves the thread working."""
    worker = WorkerThread("model-test")
    ran: list[tuple[int, str]] = []

    def record(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * 10

    def fail() -> None:
        raise ValueError("backend refused")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(worker.call(record, i) for i in range(20)))
        assert results == [i * 10 for i in range(20)]
        assert await loop.run_in_executor(worker, record, 20) == 200
        with pytest.raises(ValueError, match="backend refused"):
            await worker.call(fail)
        slow = asyncio.ensure_future(worker.call(time.sleep, 0.05))
        await asyncio.sleep(0.01)
        slow.cancel()  # its answer arrives after the waiter is gone
        assert await worker.call(record, 21) == 210

    asyncio.run(scenario())
    assert [i for i, _ in ran] == list(range(22)) and {name for _, name in ran} == {"model-test"}
    assert worker.submit(record, 22).result(timeout=5) == 220
    worker.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        worker.submit(record, 23)


def test_the_benchmark_floor_server_answers_what_the_runner_does(repository: Path) -> None:
    """``make bench-service``'s floor (benchmarks/minimal_server.py) computes the same answer as the
    runner dyt-serve makes, through tritonclient: it is a floor of the same work, not of less."""
    import importlib.util

    import tritonclient.http as httpclient

    from dyt_deploy.runners import runner_for_folder
    from service.engines.uvicorn import serve_in_thread

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "minimal_server.py"
    spec = importlib.util.spec_from_file_location("minimal_server", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    array = images(1)
    with serve_in_thread(module.make_app(repository / "vit-dyt")) as running:
        client = httpclient.InferenceServerClient(running.address)
        tensor = httpclient.InferInput("pixel_values", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=True)
        served = client.infer("vit-dyt", [tensor]).as_numpy("logits")
        client.close()
    with runner_for_folder(repository / "vit-dyt") as runner:
        np.testing.assert_array_equal(served, runner.infer({"pixel_values": array})["logits"])
