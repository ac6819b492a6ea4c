"""Admission against a real uvicorn server on loopback, with raw sockets where a client misbehaves:
slow bodies hold body-read slots (per client and in all), never inference slots, and time out
with 408; requests without the key are refused before their body is read; every route but the
probes needs the key; huge integers and timeouts are precise 400s; bytes in flight are bounded;
a JSON body over its limit is told about the binary extension; a comparison whose client leaves
stops; answers show no server paths.

Clients come from different loopback addresses (127.0.0.2, ...) where the per-client bound matters.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_testlib import API_KEY, BackgroundServer, images, json_request, serve_in_thread

from service.http.admission import ApiKeyGate
from service.http.app import create_app
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics

KEY = {"x-api-key": API_KEY}
INFER = "/v2/models/vit-dyt/infer"
BODY_TIMEOUT_S = 1.0
READS, READS_PER_CLIENT = 6, 3
JSON_LIMIT, BODY_LIMIT, INFLIGHT_BYTES = 256 << 10, 2 << 20, 4 << 20
MAX_ROUNDS = 20_000


@pytest.fixture(scope="module")
def gated(repository: Path) -> Iterator[BackgroundServer]:
    settings = Settings(threads=1, warmup_runs=1, api_key=API_KEY, body_timeout_s=BODY_TIMEOUT_S,
                        max_body_reads=READS, max_body_reads_per_client=READS_PER_CLIENT, max_json_bytes=JSON_LIMIT,
                        max_body_bytes=BODY_LIMIT, max_inflight_bytes=INFLIGHT_BYTES, compare_max_rounds=MAX_ROUNDS)
    with serve_in_thread(create_app(repository, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def http(gated: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gated.url, timeout=30) as client:
        yield client


def connect(address: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = address.split(":")
    return socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))


def start_request(address: str, path: str, length: int, start: bytes = b"{", source: str = "127.0.0.1",
                  headers: dict[str, str] | None = None) -> socket.socket:
    """A POST announcing ``length`` body bytes, of which only ``start`` is sent."""
    raw = connect(address, source)
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers if headers is not None else KEY).items())
    raw.sendall(f"POST {path} HTTP/1.1\r\nHost: {address}\r\n{lines}Content-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n".encode() + start)
    return raw


def reply_of(raw: socket.socket, timeout_s: float = 10) -> tuple[int, bytes]:
    """The status and body of the server's answer (read until complete or closed)."""
    raw.settimeout(timeout_s)
    reply = b""
    while chunk := raw.recv(65536):
        reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length and len(body) >= int(length.group(1)):
            break
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def reply_or_none(raw: socket.socket, timeout_s: float) -> tuple[int, bytes] | None:
    """The server's answer, or None if none came within ``timeout_s``."""
    try:
        return reply_of(raw, timeout_s)
    except TimeoutError:
        return None


def close_all(sockets: list[socket.socket]) -> None:
    for raw in sockets:
        raw.close()


def test_slow_bodies_hold_body_slots_only_and_time_out(gated: BackgroundServer, http: httpx.Client) -> None:
    def begun(source: str) -> socket.socket:  # 16 KiB at once: above the minimum rate for its first 0.5 s
        return start_request(gated.address, INFER, 20 << 10, b"[" * (16 << 10), source=source)

    held = [begun("127.0.0.2") for _ in range(READS_PER_CLIENT)]
    try:
        extra = begun("127.0.0.2")
        status, body = reply_of(extra, timeout_s=BODY_TIMEOUT_S / 2)  # refused at once, not at the deadline
        extra.close()
        assert status == 503 and b"from 127.0.0.2" in body
        held += [begun("127.0.0.3") for _ in range(READS - len(held))]
        status, body = reply_of(begun("127.0.0.4"), BODY_TIMEOUT_S / 2)
        assert status == 503 and f"limit {READS}), none of them slow".encode() in body  # none to drop
        assert http.get("/v2/models/vit-dyt", headers=KEY).status_code == 200  # no body: never waits for a slot
        assert http.get("/v2/health/live").status_code == 200
        started = time.monotonic()
        replies = [reply_of(raw) for raw in held]
        assert all(status == 408 for status, _ in replies) and b"receiving the request body" in replies[0][1]
        assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    finally:
        close_all(held)
    assert http.post(INFER, json=json_request(images(1)), headers=KEY).status_code == 200


