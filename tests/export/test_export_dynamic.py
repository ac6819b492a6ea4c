"""Dynamic dims: symbolic batch/seq by default, checked at several shapes; --dynamic none is static."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from dyt_deploy.errors import DytDeployError
from dyt_deploy.export import export_onnx
from dyt_deploy.export.signature import parse_dynamic

EXPECTED_DIMS = {
    "vit_tiny": {"pixel_values": ["batch", 3, 32, 32], "logits": ["batch", 10]},
    "llama_tiny": {"input_ids": ["batch", "seq"], "logits": ["batch", "seq", 128]},
    "bert_tiny": {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"], "logits": ["batch", 2]},
}


def dims(value: ir.Value) -> list:
    return [d if isinstance(d, int) else str(d) for d in value.shape]


@pytest.mark.parametrize("arch", sorted(EXPECTED_DIMS))
def test_inputs_and_outputs_have_symbolic_batch_and_seq(zoo_export, arch: str) -> None:
    done = zoo_export(arch, "dyt")
    model = ir.load(done.pattern)
    got = {v.name: dims(v) for v in [*model.graph.inputs, *model.graph.outputs]}
    assert got == EXPECTED_DIMS[arch]
    assert done.result.manifest["inputs"] == [
        {"name": v.name, "dtype": v.dtype.numpy().name, "shape": dims(v)} for v in model.graph.inputs
    ]

    shapes = done.result.parity.shapes
    assert len(shapes) == 3
    assert len({tuple(tuple(s) for s in sample.values()) for sample in shapes}) > 1
    batch_sizes = {sample[model.graph.inputs[0].name][0] for sample in shapes}
    assert len(batch_sizes) == 3


@pytest.mark.parametrize(("arch", "batch", "seq"), [("llama_tiny", 5, 9), ("bert_tiny", 1, 23), ("vit_tiny", 4, 0)])
def test_dynamic_model_matches_pytorch_at_new_shapes(zoo_export, arch: str, batch: int, seq: int) -> None:
    done = zoo_export(arch, "dyt")
    inputs = done.model.example_inputs(seed=3, batch=batch, seq=seq)
    with torch.no_grad():
        expected = done.model(*inputs.values()).numpy()
    session = ort.InferenceSession(str(done.pattern), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    assert got.shape[0] == batch
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_dynamic_none_gives_a_static_graph(tiny_checkpoint, tmp_path: Path) -> None:
    result = export_onnx(tiny_checkpoint("llama_tiny", "dyt"), tmp_path / "static.onnx", dynamic=())

    assert result.parity is not None and result.parity.passed
    model = ir.load(tmp_path / "static.onnx")
    assert dims(model.graph.inputs[0]) == [2, 16]
    assert dims(model.graph.outputs[0]) == [2, 16, 128]
    for value in [*model.graph.inputs, *model.graph.outputs]:
        assert all(isinstance(d, int) for d in value.shape)
    assert result.manifest["inputs"][0]["shape"] == [2, 16]
    assert {tuple(s["input_ids"]) for s in result.parity.shapes} == {(2, 16)}  # every sample at the static shape
    session = ort.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(InvalidArgument, match="invalid dimensions"):  # a static graph refuses another shape
        session.run(None, {"input_ids": np.zeros((3, 16), dtype=np.int64)})


@pytest.mark.parametrize(("text", "expected"), [
    (None, None), ("none", ()), ("", ()), ("batch", ("batch",)), ("batch, seq", ("batch", "seq")),
])
def test_parse_dynamic(text: str | None, expected: tuple | None) -> None:
    assert parse_dynamic(text) == expected


def test_parse_dynamic_rejects_unknown_dims() -> None:
    with pytest.raises(DytDeployError, match="known dims are batch, seq"):
        parse_dynamic("batch,height")
