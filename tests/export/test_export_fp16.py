"""fp16 exports: verified within the fp16 tolerance; LayerNorm/RMSNorm in an fp32 island, DyT in fp16."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
import pytest
import torch

from dyt_deploy.export import export_onnx
from dyt_deploy.export.steps import Fp32Norm, prepare_for_dtype
from dyt_deploy.parity import DEFAULT_TOLERANCES

FLOAT, FLOAT16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
# the op whose input is the norm's first computation on the activations
NORM_OPS = {"layernorm": "LayerNormalization", "rmsnorm": "ReduceMean"}


def casts(model: ir.Model, to: ir.DataType) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Cast" and n.attributes["to"].value == to]


def upstream_cast(value: ir.Value, depth: int = 4) -> ir.Node | None:
    """The nearest Cast producing ``value`` through at most ``depth`` nodes (first inputs)."""
    node = value.producer()
    while node is not None and depth > 0:
        if node.op_type == "Cast":
            return node
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        depth -= 1
    return None


@pytest.mark.parametrize(("arch", "norm"), [("vit_tiny", "layernorm"), ("llama_tiny", "rmsnorm")])
def test_fp16_keeps_layernorm_and_rmsnorm_in_fp32(tiny_checkpoint, tmp_path: Path, arch: str, norm: str) -> None:
    result = export_onnx(tiny_checkpoint(arch, norm), tmp_path / "model.onnx", dtype="fp16")

    assert result.parity is not None and result.parity.passed, result.parity.rows()
    assert (result.parity.atol, result.parity.rtol) == DEFAULT_TOLERANCES["fp16"]
    assert result.manifest["dtype"] == "fp16"
    model = ir.load(tmp_path / "model.onnx")
    first_input, output = model.graph.inputs[0], model.graph.outputs[0]
    assert first_input.dtype == (FLOAT16 if arch.startswith("vit") else ir.DataType.INT64)
    assert output.dtype == FLOAT16

    # three norms (depth 1), each x.float() -> norm -> .to(fp16)
    assert len(casts(model, FLOAT)) == 3
    assert len(casts(model, FLOAT16)) == 3
    norm_nodes = [n for n in model.graph if n.op_type == NORM_OPS[norm]]
    assert len(norm_nodes) == 3
    for node in norm_nodes:
        assert node.inputs[0].dtype == FLOAT
        cast = upstream_cast(node.inputs[0])
        assert cast is not None and cast.attributes["to"].value == FLOAT
        assert cast.inputs[0].dtype == FLOAT16
    for cast in casts(model, FLOAT16):
        assert cast.inputs[0].dtype == FLOAT
    matmuls = [n for n in model.graph if n.op_type in ("MatMul", "Gemm")]
    assert matmuls and all(n.inputs[0].dtype == FLOAT16 for n in matmuls)  # the rest of the model is fp16


def test_fp16_dyt_runs_in_fp16_without_an_fp32_island(tiny_checkpoint, tmp_path: Path) -> None:
    result = export_onnx(tiny_checkpoint("vit_tiny", "dyt"), tmp_path / "model.onnx", dtype="fp16")

    assert result.parity is not None and result.parity.passed, result.parity.rows()
    assert result.parity.atol == DEFAULT_TOLERANCES["fp16"][0]
    model = ir.load(tmp_path / "model.onnx")
    assert model.graph.inputs[0].dtype == FLOAT16
    assert [n for n in model.graph if n.op_type == "Cast"] == []
    tanh = [n for n in model.graph if n.op_type == "Tanh"]
    assert len(tanh) == 3
    assert all(n.inputs[0].dtype == FLOAT16 and n.outputs[0].dtype == FLOAT16 for n in tanh)
    alphas = [v for name, v in model.graph.initializers.items() if name.endswith("alpha")]
    assert alphas and all(v.const_value.dtype == FLOAT16 for v in alphas)


def test_prepare_for_dtype_wraps_only_statistic_norms() -> None:
    from dyt_deploy.models import create_model

    for norm, wrapped in (("layernorm", 3), ("rmsnorm", 3), ("dyt", 0)):
        model = create_model("vit_tiny", norm=norm, depth=1, img_size=32, num_classes=10)
        half = prepare_for_dtype(model, "fp16")
        assert sum(isinstance(m, Fp32Norm) for m in half.modules()) == wrapped
        assert half.head.weight.dtype == torch.float16
        assert model.head.weight.dtype == torch.float32  # the original is untouched
        assert all(p.dtype == torch.float32 for m in half.modules() if isinstance(m, Fp32Norm)
                   for p in m.parameters())
        assert prepare_for_dtype(model, "fp32") is model