def test_a_prompt_body_takes_the_slot_of_the_slowest(gated: BackgroundServer, http: httpx.Client) -> None:
    """With every body-read slot held by slow senders from many addresses, a request that sends its
    body at once is served: the slowest sender's slot goes to it (that one gets 408)."""
    held = [start_request(gated.address, INFER, 1000, source=f"127.0.1.{i}") for i in range(READS)]
    try:
        time.sleep(0.3)  # older than a read that may still be on its way
        probe = http.post(INFER, json=json_request(images(1)), headers=KEY)
        assert probe.status_code == 200, probe.text
        replies = [reply_or_none(raw, 0.1) for raw in held]
        dropped = [reply for reply in replies if reply is not None]
        assert len(dropped) == 1 and dropped[0][0] == 408 and b"its slot went to another request" in dropped[0][1]
    finally:
        close_all(held)


def test_a_body_below_the_minimum_rate_is_dropped(repository: Path) -> None:
    settings = Settings(threads=1, warmup_runs=0, body_timeout_s=30, body_grace_s=0.3, min_body_rate=64 << 10)
    with serve_in_thread(create_app(repository, settings)) as running:
        started = time.monotonic()
        raw = start_request(running.address, INFER, 100_000, headers={})
        try:
            status, body = reply_of(raw, timeout_s=5)
        finally:
            raw.close()
    assert status == 408 and b"below the minimum of 65536 bytes/s" in body
    assert time.monotonic() - started < 3  # at the grace, not at the 30 s deadline


@pytest.mark.parametrize("path", [INFER, "/v2/repository/index", "/api/compare"])
def test_a_request_without_the_key_is_refused_before_its_body(gated: BackgroundServer, path: str) -> None:
    started = time.monotonic()
    raw = start_request(gated.address, path, 1000, headers={})
    try:
        status, body = reply_of(raw, timeout_s=BODY_TIMEOUT_S / 2)
    finally:
        raw.close()
    assert status == 401 and b"needs an API key" in body
    assert time.monotonic() - started < BODY_TIMEOUT_S / 2


def concrete(path: str) -> str:
    return (path.replace("{model_name}", "vit-dyt").replace("{model_version}", "1")
            .replace("{family}", "vit_tiny"))


def test_every_route_but_the_probes_needs_the_key(gated: BackgroundServer, http: httpx.Client) -> None:
    documented = [(concrete(path), method.upper()) for path, operations in gated.app.openapi()["paths"].items()
                  for method in operations]
    routes = documented + [(r.path, "GET") for r in gated.app.routes if getattr(r, "methods", None)]
    assert len(routes) >= 20 and ("/docs", "GET") in routes and ("/openapi.json", "GET") in routes
    probes = {"/v2/health/live", "/v2/health/ready"}
    for path, method in routes:
        bare = http.request(method, path)
        assert (bare.status_code == 401) == (path not in probes), (method, path, bare.status_code)
        missing = "this route needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        if path.startswith("/v1/"):  # the OpenAI routes answer in OpenAI's error shape
            assert bare.json() == {"error": {"message": missing, "type": "authentication_error", "param": None,
                                             "code": None}}
        elif path not in probes:
            assert bare.json() == {"error": missing}
        keyed = http.request(method, path, headers={"authorization": f"Bearer {API_KEY}"})
        assert keyed.status_code != 401, (method, path)


def test_public_metrics_opens_metrics_only() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    for public, expected in ((True, 200), (False, 401)):
        gate = ApiKeyGate(app, API_KEY, public_metrics=public, metrics=ServiceMetrics())
        with serve_in_thread(gate) as running, httpx.Client(base_url=running.url) as client:
            assert client.get("/metrics").status_code == expected
            assert client.get("/v2").status_code == 401
            assert client.get("/v2/health/live").status_code == 200


def test_answers_show_no_server_paths(strict_client: httpx.Client, broken_repository: Path) -> None:
    index = strict_client.post("/v2/repository/index", headers=KEY).text
    answers = [index, strict_client.get("/v2/health/ready").text,
               strict_client.get("/v2/models/vit-broken/ready", headers=KEY).text]
    reasons = {m["name"]: m["reason"] for m in json.loads(index)}
    assert "vit-broken" in reasons["vit-broken"] or "model.onnx" in reasons["vit-broken"]
    for text in answers:
        assert str(broken_repository.resolve()) not in text and str(broken_repository) not in text
        assert not re.search(r"(?<![\w.])/(tmp|home|usr|var|work|root)/", text), text


def huge(digits: int = 5000) -> str:
    return "9" * digits


def with_huge(text: str) -> str:
    """``text`` with HUGE replaced by an integer of more digits than Python converts by default."""
    return text.replace("HUGE", huge())


