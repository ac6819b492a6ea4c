"""Fixtures: a model repository of the tiny ViT in LayerNorm and DyT variants, and real uvicorn
servers on loopback (threads of the test process, each on a port the OS picks).

* ``server``: the two good models, default limits.
* ``strict_server``: a good model beside a broken one and a folder without dyt.json, with an API
  key, small body and in-flight limits, short timeouts and dynamic batching on ``vit-dyt``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_testlib import (
    API_KEY,
    BATCH_DELAY_US,
    STRICT_BODY_LIMIT,
    STRICT_BODY_TIMEOUT_S,
    STRICT_IN_FLIGHT,
    STRICT_TIMEOUT_S,
    BackgroundServer,
    serve_in_thread,
)

from dyt_deploy.runners.onnxruntime_runner import OnnxRuntimeRunner
from service.http.app import create_app
from service.settings import BatchingConfig, Settings


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/vit-layernorm and repo/vit-dyt: depth-1 ViTs on 32x32 images, family vit_tiny; and
    repo/bert-dyt: a depth-1 BERT encoder with two INT64 inputs (batch, seq), family bert_tiny."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    tmp = tmp_path_factory.mktemp("service-models")
    for norm in ("layernorm", "dyt"):
        save_checkpoint(create_model("vit_tiny", norm=norm, depth=1, img_size=32), tmp / f"{norm}.pt")
        export_onnx(tmp / f"{norm}.pt", repository=tmp / "repo", name=f"vit-{norm}")
    save_checkpoint(create_model("bert_tiny", norm="dyt", depth=1), tmp / "bert.pt")
    export_onnx(tmp / "bert.pt", repository=tmp / "repo", name="bert-dyt")
    return tmp / "repo"


@pytest.fixture(scope="session")
def broken_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vit-dyt (good), vit-broken (a dyt.json but a corrupt model.onnx), no-manifest (config only)."""
    repo = tmp_path_factory.mktemp("broken") / "repo"
    shutil.copytree(repository / "vit-dyt", repo / "vit-dyt")
    broken = repo / "vit-broken"
    (broken / "1").mkdir(parents=True)
    manifest = json.loads((repository / "vit-dyt" / "dyt.json").read_text())
    (broken / "dyt.json").write_text(json.dumps({**manifest, "name": "vit-broken"}))
    (broken / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    (repo / "no-manifest").mkdir()
    (repo / "no-manifest" / "config.pbtxt").write_text('name: "no-manifest"\nplatform: "onnxruntime_onnx"\n')
    return repo


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(repository, Settings(threads=1, warmup_runs=1))) as running:
        yield running


@pytest.fixture(scope="session")
def strict_server(broken_repository: Path) -> Iterator[BackgroundServer]:
    settings = Settings(threads=1, warmup_runs=1, api_key=API_KEY, max_body_bytes=STRICT_BODY_LIMIT,
                        max_in_flight=STRICT_IN_FLIGHT, request_timeout_s=STRICT_TIMEOUT_S,
                        body_timeout_s=STRICT_BODY_TIMEOUT_S,
                        batching={"vit-dyt": BatchingConfig(max_batch_size=8, max_queue_delay_us=BATCH_DELAY_US)})
    with serve_in_thread(create_app(broken_repository, settings)) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def strict_client(strict_server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def reference(repository: Path) -> Iterator[dict[str, OnnxRuntimeRunner]]:
    """In-process runners of both models, the outputs the server must reproduce."""
    runners = {name: OnnxRuntimeRunner(repository / name / "1" / "model.onnx", threads=1)
               for name in ("vit-layernorm", "vit-dyt", "bert-dyt")}
    for runner in runners.values():
        runner.activate()
    yield runners
    for runner in runners.values():
        runner.deactivate()
