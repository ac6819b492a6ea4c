"""An fp16 model served end to end: FP16 in the metadata and the config, FP16 tensors as JSON and
as binary through tritonclient, outputs equal to the in-process runner's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from service_testlib import images, serve_in_thread
from tritonclient.utils import InferenceServerException

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from service.http.app import create_app
from service.settings import Settings

MODEL = "vit-fp16"


@pytest.fixture(scope="module")
def fp16_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/vit-fp16: a depth-1 DyT ViT on 32x32 images exported with dtype fp16."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    tmp = tmp_path_factory.mktemp("service-fp16")
    save_checkpoint(create_model("vit_tiny", norm="dyt", depth=1, img_size=32), tmp / "vit.pt")
    export_onnx(tmp / "vit.pt", repository=tmp / "repo", name=MODEL, dtype="fp16")
    return tmp / "repo"


@pytest.fixture(scope="module")
def triton(fp16_repository: Path) -> Iterator[httpclient.InferenceServerClient]:
    with serve_in_thread(create_app(fp16_repository, Settings(threads=1, warmup_runs=1))) as running:
        client = httpclient.InferenceServerClient(url=running.address, network_timeout=30)
        yield client
        client.close()


@pytest.fixture(scope="module")
def fp16_reference(fp16_repository: Path) -> Iterator[OnnxRuntimeRunner]:
    runner = OnnxRuntimeRunner(fp16_repository / MODEL / "1" / "model.onnx", threads=1)
    runner.activate()
    yield runner
    runner.deactivate()


def test_an_fp16_model_is_described_as_fp16(triton: httpclient.InferenceServerClient) -> None:
    metadata = triton.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "pixel_values", "datatype": "FP16", "shape": [-1, 3, 32, 32]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP16", "shape": [-1, 1000]}]
    config = triton.get_model_config(MODEL)
    assert config["input"][0]["data_type"] == "TYPE_FP16" and config["output"][0]["data_type"] == "TYPE_FP16"


@pytest.mark.parametrize("binary", [False, True])
def test_fp16_tensors_equal_the_in_process_runner(triton: httpclient.InferenceServerClient,
                                                  fp16_reference: OnnxRuntimeRunner, binary: bool) -> None:
    x = images(2, seed=16).astype(np.float16)
    tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP16")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = triton.infer(MODEL, [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)])
    assert result.get_output("logits")["datatype"] == "FP16"
    logits = result.as_numpy("logits")
    assert logits.dtype == np.float16 and logits.shape == (2, 1000)
    np.testing.assert_array_equal(logits, fp16_reference.infer({"pixel_values": x})["logits"])


def test_fp32_tensors_are_refused_by_an_fp16_model(triton: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("pixel_values", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(images(1))
    with pytest.raises(InferenceServerException, match="'pixel_values' is FP32, the model takes FP16") as refused:
        triton.infer(MODEL, [tensor])
    assert refused.value.status() == "400"
