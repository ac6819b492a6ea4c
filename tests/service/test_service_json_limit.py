"""The JSON limit of an inference body is the model's own largest valid request (max batch of every
input, each number at its longest JSON text), within the server's budget ``max_json_bytes``: a
224x224 ViT takes batch 3 (8.9 MB of JSON, over the 8 MiB the limit once was) and its max batch
over JSON through a real server; a body over the limit is a 413 that points to binary tensors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from service_testlib import BackgroundServer, serve_in_thread

from service.http.app import create_app
from service.protocol import oip as protocol
from service.settings import Settings

IMAGE = 224
MAX_BATCH = 4
INFER = "/v2/models/vit224/infer"


@pytest.fixture(scope="module")
def vit224(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """A depth-1 ViT on 224x224 images whose config.pbtxt allows batches up to MAX_BATCH."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    tmp = tmp_path_factory.mktemp("vit224")
    save_checkpoint(create_model("vit_tiny", norm="dyt", depth=1, img_size=IMAGE), tmp / "vit.pt")
    export_onnx(tmp / "vit.pt", repository=tmp / "repo", name="vit224", verify=False)
    config = tmp / "repo" / "vit224" / "config.pbtxt"
    config.write_text(re.sub(r"max_batch_size: \d+", f"max_batch_size: {MAX_BATCH}", config.read_text()))
    with serve_in_thread(create_app(tmp / "repo", Settings(threads=1, warmup_runs=0))) as running:
        yield running


def json_body(batch: int) -> bytes:
    images = np.random.default_rng(batch).standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "pixel_values", "shape": list(images.shape), "datatype": "FP32",
                                   "data": images.ravel().tolist()}]}).encode()


@pytest.mark.parametrize("batch", [3, MAX_BATCH])
def test_the_models_valid_json_requests_are_served(vit224: BackgroundServer, batch: int) -> None:
    body = json_body(batch)
    assert batch < 3 or len(body) > 8 << 20  # over the fixed limit the service once had
    with httpx.Client(base_url=vit224.url, timeout=60) as http:
        answer = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["outputs"][0]["shape"][0] == batch


def test_a_json_body_over_the_models_limit_points_to_binary_tensors(vit224: BackgroundServer) -> None:
    signature = vit224.app.state.service.registry.get("vit224").signature
    limit = protocol.json_body_limit(signature, Settings().max_json_bytes)
    body = json_body(MAX_BATCH + 2)
    assert len(body) > limit
    with httpx.Client(base_url=vit224.url, timeout=60) as http:
        answer = http.post(INFER, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 413, answer.text[:300]
    assert f"limit of {limit} bytes" in answer.json()["error"] and "binary tensor extension" in answer.json()["error"]


def test_the_limit_follows_the_model_and_the_budget() -> None:
    inputs = (protocol.TensorSignature("pixel_values", "FP32", ("batch", 3, IMAGE, IMAGE)),)
    small = protocol.Signature(inputs, (), max_batch_size=1)
    large = protocol.Signature(inputs, (), max_batch_size=64)
    open_ended = protocol.Signature((protocol.TensorSignature("ids", "INT64", ("batch", "seq")),), (), 8)
    budget = 64 << 20
    one = protocol.json_body_limit(small, budget)
    assert len(json_body(1)) < one < budget and protocol.json_body_limit(large, budget) == budget
    assert protocol.json_body_limit(open_ended, budget) == budget
