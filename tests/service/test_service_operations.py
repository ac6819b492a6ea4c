"""Operations: a failing model beside a good one, API key, in-flight bound, timeouts, dynamic
batching, against the strict server (see conftest)."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from service_testlib import (
    API_KEY,
    BATCH_DELAY_US,
    STRICT_BODY_TIMEOUT_S,
    STRICT_IN_FLIGHT,
    BackgroundServer,
    images,
    json_request,
    serve_in_thread,
)

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from service.http.middleware import RequestTimeout
from service.telemetry.metrics import ServiceMetrics

KEY = {"x-api-key": API_KEY}
URL = "/v2/models/vit-dyt/infer"


def test_failing_model_is_reported_and_the_others_serve(strict_client: httpx.Client) -> None:
    index = {m["name"]: m for m in strict_client.post("/v2/repository/index", headers=KEY).json()}
    assert index["vit-dyt"]["state"] == "READY"
    assert index["vit-broken"]["state"] == "UNAVAILABLE" and index["vit-broken"]["reason"]
    assert index["no-manifest"]["state"] == "UNAVAILABLE" and "no dyt.json" in index["no-manifest"]["reason"]
    ready = strict_client.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert "vit-broken" in ready.json()["error"] and "no-manifest" in ready.json()["error"]
    broken = strict_client.get("/v2/models/vit-broken/ready", headers=KEY)
    assert broken.status_code == 503 and broken.json()["reason"] == index["vit-broken"]["reason"]
    refused = strict_client.post("/v2/models/vit-broken/infer", json=json_request(images(1)), headers=KEY)
    assert refused.status_code == 503 and "not ready" in refused.json()["error"]
    assert strict_client.get("/v2/models/no-manifest", headers=KEY).status_code == 503
    assert strict_client.get("/v2/health/live").status_code == 200
    assert strict_client.get("/v2/models/vit-dyt/ready", headers=KEY).status_code == 200
    assert strict_client.post(URL, json=json_request(images(1)), headers=KEY).status_code == 200


def test_api_key_guards_every_route_but_the_probes(strict_client: httpx.Client) -> None:
    missing = strict_client.post(URL, json=json_request(images(1)))
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = strict_client.post(URL, json=json_request(images(1)), headers={"x-api-key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "wrong API key"
    bearer = strict_client.post(URL, json=json_request(images(1)), headers={"authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200
    compare = strict_client.post("/api/compare", json={"family": "vit_tiny", "rounds": 2})
    assert compare.status_code == 401
    for path in ("/v2", "/v2/models/vit-dyt", "/v2/models/vit-dyt/stats", "/api/live", "/metrics", "/"):
        assert strict_client.get(path).status_code == 401, path
        assert strict_client.get(path, headers=KEY).status_code == 200, path
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert strict_client.get(path).status_code != 401, path


def open_hanging_request(address: str) -> socket.socket:
    """A POST whose headers announce a body that never comes: it stays in flight."""
    host, port = address.split(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    raw.sendall(f"POST {URL} HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {API_KEY}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
    return raw


def read_reply(raw: socket.socket) -> bytes:
    """Everything the server sends until its response is complete (by Content-Length) or it closes."""
    reply = b""
    while chunk := raw.recv(4096):
        reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), None)
        if length is not None and len(body) >= length:
            break
    return reply


def test_requests_over_the_in_flight_bound_get_503_with_retry_after(strict_client: httpx.Client) -> None:
    """vit-dyt batches with a 150 ms queue delay, so complete requests stay in flight that long."""
    count = STRICT_IN_FLIGHT * 3
    with ThreadPoolExecutor(count) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{strict_client.base_url}{URL}", json=json_request(images(1)),
                                                     headers=KEY, timeout=30), range(count)))
    busy = [r for r in replies if r.status_code == 503]
    assert busy and all(r.headers["retry-after"] == "1" and "in flight" in r.json()["error"] for r in busy)
    assert {r.status_code for r in replies} == {200, 503}
    assert strict_client.get("/v2/health/live").status_code == 200  # probes are never refused
    assert 'dyt_requests_rejected_total{reason="in_flight"}' in strict_client.get("/metrics", headers=KEY).text


def test_hanging_bodies_hold_no_in_flight_slot(strict_server: BackgroundServer, strict_client: httpx.Client) -> None:
    hanging = [open_hanging_request(strict_server.address) for _ in range(STRICT_IN_FLIGHT)]
    try:
        time.sleep(0.3)  # let the server accept all of them
        assert strict_client.post(URL, json=json_request(images(1)), headers=KEY).status_code == 200
    finally:
        for raw in hanging:
            raw.close()


def test_a_body_that_never_arrives_times_out_with_408(strict_server: BackgroundServer) -> None:
    started = time.monotonic()
    raw = open_hanging_request(strict_server.address)
    try:
        reply = read_reply(raw)
    finally:
        raw.close()
    elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408") and b"timed out" in reply
    assert STRICT_BODY_TIMEOUT_S * 0.9 <= elapsed < STRICT_BODY_TIMEOUT_S + 5


def test_slow_handling_times_out_with_504() -> None:
    async def slow_app(scope: dict, receive: object, send: object) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(30)

    guarded = RequestTimeout(slow_app, timeout_s=0.3, metrics=ServiceMetrics())
    with serve_in_thread(guarded) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        started = time.monotonic()
        response = http.get("/anything")
    assert response.status_code == 504 and "while handling the request" in response.json()["error"]
    assert time.monotonic() - started < 5


def test_dynamic_batching_runs_concurrent_requests_as_one_call(strict_client: httpx.Client,
                                                              reference: dict[str, OnnxRuntimeRunner]) -> None:
    config = strict_client.get("/v2/models/vit-dyt/config", headers=KEY).json()
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == BATCH_DELAY_US
    before = strict_client.get("/v2/models/vit-dyt/stats", headers=KEY).json()["model_stats"][0]
    inputs = [images(batch, seed=20 + batch) for batch in (1, 2, 1)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        responses = list(pool.map(lambda x: httpx.post(f"{strict_client.base_url}{URL}", json=json_request(x),
                                                       headers=KEY, timeout=30), inputs))
    after = strict_client.get("/v2/models/vit-dyt/stats", headers=KEY).json()["model_stats"][0]
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        logits = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(len(x), 1000)
        np.testing.assert_allclose(logits, reference["vit-dyt"].infer({"pixel_values": x})["logits"],
                                   rtol=1e-4, atol=1e-5)
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] < len(inputs)
    assert any(b["batch_size"] >= 3 for b in after["batch_stats"])  # one call held requests of 1 and 2 items
