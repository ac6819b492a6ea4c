"""The CPU image, built from docker/Dockerfile on a locally made Debian bookworm base and run with
podman: it serves the Open Inference Protocol (JSON and binary tensors) with the in-process
runner's answers, reports healthy, runs as a non-root user, and runs the CLI tools."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from container_testlib import Podman, Served, compose, free_port, json_infer, wait_ready

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner

pytestmark = pytest.mark.docker


def images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def test_image_is_configured_as_documented(podman: Podman, image: str) -> None:
    inspect = json.loads(podman.run("image", "inspect", image).stdout)[0]
    config = inspect["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/local/bin/dyt-entrypoint"]
    assert "/models" in config["Volumes"] and "8000/tcp" in config["ExposedPorts"]
    assert not any(e.startswith("DEBIAN_FRONTEND=") for e in config["Env"])  # a build-time setting only
    # podman shows the HEALTHCHECK beside Config (and keeps it only in docker-format images)
    assert inspect["Healthcheck"]["Test"] == ["CMD", "python3", "/usr/local/bin/dyt-healthcheck"]


def test_server_is_ready_healthy_and_not_root(podman: Podman, served: Served) -> None:
    assert httpx.get(f"{served.url}/v2/health/ready").json() == {"ready": True}
    assert podman.run("healthcheck", "run", served.id, check=False).returncode == 0  # the image's HEALTHCHECK
    assert podman.run("exec", served.id, "id", "-u").stdout.strip() == "10001"
    index = httpx.post(f"{served.url}/v2/repository/index").json()
    assert {(m["name"], m["state"]) for m in index} == {(n, "READY") for n in ("vit-layernorm", "vit-dyt", "bert-dyt")}


@pytest.mark.parametrize("model", ["vit-layernorm", "vit-dyt"])
def test_json_inference_equals_the_in_process_runner(served: Served, reference: dict[str, OnnxRuntimeRunner],
                                                     model: str) -> None:
    x = images(2, seed=5)
    body = json_infer(served.url, model, {"pixel_values": x}, ["FP32"])
    output = body["outputs"][0]
    logits = np.asarray(output["data"], np.float32).reshape(output["shape"])
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [2, 1000])
    np.testing.assert_allclose(logits, reference[model].infer({"pixel_values": x})["logits"], rtol=1e-5, atol=1e-6)


def test_json_int64_inference_equals_the_in_process_runner(served: Served,
                                                           reference: dict[str, OnnxRuntimeRunner]) -> None:
    rng = np.random.default_rng(9)
    feed = {"input_ids": rng.integers(0, 1024, (3, 5)), "attention_mask": np.ones((3, 5), np.int64)}
    body = json_infer(served.url, "bert-dyt", feed, ["INT64", "INT64"])
    output = body["outputs"][0]
    logits = np.asarray(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(logits, reference["bert-dyt"].infer(feed)["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["vit-layernorm", "vit-dyt"])
def test_binary_inference_equals_the_in_process_runner(served: Served, reference: dict[str, OnnxRuntimeRunner],
                                                       model: str) -> None:
    """The binary tensor extension, through the standard tritonclient."""
    x = images(3, seed=7)
    client = httpclient.InferenceServerClient(url=served.url.removeprefix("http://"), network_timeout=60)
    try:
        tensor = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    finally:
        client.close()
    assert "binary_data_size" in result.get_response()["outputs"][0]["parameters"]
    np.testing.assert_allclose(result.as_numpy("logits"), reference[model].infer({"pixel_values": x})["logits"],
                               rtol=1e-5, atol=1e-6)


def test_cli_tools_run_in_the_image(podman: Podman, image: str, workdir: Path,
                                    reference: dict[str, OnnxRuntimeRunner]) -> None:
    """`podman run IMAGE dyt-export ...`: torch and the exporter work inside the image, and the ONNX
    it writes answers as the one exported in this process from the same model.pt."""
    done = podman.run("run", "--rm", "-v", f"{workdir}:/work", image, "dyt-export", "/work/vit-dyt.pt",
                      "--repository", "/work/repo", "--name", "vit-dyt", timeout=300)
    assert "PASSED" in done.stdout + done.stderr
    exported = workdir / "repo" / "vit-dyt" / "1" / "model.onnx"
    x = images(2, seed=3)
    with OnnxRuntimeRunner(exported, threads=1) as runner:
        np.testing.assert_allclose(runner.infer({"pixel_values": x})["logits"],
                                   reference["vit-dyt"].infer({"pixel_values": x})["logits"], rtol=1e-4, atol=1e-5)


def test_cli_writes_into_a_folder_of_the_callers_uid(podman: Podman, image: str, workdir: Path) -> None:
    """The README's way to run a writing command: a folder only its owner may write (0755, owned by
    a uid that is not the image's 10001), and `--user UID:GID -e HOME=/tmp`."""
    owner = 12345
    for path in [workdir, *workdir.iterdir()]:
        os.chown(path, owner, owner)
        path.chmod(0o755 if path.is_dir() else 0o644)
    done = podman.run("run", "--rm", "--user", f"{owner}:{owner}", "-e", "HOME=/tmp", "-v", f"{workdir}:/work",
                      "-w", "/work", image, "dyt-export", "vit-dyt.pt", "--no-verify", timeout=300)
    assert (workdir / "vit-dyt.onnx").stat().st_uid == owner, done.stdout + done.stderr


def test_serve_options_pass_through_the_entry_point(podman: Podman, image: str) -> None:
    done = podman.run("run", "--rm", image, "--help")
    assert "dyt-serve" in done.stdout and "--repository" in done.stdout


def test_compose_brings_the_service_up(podman: Podman, image: str, repository: Path) -> None:
    """docker/compose.yaml's CPU service with podman-compose: volume, port, health check."""
    port = free_port()
    project = f"dyt-test-{uuid.uuid4().hex[:8]}"
    env = {"DYT_IMAGE": image, "DYT_MODELS": str(repository), "DYT_PORT": str(port)}
    up = compose(podman, project, env, "up", "-d", "dyt-serve")
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        ids = podman.run("ps", "-q", "--no-trunc", "--filter", f"label=io.podman.compose.project={project}")
        container_id = ids.stdout.split()[0]
        wait_ready(podman, Served(container_id, f"http://127.0.0.1:{port}"))
        x = images(1, seed=1)
        body = json_infer(f"http://127.0.0.1:{port}", "vit-dyt", {"pixel_values": x}, ["FP32"])
        assert body["outputs"][0]["shape"] == [1, 1000]
        inspect = json.loads(podman.run("inspect", container_id).stdout)[0]
        assert inspect["Config"]["Healthcheck"]["Test"][-1] == "/usr/local/bin/dyt-healthcheck"
    finally:
        down = compose(podman, project, env, "down")
        assert down.returncode == 0, down.stderr[-2000:]
