"""Every route of the service, over HTTP against a real uvicorn server on loopback."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from service_testlib import API_KEY, images, json_request

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from service.protocol import oip as protocol


def test_server_metadata_lists_the_extensions(client: httpx.Client) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "dyt-deploy" and body["version"]
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(body["extensions"])


def test_health(client: httpx.Client) -> None:
    live, ready = client.get("/v2/health/live"), client.get("/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})


@pytest.mark.parametrize("prefix", ["/v2/models/vit-dyt", "/v2/models/vit-dyt/versions/1"])
def test_model_metadata_ready_config_with_and_without_version(client: httpx.Client, prefix: str) -> None:
    metadata = client.get(prefix).json()
    assert metadata["name"] == "vit-dyt" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    assert metadata["parameters"] == {"family": "vit_tiny", "norm": "dyt"}
    assert client.get(f"{prefix}/ready").json() == {"name": "vit-dyt", "ready": True}
    config = client.get(f"{prefix}/config").json()
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "pixel_values", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]


def test_unknown_model_and_version_are_404_with_an_error_body(client: httpx.Client) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/nope/config", "/v2/models/nope/stats"):
        response = client.get(path)
        assert response.status_code == 404 and "unknown model 'nope'" in response.json()["error"]
        assert "vit-dyt" in response.json()["error"]  # the message lists what exists
    response = client.get("/v2/models/vit-dyt/versions/7")
    assert response.status_code == 404 and "no version '7'" in response.json()["error"]
    assert client.post("/v2/models/nope/infer", json=json_request(images())).status_code == 404


def test_unknown_route_and_method_answer_in_the_protocol_shape(client: httpx.Client) -> None:
    missing = client.get("/v3/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = client.get("/v2/models/vit-dyt/infer")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


@pytest.mark.parametrize("model", ["vit-layernorm", "vit-dyt"])
def test_json_infer_equals_the_in_process_runner(client: httpx.Client, reference: dict[str, OnnxRuntimeRunner],
                                                 model: str) -> None:
    x = images(3, seed=1)
    response = client.post(f"/v2/models/{model}/infer", json={**json_request(x), "id": "req-1"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == model and body["model_version"] == "1" and body["id"] == "req-1"
    logits = np.asarray(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
    np.testing.assert_allclose(logits, reference[model].infer({"pixel_values": x})["logits"], rtol=1e-5, atol=1e-6)


def test_binary_infer_over_the_versioned_route(client: httpx.Client, reference: dict[str, OnnxRuntimeRunner]) -> None:
    x = images(2, seed=2)
    body, headers = protocol.encode_binary_request({"pixel_values": x})
    response = client.post("/v2/models/vit-dyt/versions/1/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = response.headers["inference-header-content-length"]
    assert len(response.content) == int(length) + 2 * 1000 * 4
    logits = protocol.decode_binary_response(response.content, length)["logits"]
    np.testing.assert_array_equal(logits, reference["vit-dyt"].infer({"pixel_values": x})["logits"])


def test_gzip_encoded_request_is_inflated(client: httpx.Client) -> None:
    import gzip
    raw = json.dumps(json_request(images(1))).encode()
    response = client.post("/v2/models/vit-dyt/infer", content=gzip.compress(raw),
                           headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 1000]


def test_statistics_count_requests_and_time(client: httpx.Client) -> None:
    before = client.get("/v2/models/vit-layernorm/stats").json()["model_stats"][0]
    for _ in range(2):
        assert client.post("/v2/models/vit-layernorm/infer", json=json_request(images(2))).status_code == 200
    assert client.post("/v2/models/vit-layernorm/infer", json=json_request(images(2)[:, :2])).status_code == 400
    after = client.get("/v2/models/vit-layernorm/versions/1/stats").json()["model_stats"][0]
    stats, old = after["inference_stats"], before["inference_stats"]
    assert after["name"] == "vit-layernorm" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 4  # batch items
    assert after["execution_count"] - before["execution_count"] == 2
    assert stats["success"]["count"] - old["success"]["count"] == 2
    assert stats["fail"]["count"] - old["fail"]["count"] == 1
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[stage]["count"] - old[stage]["count"] == 2
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert stats["success"]["ns"] - old["success"]["ns"] >= stats["compute_infer"]["ns"] - old["compute_infer"]["ns"]
    assert any(b["batch_size"] == 2 for b in after["batch_stats"]) and after["last_inference"] > 0
    everything = client.get("/v2/models/stats").json()["model_stats"]
    assert {s["name"] for s in everything} == {"vit-layernorm", "vit-dyt", "bert-dyt"}


def test_repository_index(client: httpx.Client) -> None:
    index = client.post("/v2/repository/index").json()
    assert index == [{"name": name, "version": "1", "state": "READY", "reason": ""}
                     for name in ("bert-dyt", "vit-dyt", "vit-layernorm")]
    assert len(client.post("/v2/repository/index", json={"ready": True}).json()) == 3


def test_metrics_have_sub_millisecond_buckets_labelled_by_model_and_variant(client: httpx.Client) -> None:
    assert client.post("/v2/models/vit-dyt/infer", json=json_request(images(1))).status_code == 200
    text = client.get("/metrics").text
    assert '# TYPE dyt_compute_infer_duration_seconds histogram' in text
    bucket = 'dyt_compute_infer_duration_seconds_bucket{family="vit_tiny",le="0.00016",model="vit-dyt",variant="dyt"}'
    assert bucket in text
    assert 'dyt_request_duration_seconds_count{family="vit_tiny",model="vit-dyt",variant="dyt"}' in text
    assert 'dyt_model_ready{family="vit_tiny",model="vit-layernorm",variant="layernorm"} 1.0' in text
    assert 'dyt_inference_requests_total{family="vit_tiny",model="vit-dyt",outcome="success",variant="dyt"}' in text


def test_openapi_document_describes_the_routes(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path, method in [("/v2", "get"), ("/v2/health/live", "get"), ("/v2/health/ready", "get"),
                         ("/v2/models/{model_name}", "get"),
                         ("/v2/models/{model_name}/versions/{model_version}", "get"),
                         ("/v2/models/{model_name}/ready", "get"), ("/v2/models/{model_name}/config", "get"),
                         ("/v2/models/{model_name}/stats", "get"), ("/v2/models/stats", "get"),
                         ("/v2/models/{model_name}/infer", "post"),
                         ("/v2/models/{model_name}/versions/{model_version}/infer", "post"),
                         ("/v2/repository/index", "post"), ("/api/live", "get"), ("/api/compare", "post"),
                         ("/metrics", "get"), ("/", "get")]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from the OpenAPI document"
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert "InferenceRequest" in document["components"]["schemas"]
    assert "400" in infer["responses"] and "503" in infer["responses"]
    assert not [p for p, ops in paths.items() for op in ops.values() if "422" in op["responses"]]
    assert {"APIKeyHeader", "HTTPBearer"} <= set(document["components"]["securitySchemes"])


def test_dashboard_page_is_self_contained(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "/api/live" in response.text and "/api/compare" in response.text
    assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "")  # no CDN


def token_request(ids: np.ndarray, mask: np.ndarray) -> dict:
    return {"inputs": [{"name": "input_ids", "shape": list(ids.shape), "datatype": "INT64", "data": ids.tolist()},
                       {"name": "attention_mask", "shape": list(mask.shape), "datatype": "INT64",
                        "data": mask.ravel().tolist()}]}


def test_int64_inputs_with_two_dynamic_dims(client: httpx.Client, reference: dict[str, OnnxRuntimeRunner]) -> None:
    metadata = client.get("/v2/models/bert-dyt").json()
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1])]
    ids = np.random.default_rng(5).integers(0, 1024, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, 5:] = 0
    response = client.post("/v2/models/bert-dyt/infer", json=token_request(ids, mask))
    assert response.status_code == 200, response.text
    logits = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(2, 2)
    want = reference["bert-dyt"].infer({"input_ids": ids, "attention_mask": mask})["logits"]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    mismatch = client.post("/v2/models/bert-dyt/infer", json=token_request(ids, mask[:, :6]))
    assert mismatch.status_code == 400 and "(seq) is 6, another input has seq=7" in mismatch.json()["error"]


def test_a_request_timeout_that_runs_out_is_a_504_and_the_model_stays_usable(client: httpx.Client) -> None:
    """Triton's reserved ``timeout`` parameter, in microseconds: 1 µs cannot cover even the hop to the worker."""
    body = {**json_request(images(1)), "parameters": {"timeout": 1}}
    response = client.post("/v2/models/vit-dyt/infer", json=body)
    assert response.status_code == 504
    assert "within the request's timeout of 1 µs" in response.json()["error"]
    generous = {**json_request(images(1)), "parameters": {"timeout": 60_000_000}}
    assert client.post("/v2/models/vit-dyt/infer", json=generous).status_code == 200
    no_limit = {**json_request(images(1)), "parameters": {"timeout": 0}}
    assert client.post("/v2/models/vit-dyt/infer", json=no_limit).status_code == 200


def test_a_request_timeout_also_bounds_the_batching_queue(strict_client: httpx.Client) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    body = {**json_request(images(1)), "parameters": {"timeout": 1}}
    response = strict_client.post("/v2/models/vit-dyt/infer", json=body, headers=key)
    assert response.status_code == 504
    assert strict_client.post("/v2/models/vit-dyt/infer", json=json_request(images(1)), headers=key).status_code == 200


@pytest.mark.parametrize("value", [-1, 1.5, "100", True])
def test_a_malformed_request_timeout_is_a_400(client: httpx.Client, value: object) -> None:
    body = {**json_request(images(1)), "parameters": {"timeout": value}}
    response = client.post("/v2/models/vit-dyt/infer", json=body)
    assert response.status_code == 400 and "non-negative integer number of microseconds" in response.json()["error"]
