"""dyt-serve with an AOTInductor folder (1/model.pt2 + dyt.json, no config.pbtxt): a real uvicorn
server on loopback, the unchanged tritonclient (JSON and binary tensors) gets the in-process aoti
runner's outputs; metadata and /config name the aoti backend; the batch is dynamic up to Triton's
default max_batch_size. The folder is the session's one compiled package (tests/aoti_testlib.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from aoti_testlib import NAME, BuiltFolder, images, shared_folder
from service_testlib import BackgroundServer, serve_in_thread
from tritonclient.utils import InferenceServerException

from dyt_deploy.runners import runner_for_folder
from dyt_deploy.triton_config import DEFAULT_MAX_BATCH_SIZE
from service.http.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltFolder:
    folder = shared_folder(tmp_path_factory)
    assert folder.exit_code == 0, folder.output
    return folder


@pytest.fixture(scope="module")
def server(built: BuiltFolder) -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(built.repository, Settings(threads=1, warmup_runs=1))) as running:
        yield running


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.address, network_timeout=60)
    yield client
    client.close()


def _infer(client: httpclient.InferenceServerClient, x: np.ndarray, binary: bool) -> np.ndarray:
    tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = httpclient.InferRequestedOutput("logits", binary_data=binary)
    return client.infer(NAME, [tensor], outputs=[output]).as_numpy("logits")


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_answers_as_the_in_process_runner(client: httpclient.InferenceServerClient, built: BuiltFolder,
                                          binary: bool, batch: int) -> None:
    x = images(batch, seed=batch)
    got = _infer(client, x, binary)
    with runner_for_folder(built.folder, threads=1) as runner:
        expected = runner.infer({"pixel_values": x})["logits"]
    assert got.dtype == np.float32 and got.shape == (batch, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_metadata_and_config_name_the_aoti_backend(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_ready() and client.is_model_ready(NAME)
    metadata = client.get_model_metadata(NAME)
    assert metadata["platform"] == "aoti" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    config = client.get_model_config(NAME)
    assert config["backend"] == "aoti" and "platform" not in config
    assert config["max_batch_size"] == DEFAULT_MAX_BATCH_SIZE
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_a_batch_over_the_limit_is_refused(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="batch"):
        _infer(client, images(DEFAULT_MAX_BATCH_SIZE + 1), binary=True)
