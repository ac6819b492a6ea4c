"""dyt-serve with OpenVINO: an OpenVINO model folder (1/model.xml) beside an ONNX folder, and
``--backend openvino`` running the ONNX folder on OpenVINO too; real uvicorn servers on loopback and
the unchanged tritonclient (JSON and binary tensors) get the in-process runner's outputs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from service_testlib import BackgroundServer, images, serve_in_thread
from typer.testing import CliRunner

from dyt_deploy.export import export_onnx
from dyt_deploy.runners import runner_for_folder
from service.cli import app as serve_app
from service.cli import settings_from_options
from service.http.app import create_app
from service.settings import Settings

OV, ONNX = "vit-dyt-openvino", "vit-dyt"


@pytest.fixture(scope="module")
def mixed_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OpenVINO folder of the DyT ViT, exported from the same model.pt as the ONNX folder beside it."""
    repo = tmp_path_factory.mktemp("openvino-service") / "repo"
    export_onnx(repository.parent / "dyt.pt", repository=repo, name=OV, backend="openvino", samples=1)
    shutil.copytree(repository / ONNX, repo / ONNX)
    return repo


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def served(request: pytest.FixtureRequest, mixed_repository: Path) -> Iterator[tuple[BackgroundServer, str]]:
    """The repository served with each backend for .onnx folders; yields the server and the backend."""
    settings = Settings(threads=1, warmup_runs=1, backend=request.param)
    with serve_in_thread(create_app(mixed_repository, settings)) as running:
        yield running, request.param


def _in_process(folder: Path, backend: str, x: np.ndarray) -> tuple[str, np.ndarray]:
    with runner_for_folder(folder, backend=backend, threads=1) as runner:
        return runner.name, runner.infer({"pixel_values": x})["logits"]


def _infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, binary: bool) -> np.ndarray:
    tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = httpclient.InferRequestedOutput("logits", binary_data=binary)
    return client.infer(model, [tensor], outputs=[output]).as_numpy("logits")


@pytest.mark.parametrize("binary", [False, True])
def test_both_folders_answer_as_the_in_process_runner(served, mixed_repository: Path, binary: bool) -> None:
    server, backend = served
    x = images(2, seed=5)
    client = httpclient.InferenceServerClient(url=server.address, network_timeout=60)
    try:
        answers = {model: _infer(client, model, x, binary) for model in (OV, ONNX)}
    finally:
        client.close()
    runtimes = {}
    for model, got in answers.items():
        runtimes[model], expected = _in_process(mixed_repository / model, backend, x)
        assert got.dtype == np.float32 and got.shape == (2, 1000)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=model)
    assert runtimes == {OV: "openvino", ONNX: "openvino" if backend == "openvino" else "ort"}
    np.testing.assert_allclose(answers[OV], answers[ONNX], rtol=1e-3, atol=1e-4)  # one model, two runtimes


def test_metadata_and_config_name_the_openvino_backend(served) -> None:
    server, _ = served
    client = httpclient.InferenceServerClient(url=server.address, network_timeout=60)
    try:
        assert client.is_model_ready(OV) and client.is_model_ready(ONNX)
        assert client.get_model_metadata(OV)["platform"] == "openvino"
        config = client.get_model_config(OV)
        assert config["backend"] == "openvino" and "platform" not in config
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        assert client.get_model_config(ONNX)["platform"] == "onnxruntime_onnx"
    finally:
        client.close()


def test_dyt_serve_takes_backend(mixed_repository: Path) -> None:
    assert settings_from_options({"repository": mixed_repository, "backend": "openvino"}).backend == "openvino"
    result = CliRunner().invoke(serve_app, ["--repository", str(mixed_repository), "--backend", "tvm"])
    assert result.exit_code == 2 and "onnxruntime" in result.output and "openvino" in result.output
