"""Bad input never hurts the server: each case is a clear 4xx with an ``{"error"}`` body, and a
valid request right after it is answered."""

from __future__ import annotations

import gzip
import json
import socket

import httpx
import numpy as np
import pytest
from service_testlib import API_KEY, STRICT_BODY_LIMIT, BackgroundServer, images, json_request

from service.protocol import oip as protocol

URL = "/v2/models/vit-dyt/infer"


def binary_parts(x: np.ndarray, size: int | None = None) -> tuple[bytes, bytes]:
    """The JSON header (declaring ``size`` binary bytes, default the true size) and the tensor bytes."""
    blob = x.tobytes()
    header = {"inputs": [{"name": "pixel_values", "shape": list(x.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": len(blob) if size is None else size}}]}
    return json.dumps(header).encode(), blob


def with_field(**changes: object) -> bytes:
    request = json_request(images(1))
    request["inputs"][0].update(changes)
    return json.dumps(request).encode()


def nonfinite_binary(value: float) -> tuple[bytes, dict[str, str]]:
    x = images(1)
    x[0, 0, 0, 0] = value
    return protocol.encode_binary_request({"pixel_values": x})


HEADER, BLOB = binary_parts(images(1))
SHORT_HEADER, _ = binary_parts(images(1), size=len(BLOB) - 4)
JSON_HEADERS = {"content-type": "application/json"}

CASES: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "malformed json": (b'{"inputs": [', JSON_HEADERS, 400, "not valid JSON"),
    "empty body": (b"", {}, 400, "not valid JSON"),
    "not utf-8": (b"\xff\xfe{}", {}, 400, "not valid JSON"),
    "json list": (b"[]", JSON_HEADERS, 400, "must be an object"),
    "no inputs": (b"{}", JSON_HEADERS, 400, "non-empty 'inputs'"),
    "wrong input name": (with_field(name="image"), {}, 400, "unknown input 'image'"),
    "wrong datatype": (with_field(datatype="FP64"), {}, 400, "'pixel_values' is FP64, the model takes FP32"),
    "unknown datatype": (with_field(datatype="FLOAT32"), {}, 400, "unknown datatype 'FLOAT32'"),
    "wrong rank": (with_field(shape=[3, 32, 32], data=[0.0] * 3072), {}, 400, "the model takes rank 4"),
    "too many dims": (with_field(shape=[1, 1, 3, 32, 32], data=[0.0] * 3072), {}, 400, "the model takes rank 4"),
    "wrong static dim": (with_field(shape=[1, 3, 32, 16], data=[0.0] * 1536), {}, 400, "dim 3 is 16"),
    "data too short": (with_field(data=[0.0] * 100), {}, 400, "'data' has 100 elements, but shape"),
    "huge shape small data": (with_field(shape=[10**9, 3, 32, 32], data=[0.0]), {}, 400, "'data' has 1 elements"),
    "batch over max": (with_field(shape=[33, 3, 32, 32], data=[0.0] * 33 * 3072), {}, 400, "max_batch_size 32"),
    "strings as data": (with_field(data=["x"] * 3072), {}, 400, "not numbers"),
    "ragged data": (with_field(data=[[0.0] * 3, [0.0]]), {}, 400, "ragged"),
    "nan in json": (with_field(data=[float("nan")] * 3072), {}, 400, "holds NaN or Inf"),
    "nan in binary": (*nonfinite_binary(float("nan")), 400, "holds NaN or Inf"),
    "inf in binary": (*nonfinite_binary(float("inf")), 400, "holds NaN or Inf"),
    "binary size mismatch": (SHORT_HEADER + BLOB[:-4], {"inference-header-content-length": str(len(SHORT_HEADER))},
                             400, "binary bytes, but shape"),
    "binary shorter than declared": (HEADER + BLOB[:-8], {"inference-header-content-length": str(len(HEADER))},
                                     400, "runs past the end of the body"),
    "binary longer than declared": (HEADER + BLOB + b"xx", {"inference-header-content-length": str(len(HEADER))},
                                    400, "add up to"),
    "header length over body": (HEADER, {"inference-header-content-length": str(len(HEADER) + 10)}, 400,
                                "does not fit"),
    "header length not a number": (HEADER + BLOB, {"inference-header-content-length": "abc"}, 400,
                                   "not an integer"),
    "unknown output": (json.dumps({**json_request(images(1)), "outputs": [{"name": "probs"}]}).encode(), {}, 400,
                       "unknown output 'probs'"),
    "bad content encoding": (b"xx", {"content-encoding": "br"}, 400, "unsupported Content-Encoding"),
    "corrupt gzip": (b"not gzip", {"content-encoding": "gzip"}, 400, "not valid gzip"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_a_clear_4xx_and_the_server_keeps_serving(client: httpx.Client, case: str) -> None:
    body, headers, status, message = CASES[case]
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.post(URL, json=json_request(images(1))).status_code == 200


def test_version_route_and_unready_paths_answer_errors(client: httpx.Client) -> None:
    assert client.post("/v2/models/vit-dyt/versions/2/infer", json=json_request(images(1))).status_code == 404
    assert client.post("/v2/repository/index", content=b"{oops").status_code == 400


def auth() -> dict[str, str]:
    return {"x-api-key": API_KEY}


def test_oversized_body_by_content_length_is_413(strict_client: httpx.Client) -> None:
    response = strict_client.post(URL, content=b"x" * (STRICT_BODY_LIMIT + 1), headers=auth())
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    assert strict_client.get("/v2/health/live").status_code == 200


def test_oversized_streamed_body_is_413(strict_client: httpx.Client) -> None:
    def chunks():  # no Content-Length: chunked transfer, counted while it arrives
        for _ in range(8):
            yield b"x" * (STRICT_BODY_LIMIT // 4)

    response = strict_client.post(URL, content=chunks(), headers=auth())
    assert response.status_code == 413 and "at least" in response.json()["error"]


def test_gzip_bomb_is_413(strict_client: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (STRICT_BODY_LIMIT * 4))
    assert len(bomb) < STRICT_BODY_LIMIT
    response = strict_client.post(URL, content=bomb, headers={**auth(), "content-encoding": "gzip"})
    assert response.status_code == 413 and "inflated" in response.json()["error"]
    ok = strict_client.post(URL, json=json_request(images(1)), headers=auth())
    assert ok.status_code == 200


def test_garbage_on_the_socket_does_not_stop_the_server(server: BackgroundServer, client: httpx.Client) -> None:
    host, port = server.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\x00\x01\r\n\r\n")
        reply = raw.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert client.post(URL, json=json_request(images(1))).status_code == 200


def test_compare_route_validates_its_body(client: httpx.Client) -> None:
    cases = [({"family": "vit_tiny", "rounds": 0}, 400, "rounds"),
             ({"rounds": 3}, 400, "family"),
             ({"family": "vit_tiny", "rounds": 100000}, 400, "over the limit"),
             ({"family": "vit_tiny", "dims": {"seq": 4}}, 400, "unknown dim(s) seq"),
             ({"family": "vit_tiny", "dims": {"batch": 64}}, 400, "comparison's limit of 8"),
             ({"family": "nope"}, 404, "unknown family 'nope'")]
    for body, status, message in cases:
        response = client.post("/api/compare", json=body)
        assert response.status_code == status and message in response.json()["error"], (body, response.text)
    assert client.post("/api/compare", content=b"{", headers=JSON_HEADERS).status_code == 400
