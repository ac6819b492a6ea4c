"""The real tritonclient[http] client, unchanged, against the service: health, metadata, config,
statistics, and inference with JSON and binary tensors equal to the in-process runner."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from service_testlib import API_KEY, BackgroundServer, images
from tritonclient.utils import InferenceServerException

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def triton(server: BackgroundServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.address, network_timeout=30)
    yield client
    client.close()


def expected(reference: dict[str, OnnxRuntimeRunner], model: str, x: np.ndarray) -> np.ndarray:
    return reference[model].infer({"pixel_values": x})["logits"]


def infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, binary_in: bool,
          binary_out: bool | None, **kwargs: object) -> httpclient.InferResult:
    """One inference; ``binary_out`` None sends no outputs (the client then asks for binary)."""
    tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None if binary_out is None else [httpclient.InferRequestedOutput("logits", binary_data=binary_out)]
    return client.infer(model, [tensor], outputs=outputs, **kwargs)


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("vit-layernorm") and triton.is_model_ready("vit-dyt", "1")
    assert not triton.is_model_ready("missing")
    assert "statistics" in triton.get_server_metadata()["extensions"]
    metadata = triton.get_model_metadata("vit-dyt")
    assert metadata["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert triton.get_model_config("vit-layernorm")["max_batch_size"] == 32
    index = triton.get_model_repository_index()
    assert {m["name"] for m in index} == {"vit-dyt", "vit-layernorm", "bert-dyt"}


@pytest.mark.parametrize("model", ["vit-layernorm", "vit-dyt"])
@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (False, True), (True, False),
                                                       (True, None)])
def test_infer_equals_the_in_process_runner(triton: httpclient.InferenceServerClient,
                                            reference: dict[str, OnnxRuntimeRunner], model: str,
                                            binary_in: bool, binary_out: bool | None) -> None:
    x = images(2, seed=11)
    result = infer(triton, model, x, binary_in, binary_out, request_id="t-1")
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float32 and logits.shape == (2, 1000)
    np.testing.assert_allclose(logits, expected(reference, model, x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == model and response["id"] == "t-1"
    sent_binary = binary_out is not False
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == sent_binary


@pytest.mark.parametrize("binary", [False, True])
def test_classification_extension_returns_the_top_classes(triton: httpclient.InferenceServerClient,
                                                          reference: dict[str, OnnxRuntimeRunner],
                                                          binary: bool) -> None:
    """``class_count`` as tritonclient sends it: "<value>:<index>" strings, highest first, per image."""
    assert "classification" in triton.get_server_metadata()["extensions"]
    x = images(3, seed=5)
    tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=4)]
    top = triton.infer("vit-dyt", [tensor], outputs=wanted).as_numpy("logits")
    assert top.shape == (3, 4)
    logits = expected(reference, "vit-dyt", x)
    for row, entries in zip(logits, top, strict=True):
        # tritonclient gives bytes for binary BYTES tensors and str for JSON ones
        pairs = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in entries]
        assert [int(i) for _, i in pairs] == list(np.argsort(-row, kind="stable")[:4])
        np.testing.assert_allclose([float(v) for v, _ in pairs], np.sort(row)[::-1][:4], rtol=1e-5, atol=1e-5)


def test_classification_asking_for_more_classes_than_exist_is_a_400(triton: httpclient.InferenceServerClient) -> None:
    x = images(1, seed=5)
    tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="has 1000 classes; classification asked for 1001"):
        triton.infer("vit-dyt", [tensor], outputs=[httpclient.InferRequestedOutput("logits", class_count=1001)])
    assert triton.is_server_ready()


@pytest.mark.parametrize("binary", [False, True])
def test_int64_inputs_equal_the_in_process_runner(triton: httpclient.InferenceServerClient,
                                                  reference: dict[str, OnnxRuntimeRunner], binary: bool) -> None:
    rng = np.random.default_rng(9)
    feed = {"input_ids": rng.integers(0, 1024, (3, 5)), "attention_mask": np.ones((3, 5), np.int64)}
    tensors = []
    for name, array in feed.items():
        tensors.append(httpclient.InferInput(name, list(array.shape), "INT64"))
        tensors[-1].set_data_from_numpy(array, binary_data=binary)
    result = triton.infer("bert-dyt", tensors, outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("logits"), reference["bert-dyt"].infer(feed)["logits"],
                               rtol=1e-5, atol=1e-6)


def test_versioned_infer_and_statistics(triton: httpclient.InferenceServerClient) -> None:
    before = triton.get_inference_statistics("vit-dyt")["model_stats"][0]["inference_count"]
    result = infer(triton, "vit-dyt", images(4, seed=3), True, True, model_version="1")
    assert result.as_numpy("logits").shape == (4, 1000)
    stats = triton.get_inference_statistics("vit-dyt", "1")["model_stats"][0]
    assert stats["inference_count"] - before == 4
    assert stats["inference_stats"]["compute_infer"]["ns"] > 0


def test_errors_reach_the_client_with_status_and_message(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'missing'") as missing:
        triton.get_model_metadata("missing")
    assert missing.value.status() == "404"
    tensor = httpclient.InferInput("pixel_values", [1, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="dim 2 is 16, the model takes 32") as bad_shape:
        triton.infer("vit-dyt", [tensor])
    assert bad_shape.value.status() == "400"
    assert triton.is_server_live()


def test_api_key_through_client_headers(strict_server: BackgroundServer) -> None:
    client = httpclient.InferenceServerClient(url=strict_server.address, network_timeout=30)
    try:
        with pytest.raises(InferenceServerException, match="needs an API key") as refused:
            infer(client, "vit-dyt", images(1), True, True)
        assert refused.value.status() == "401"
        result = infer(client, "vit-dyt", images(1), True, True, headers={"Authorization": f"Bearer {API_KEY}"})
        assert result.as_numpy("logits").shape == (1, 1000)
    finally:
        client.close()