@pytest.mark.parametrize(("path", "body", "message"), [
    (INFER, with_huge('{"inputs":[{"name":"pixel_values","shape":[1],"datatype":"FP32","data":[HUGE]}]}'),
     "integers may have at most"),
    (INFER, with_huge('{"id":HUGE,"inputs":[]}'), "integers may have at most"),
    ("/v2/repository/index", with_huge('{"ready":HUGE}'), "integers may have at most"),
    ("/api/compare", with_huge('{"family":"vit_tiny","rounds":HUGE}'), "integers may have at most"),
    (INFER, json.dumps({**json_request(images(1)), "parameters": {"timeout": 10**400}}), "up to 2^64 - 1"),
    ("/v2/models/bert-dyt/infer", json.dumps({"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64",
                                                          "data": [10**30]}]}), "outside the range of INT64"),
    ("/api/compare", json.dumps({"family": "vit_tiny", "rounds": 10**400}), "rounds"),
])
def test_huge_numbers_are_precise_400s(http: httpx.Client, caplog: pytest.LogCaptureFixture, path: str, body: str,
                                       message: str) -> None:
    with caplog.at_level(logging.INFO):
        response = http.post(path, content=body, headers={**KEY, "content-type": "application/json"})
    assert response.status_code == 400 and message in response.json()["error"], response.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_huge_length_headers_are_refused(gated: BackgroundServer, http: httpx.Client) -> None:
    raw = connect(gated.address)
    try:
        raw.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Length: {huge()}\r\n\r\n{{"
                    .encode())
        status, body = reply_of(raw)
    finally:
        raw.close()
    assert status in (400, 413), body  # uvicorn's parser may refuse it first
    header = http.post(INFER, content=b"{}", headers={**KEY, "inference-header-content-length": huge()})
    assert header.status_code == 400 and "Inference-Header-Content-Length" in header.json()["error"]


def test_a_json_body_over_its_limit_points_to_the_binary_extension(http: httpx.Client) -> None:
    body = b"[" + b"0.0," * (JSON_LIMIT // 4) + b"0.0]"
    response = http.post(INFER, content=body, headers={**KEY, "content-type": "application/json"})
    assert response.status_code == 413 and "binary tensor extension" in response.json()["error"]
    binary = http.post(INFER, content=b"{}" + body, headers={**KEY, "inference-header-content-length": "2"})
    assert binary.status_code == 400  # a binary-extension body of that size is read (and refused as malformed)
    digits = b"[" + ",".join(str(x) for x in np.random.default_rng(0).random(JSON_LIMIT // 10)).encode() + b"]"
    packed = http.post(INFER, content=gzip.compress(digits), headers={**KEY, "content-encoding": "gzip"})
    assert packed.status_code == 413 and f"limit of {JSON_LIMIT} bytes" in packed.json()["error"]  # JSON's, inflated


def test_the_json_part_of_a_binary_request_obeys_the_json_limit(gated: BackgroundServer, http: httpx.Client) -> None:
    """An all-JSON body announced as a binary-extension request whose JSON part is all of it is
    refused at once, before its body is read."""
    length = JSON_LIMIT * 3
    raw = start_request(gated.address, INFER, length, b"{", headers={**KEY, "Inference-Header-Content-Length":
                                                                     str(length)})
    try:
        status, body = reply_of(raw, timeout_s=BODY_TIMEOUT_S / 2)
    finally:
        raw.close()
    assert status == 413 and b"the JSON part of" in body and b"binary tensor extension" in body
    request = json.dumps(json_request(images(1))).encode()
    fits = http.post(INFER, content=request, headers={**KEY, "Inference-Header-Content-Length": str(len(request))})
    assert fits.status_code == 200  # a JSON part within the limit is served as before


def test_inflated_bytes_count_in_flight(gated: BackgroundServer, http: httpx.Client) -> None:
    """A small gzip body is counted for what it inflates to (worst case first): with most of the
    in-flight bound held, it is refused where its compressed size alone would fit."""
    packed = gzip.compress(json.dumps(json_request(images(1))).encode())
    binary = {**KEY, "Inference-Header-Content-Length": "2"}
    held = [start_request(gated.address, INFER, size, b"{}", f"127.0.0.{20 + i}", binary)
            for i, size in enumerate((BODY_LIMIT, INFLIGHT_BYTES - BODY_LIMIT - (512 << 10)))]
    try:
        time.sleep(0.2)
        refused = http.post(INFER, content=packed, headers={**KEY, "content-encoding": "gzip"})
        assert refused.status_code == 503 and "bytes of requests in flight" in refused.json()["error"]
    finally:
        close_all(held)
    deadline = time.monotonic() + 5
    while (answer := http.post(INFER, content=packed, headers={**KEY, "content-encoding": "gzip"})).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)


def test_a_compressed_bomb_is_refused_by_its_ratio(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (JSON_LIMIT // 2))  # ~1000 times smaller than what it inflates to
    refused = http.post(INFER, content=bomb, headers={**KEY, "content-encoding": "gzip"})
    assert refused.status_code == 413 and "more than 100 times" in refused.json()["error"], refused.text


def test_bytes_in_flight_are_bounded(gated: BackgroundServer, http: httpx.Client) -> None:
    binary = {**KEY, "Inference-Header-Content-Length": "2"}
    held = [start_request(gated.address, INFER, BODY_LIMIT - 64, b"{}", f"127.0.0.{5 + i}", binary) for i in range(2)]
    try:
        time.sleep(0.2)
        late = start_request(gated.address, INFER, 1 << 20, b"{}", "127.0.0.7", binary)
        status, body = reply_of(late, timeout_s=BODY_TIMEOUT_S / 2)
        late.close()
        assert status == 503 and b"bytes of requests in flight" in body
        # a small JSON body counts 16 times its size: it fits only once the big ones are gone
        assert http.post(INFER, json=json_request(images(1)), headers=KEY).status_code == 503
    finally:
        close_all(held)
    deadline = time.monotonic() + 5
    while http.post(INFER, json=json_request(images(1)), headers=KEY).status_code != 200:
        assert time.monotonic() < deadline, "the bytes of closed requests were not released"
        time.sleep(0.05)


def comparison_running(http: httpx.Client) -> str | None:
    return http.get("/api/live", headers=KEY).json()["comparison_running"]


def test_a_comparison_stops_when_its_client_leaves(gated: BackgroundServer, http: httpx.Client) -> None:
    assert http.post("/api/compare", json={"family": "vit_tiny", "rounds": MAX_ROUNDS + 1},
                     headers=KEY).status_code == 400
    assert http.post("/api/compare", json={"family": "vit_tiny", "dims": {"batch": 9}}, headers=KEY).status_code == 400
    body = json.dumps({"family": "vit_tiny", "rounds": MAX_ROUNDS, "warmup": 0}).encode()
    raw = start_request(gated.address, "/api/compare", len(body), body)
    deadline = time.monotonic() + 10
    while comparison_running(http) is None:
        assert time.monotonic() < deadline, "the comparison did not start"
        time.sleep(0.02)
    raw.close()  # MAX_ROUNDS rounds of two variants would take tens of seconds
    left = time.monotonic()
    while comparison_running(http) is not None:
        assert time.monotonic() - left < 3, "the comparison went on after its client left"
        time.sleep(0.02)
    assert http.get("/api/compare/vit_tiny", headers=KEY).status_code == 404  # nothing kept of it
    again = http.post("/api/compare", json={"family": "vit_tiny", "rounds": 3, "warmup": 0}, headers=KEY)
    assert again.status_code == 200 and again.json()["rounds"] == 3


def head_answer(address: str, head: bytes) -> tuple[int | None, float]:
    """Send a request head in 16 KiB pieces (as far as the server takes them) and read its answer:
    the status (None: the connection was reset, its answer lost) and the seconds it took."""
    raw = connect(address)
    started = time.monotonic()
    try:
        for start in range(0, len(head), 16 << 10):
            raw.sendall(head[start:start + (16 << 10)])
        status: int | None = reply_of(raw)[0]
    except (ConnectionResetError, BrokenPipeError):
        status = None
    finally:
        raw.close()
    return status, time.monotonic() - started


@pytest.mark.parametrize("headers", [b"X-Pad: " + b"a" * (4 << 20) + b"\r\n", b"X-A: b\r\n" * (256 << 10)],
                         ids=["one long header", "many headers"])
def test_oversized_headers_are_refused_at_once(gated: BackgroundServer, http: httpx.Client, headers: bytes) -> None:
    """MiBs of headers on a request without the key: refused (431, or the connection closed) once
    past the limit, not read in full before the 401."""
    status, seconds = head_answer(gated.address, b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status in (431, None) and seconds < 2, (status, seconds)
    assert http.get("/v2", headers=KEY).status_code == 200
    ordinary = b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() + b"\r\n" + b"X-A: b\r\n" * 2000
    assert head_answer(gated.address, ordinary + b"\r\n")[0] == 200  # 18 KB of headers are fine
