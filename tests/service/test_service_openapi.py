"""The OpenAPI document says what the server does: for each request below, the documented body
schema accepts it exactly when the server serves it (the bounds come from the server's settings:
/api/compare's rounds and batch; an inference input needs data or binary_data_size, not both)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
from service_testlib import images, json_request

from service.protocol.oip import encode_binary_request
from service.settings import Settings

INFER = "/v2/models/vit-dyt/infer"
INFER_DOCUMENTED = "/v2/models/{model_name}/infer"
DEFAULTS = Settings()


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The JSON body schema of POST ``path``, its references resolvable."""
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {**schema, "components": document["components"]}


def documented(document: dict[str, Any], path: str, body: Any) -> bool:
    return jsonschema.Draft202012Validator(body_schema(document, path)).is_valid(body)


def with_input(**fields: Any) -> dict[str, Any]:
    request = json_request(images(1))
    request["inputs"][0] = {k: v for k, v in {**request["inputs"][0], **fields}.items() if v is not None}
    return request


INFER_BODIES = {
    "json data": with_input(),
    "no data": with_input(data=None),
    "data and binary_data_size": with_input(parameters={"binary_data_size": 12288}),
}
COMPARE_BODIES = {
    "a short comparison": {"family": "vit_tiny", "rounds": 2, "warmup": 0},
    "rounds over the limit": {"family": "vit_tiny", "rounds": DEFAULTS.compare_max_rounds + 1},
    "no rounds": {"family": "vit_tiny", "rounds": 0},
    "rounds as text": {"family": "vit_tiny", "rounds": "2", "warmup": 0},
    "batch over the limit": {"family": "vit_tiny", "dims": {"batch": DEFAULTS.compare_max_batch + 1}},
    "batch 0": {"family": "vit_tiny", "dims": {"batch": 0}, "rounds": 2},
}


@pytest.mark.parametrize("case", INFER_BODIES)
def test_the_inference_schema_accepts_what_the_server_serves(client: httpx.Client, case: str) -> None:
    body = INFER_BODIES[case]
    answer = client.post(INFER, json=body)
    assert answer.status_code in (200, 400), answer.text
    document = client.get("/openapi.json").json()
    assert documented(document, INFER_DOCUMENTED, body) == (answer.status_code == 200), answer.text


def test_a_binary_requests_json_part_is_documented(client: httpx.Client) -> None:
    body, headers = encode_binary_request({"pixel_values": images(1)})
    header = json.loads(body[:int(next(iter(headers.values())))])
    assert client.post(INFER, content=body, headers=headers).status_code == 200
    assert documented(client.get("/openapi.json").json(), INFER_DOCUMENTED, header)


@pytest.mark.parametrize("case", COMPARE_BODIES)
def test_the_comparison_schema_accepts_what_the_server_runs(client: httpx.Client, case: str) -> None:
    body = COMPARE_BODIES[case]
    answer = client.post("/api/compare", json=body)
    assert answer.status_code in (200, 400), answer.text
    document = client.get("/openapi.json").json()
    assert documented(document, "/api/compare", body) == (answer.status_code == 200), answer.text


def test_the_documented_bounds_are_the_servers_settings(client: httpx.Client) -> None:
    schema = body_schema(client.get("/openapi.json").json(), "/api/compare")
    assert schema["properties"]["rounds"]["maximum"] == DEFAULTS.compare_max_rounds
    assert schema["properties"]["dims"]["properties"]["batch"]["maximum"] == DEFAULTS.compare_max_batch
    assert np.isscalar(schema["properties"]["rounds"]["minimum"])
