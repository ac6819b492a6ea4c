"""config.pbtxt through Triton's own ModelConfig schema: what the project writes reads back the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyt_deploy.errors import DytDeployError
from dyt_deploy.repository import config_pbtxt
from dyt_deploy.triton_config import (
    build_config,
    config_text,
    config_to_dict,
    model_config_pb2,
    parse_config,
    read_config,
    write_config,
)

INPUTS = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
          {"name": "attention_mask", "dtype": "bool", "shape": ["batch", "seq"]}]
OUTPUTS = [{"name": "logits", "dtype": "float16", "shape": ["batch", "seq", 128]}]


def test_every_field_written_reads_back(tmp_path: Path) -> None:
    pb2 = model_config_pb2()
    written = build_config("llm-dyt", INPUTS, OUTPUTS, max_batch_size=16, max_queue_delay_us=750,
                           instance_kind="KIND_GPU")
    write_config(tmp_path, written)
    read = read_config(tmp_path)

    assert read == written
    assert (read.name, read.platform, read.max_batch_size) == ("llm-dyt", "onnxruntime_onnx", 16)
    assert [(t.name, t.data_type, list(t.dims)) for t in read.input] == [
        ("input_ids", pb2.TYPE_INT64, [-1]), ("attention_mask", pb2.TYPE_BOOL, [-1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in read.output] == [("logits", pb2.TYPE_FP16, [-1, 128])]
    assert read.dynamic_batching.max_queue_delay_microseconds == 750
    assert [(g.count, g.kind) for g in read.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_GPU)]


def test_an_unbatched_model_keeps_every_dim_and_max_batch_size_0() -> None:
    config = build_config("m", [{"name": "x", "dtype": "float32", "shape": [4, "seq"]}],
                          [{"name": "y", "dtype": "float32", "shape": [4]}], max_queue_delay_us=100)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [4, -1]
    assert not config.HasField("dynamic_batching")  # Triton rejects dynamic batching without batching


def test_a_backend_config_names_the_backend_not_a_platform() -> None:
    config = build_config("m", INPUTS, OUTPUTS, platform=None, backend="openvino")
    assert (config.backend, config.platform) == ("openvino", "")


def test_nested_blocks_written_by_hand_read_as_triton_reads_them() -> None:
    text = """
    name: "vit"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    dynamic_batching {
      preferred_batch_size: [ 4, 8 ]
      default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100 max_queue_size: 3 }
      max_queue_delay_microseconds: 5000
    }
    """
    config = parse_config(text)
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 3
    assert parse_config(config_text(config)) == config


def test_config_pbtxt_text_is_the_protobuf_text() -> None:
    text = config_pbtxt("m", INPUTS, OUTPUTS, max_batch_size=4)
    assert parse_config(text) == build_config("m", INPUTS, OUTPUTS, max_batch_size=4)
    assert "max_batch_size: 4" in text


@pytest.mark.parametrize("text", ['name: "m" max_batch_size: "eight"', "dynamic_batching { max_queue_delay: 5 }",
                                  'name: "m" {'])
def test_a_malformed_file_is_an_error_naming_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(DytDeployError, match=r"config.pbtxt: not a valid Triton model config"):
        read_config(tmp_path)


def test_no_file_reads_as_none(tmp_path: Path) -> None:
    assert read_config(tmp_path) is None


def test_a_dtype_without_a_triton_type_is_refused() -> None:
    with pytest.raises(DytDeployError, match="tensor 'x': dtype complex64 has no Triton type"):
        build_config("m", [{"name": "x", "dtype": "complex64", "shape": ["batch"]}], OUTPUTS)


def test_json_form_uses_the_proto_field_names() -> None:
    as_dict = config_to_dict(build_config("m", INPUTS, OUTPUTS, max_queue_delay_us=10))
    assert as_dict["max_batch_size"] == 32
    assert as_dict["input"][0]["data_type"] == "TYPE_INT64"
    assert "dynamic_batching" in as_dict
