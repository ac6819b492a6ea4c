"""dyt-serve: arguments, user errors, and a real run with two uvicorn workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_testlib import free_port, images, json_request, wait_ready

from service import cli
from service.cli import main
from service.settings import BatchingConfig, Settings


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str, int]:
    """dyt-serve's settings, host and port from ``argv`` (uvicorn is not started)."""
    seen: dict[str, object] = {}
    monkeypatch.setattr(cli, "serve", lambda settings, host, port, log_level: seen.update(
        settings=settings, host=host, port=port))
    assert main(argv) == 0
    return seen["settings"], seen["host"], seen["port"]


def test_defaults_and_settings(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, host, port = run_cli(["--repository", str(repository), "--dynamic-batching", "all",
                                    "--max-queue-delay-us", "500", "--api-key", "k", "--max-body-mb", "1"], monkeypatch)
    assert (host, port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.batching == {"*": BatchingConfig(8, 500)} and settings.api_key == "k"
    assert settings.max_body_bytes == 1 << 20 and settings.repository == str(repository.resolve())
    assert Settings.from_json(settings.to_json()) == settings


def test_missing_repository_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--repository", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --repository") and "Traceback" not in err




def test_dyt_serve_with_two_workers_serves_the_repository(repository: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "--repository", str(repository), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2", "--threads", "1", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[2], env={**os.environ},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        assert httpx.get(f"{url}/v2/models/vit-dyt").json()["parameters"]["norm"] == "dyt"
        response = httpx.post(f"{url}/v2/models/vit-layernorm/infer", json=json_request(images(1)), timeout=30)
        assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 1000]
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert process.returncode == 0, output


def test_service_demo_hook(repository: Path) -> None:
    from service.demo.checks import run_service_demo

    report = run_service_demo(repository, requests=2, rounds=3, threads=1)
    assert report["json_binary_agree"] == {"bert-dyt": True, "vit-dyt": True, "vit-layernorm": True}
    (comparison,) = report["comparisons"]  # bert_tiny has one variant: nothing to compare
    assert comparison["family"] == "vit_tiny" and comparison["rounds"] == 3
    assert {v["variant"] for v in comparison["variants"]} == {"layernorm", "dyt"}
    counts = [v["count"] for f in report["live"]["families"] for v in f["variants"]]
    assert counts == [4, 4, 4]  # 2 requests per model, each as JSON and as binary
