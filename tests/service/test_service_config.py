"""Settings (pydantic-settings: DYT_* environment, ranges, JSON for worker processes) and what a
model's config.pbtxt gives the service (Triton's ModelConfig, nested blocks included)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dyt_deploy.errors import OptionError
from service import cli
from service.models.config import ServingConfig, read_serving_config
from service.models.served import ServedModel
from service.settings import BatchingConfig, Settings
from service.telemetry.metrics import ServiceMetrics

NESTED_BATCHING = """name: "vit-dyt"
platform: "onnxruntime_onnx"
max_batch_size: 16
dynamic_batching {
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 100
  }
  max_queue_delay_microseconds: 5000
}
"""


def test_settings_come_from_dyt_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYT_THREADS", "3")
    monkeypatch.setenv("DYT_MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("DYT_BATCHING", '{"*": {"max_batch_size": 4, "max_queue_delay_us": 250}}')
    monkeypatch.setenv("DYT_SERVE_API_KEY", "secret")
    settings = Settings(max_in_flight=9)  # keywords win over the environment
    assert (settings.threads, settings.max_in_flight, settings.api_key) == (3, 9, "secret")
    assert settings.batching_for("any-model") == BatchingConfig(4, 250)


def test_settings_round_trip_through_json_for_worker_processes() -> None:
    settings = Settings(repository="/models", provider="cuda", workers=2, api_key="k",
                        batching={"vit": BatchingConfig(8, 500)}, allow_nonfinite=True)
    assert Settings.from_json(settings.to_json()) == settings


def test_every_out_of_range_setting_is_reported_at_once() -> None:
    with pytest.raises(OptionError) as refused:
        Settings(workers=0, max_in_flight=0, request_timeout_s=0, threads=-1, provider="gpu",
                 batching={"*": {"max_batch_size": 0}})
    fields = [field for field, _ in refused.value.problems]
    assert fields == ["provider", "threads", "workers", "max_in_flight", "request_timeout_s",
                      "batching.*.max_batch_size"]


def test_dyt_serve_names_the_flag_or_the_variable_that_set_a_bad_value(
        repository: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DYT_STATS_WINDOW", "0")
    assert cli.main(["--repository", str(repository), "--workers", "0", "--dynamic-batching", "all",
                     "--max-queue-delay-us", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for where in ("--workers: ", "--max-queue-delay-us: ", "$DYT_STATS_WINDOW: "):
        assert where in err


def test_a_nested_dynamic_batching_block_reads_back_as_triton_reads_it(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(NESTED_BATCHING)
    assert read_serving_config(tmp_path) == ServingConfig("onnxruntime_onnx", 16, BatchingConfig(16, 5000))
    (tmp_path / "config.pbtxt").write_text('platform: "tensorrt_plan"\nmax_batch_size: 8\n')
    assert read_serving_config(tmp_path) == ServingConfig("tensorrt_plan", 8, None)
    assert read_serving_config(tmp_path / "nowhere") == ServingConfig()


def test_a_served_model_batches_and_answers_config_from_its_config_pbtxt(repository: Path, tmp_path: Path) -> None:
    folder = tmp_path / "vit-dyt"
    shutil.copytree(repository / "vit-dyt", folder)
    (folder / "config.pbtxt").write_text(NESTED_BATCHING)
    model = ServedModel(folder, Settings(threads=1, warmup_runs=0), ServiceMetrics())
    model.load()
    assert model.ready, model.reason
    assert model.batching == BatchingConfig(16, 5000)
    config = model.triton_config()
    assert config["max_batch_size"] == 16 and config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 5000, "preferred_batch_size": [16]}
    assert config["input"] == [{"name": "pixel_values", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]


def test_a_malformed_config_pbtxt_leaves_the_model_unavailable_with_the_reason(repository: Path,
                                                                               tmp_path: Path) -> None:
    folder = tmp_path / "vit-dyt"
    shutil.copytree(repository / "vit-dyt", folder)
    (folder / "config.pbtxt").write_text("dynamic_batching { max_queue_delay_microseconds: soon }\n")
    model = ServedModel(folder, Settings(threads=1, warmup_runs=0), ServiceMetrics())
    model.load()
    assert model.state == "UNAVAILABLE" and "not a valid Triton model config" in model.reason
