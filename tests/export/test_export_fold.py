"""--fold: DyT gamma/beta folded into the linear layers that read them, outputs unchanged."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyt_deploy.export import convert_form_file, export_onnx, fold_dyt_affine
from dyt_deploy.export.api import verify_onnx
from dyt_deploy.export.fold import FoldReport
from dyt_deploy.export.forms import count_bare_dyt_chains
from dyt_deploy.export.signature import input_specs
from dyt_deploy.export.steps import save_onnx
from dyt_deploy.parity import ParityReport

C, OUT = 6, 5  # DyT channels, linear outputs


def op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in ir.load(path).graph)


def tanh_feeding_linear_only(model: ir.Model) -> int:
    """DyT Tanh nodes whose output goes straight into linear layers (what a folded site leaves): MatMul, Gemm,
    Conv, or a flatten whose one reader is MatMul/Gemm."""
    def linear(node: ir.Node) -> bool:
        if node.op_type in ("Flatten", "Reshape"):
            return [u.node.op_type for u in node.outputs[0].uses()] in (["MatMul"], ["Gemm"])
        return node.op_type in ("MatMul", "Gemm", "Conv")

    count = 0
    for node in model.graph:
        uses = list(node.outputs[0].uses()) if node.op_type == "Tanh" else []
        if uses and all(linear(u.node) for u in uses):
            producer = node.inputs[0].producer()
            count += producer is not None and producer.op_type == "Mul"
    return count


# -- the zoo ---------------------------------------------------------------------------------------

def fold_cached_export(zoo_export, arch: str, tmp_path: Path) -> tuple[FoldReport, ParityReport]:
    """Fold the session's pattern export of ``arch`` (random gamma/beta) into ``tmp_path/folded.onnx``; verify it."""
    done = zoo_export(arch, "dyt")
    model = ir.load(done.pattern)
    report = fold_dyt_affine(model)
    save_onnx(model, tmp_path / "folded.onnx")
    parity = verify_onnx(tmp_path / "folded.onnx", done.model, input_specs(done.model, None, None), "fp32", 3,
                         None, None)
    return report, parity


@pytest.mark.parametrize(("arch", "folded", "linear_layers", "overloads", "through_export"), [
    # pre-norm ViT: both block norms feed linear layers (qkv; fc1); the final one feeds a slice, then the head.
    # Through export_onnx(fold=True), the API path (manifest included).
    ("vit_tiny", 2, 2, {"tanh_only": 2, "": 1}, True),
    # LLaMA: attention norm -> wq, wk, wv; FFN norm -> w1, w3; final norm -> lm_head. No beta.
    # fold_dyt_affine on the session's export of the same model: the same pass, one export fewer.
    ("llama_tiny", 3, 6, {"tanh_only": 3}, False),
    # ConvNeXt, one block per stage: 4 block norms (channels-last) -> fc1; 3 downsample norms (channels-first)
    # -> the unpadded 2x2 conv; head norm -> flatten -> fc. The stem norm feeds the padded depthwise conv
    # and the residual: left.
    ("convnext_tiny", 8, 8, {"tanh_only": 8, "": 1}, False),
])
def test_fold_removes_gamma_and_beta_and_keeps_outputs(tiny_checkpoint, zoo_export, tmp_path: Path, arch: str,
                                                       folded: int, linear_layers: int, overloads: dict,
                                                       through_export: bool) -> None:
    sites = folded + sum(overloads.values()) - overloads.get("tanh_only", 0)
    has_beta = not arch.startswith("llama")
    if through_export:
        result = export_onnx(tiny_checkpoint(arch, "dyt", random_affine=True), tmp_path / "folded.onnx", fold=True)
        report, parity = result.fold, result.parity
        assert result.manifest["folded"] == {"folded": folded, "skipped": sites - folded,
                                             "linear_layers": linear_layers}
    else:
        report, parity = fold_cached_export(zoo_export, arch, tmp_path)

    assert parity is not None and parity.passed, parity.rows()
    assert report is not None
    assert (report.folded, report.skipped, report.linear_layers) == (folded, sites - folded, linear_layers)

    model = ir.load(tmp_path / "folded.onnx")
    unfolded = op_counts(zoo_export(arch, "dyt").pattern)  # same architecture, not folded
    counts = Counter(node.op_type for node in model.graph)
    assert counts["Mul"] == unfolded["Mul"] - folded  # one gamma Mul less per folded site
    assert counts["Tanh"] == unfolded["Tanh"]
    if has_beta:  # beta went into the bias Add the linear layer already had
        assert counts["Add"] == unfolded["Add"] - folded
    assert tanh_feeding_linear_only(model) == folded

    names = set(model.graph.initializers)
    folded_weights = [n for n in names if n.endswith(".dyt_folded") and "bias" not in n]
    assert len(folded_weights) == linear_layers
    gamma_muls = [n for n in model.graph if n.op_type == "Mul" and any(
        v.producer() is not None and v.producer().op_type == "Tanh" for v in n.inputs)]
    assert len(gamma_muls) == sites - folded  # the gamma of a folded DyT is no longer applied
    assert all(list(v.uses()) for v in model.graph.initializers.values())  # nor stored: no unused initializer

    function = convert_form_file(tmp_path / "folded.onnx", tmp_path / "function.onnx", "function")
    assert function.counts == overloads
    assert function.max_abs_diff is not None and function.max_abs_diff <= 1e-5
    proto = onnx.load(tmp_path / "function.onnx")
    assert sorted(f.overload for f in proto.functions) == sorted(overloads)
    assert count_bare_dyt_chains(ir.load(tmp_path / "function.onnx")) == 0


def test_post_norm_bert_folds_nothing(zoo_export, tmp_path: Path) -> None:
    # post-norm: every DyT output also feeds a residual Add, which is not a linear layer
    report, parity = fold_cached_export(zoo_export, "bert_tiny", tmp_path)

    assert parity.passed
    assert (report.folded, report.skipped, report.linear_layers) == (0, 3, 0)
    assert op_counts(tmp_path / "folded.onnx") == op_counts(zoo_export("bert_tiny", "dyt").pattern)
    assert not [n for n in ir.load(tmp_path / "folded.onnx").graph.initializers if "dyt_folded" in n]


# -- hand-built graphs -----------------------------------------------------------------------------

def _tensor(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def dyt_model(consumers: list[onnx.NodeProto], x_shape: list[int], outputs: dict[str, list[int]],
              weights: dict[str, np.ndarray], with_beta: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x -> Mul(alpha) -> Tanh -> Mul(gamma) [-> Add(beta)] -> "d", then ``consumers``."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Mul", ["x", "alpha"], ["ax"]), helper.make_node("Tanh", ["ax"], ["t"]),
             helper.make_node("Mul", ["t", "gamma"], ["d" if not with_beta else "gt"])]
    initializers = [_tensor("alpha", [0.7]), _tensor("gamma", rng.normal(1.0, 0.5, C))]
    if with_beta:
        nodes.append(helper.make_node("Add", ["gt", "beta"], ["d"]))
        initializers.append(_tensor("beta", rng.normal(0.0, 0.5, C)))
    initializers += [_tensor(name, value) for name, value in weights.items()]
    graph = helper.make_graph(
        nodes + consumers, "dyt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def fold(model: onnx.ModelProto):
    ir_model = ir.serde.deserialize_model(model)
    report = fold_dyt_affine(ir_model)
    folded = ir.serde.serialize_model(ir_model)
    onnx.checker.check_model(folded, full_check=True)
    return report, folded


def assert_folds_exactly(model: onnx.ModelProto, x_shape: list[int], linear_layers: int = 1) -> onnx.ModelProto:
    x = np.random.default_rng(1).normal(size=x_shape).astype(np.float32)
    expected = run(model, x)
    report, folded = fold(model)
    assert (report.folded, report.skipped, report.linear_layers) == (1, 0, linear_layers)
    ops = [n.op_type for n in folded.graph.node]
    assert ops.count("Mul") == 1 and ops.count("Tanh") == 1  # only alpha's Mul is left
    assert [o.name for o in folded.graph.output] == [o.name for o in model.graph.output]
    for want, got in zip(expected, run(folded, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    return folded


@pytest.mark.parametrize("with_c", [True, False], ids=["with_C", "without_C"])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
def test_fold_into_gemm_trans_b(with_c: bool, alpha: float, beta: float) -> None:
    rng = np.random.default_rng(2)
    weights = {"W": rng.normal(size=(OUT, C))}
    inputs = ["d", "W"]
    if with_c:
        weights["c"] = rng.normal(size=OUT)
        inputs.append("c")
    gemm = helper.make_node("Gemm", inputs, ["y"], transB=1, alpha=alpha, beta=beta)
    model = dyt_model([gemm], [3, C], {"y": [3, OUT]}, weights)

    folded = assert_folds_exactly(model, [3, C])

    assert [n.op_type for n in folded.graph.node] == ["Mul", "Tanh", "Gemm"]  # beta went into C
    assert len(folded.graph.node[-1].input) == 3


def test_fold_into_gemm_without_trans_b() -> None:
    rng = np.random.default_rng(3)
    gemm = helper.make_node("Gemm", ["d", "W", "c"], ["y"])
    model = dyt_model([gemm], [4, C], {"y": [4, OUT]}, {"W": rng.normal(size=(C, OUT)), "c": rng.normal(size=OUT)})
    assert_folds_exactly(model, [4, C])


def test_fold_into_matmul_that_is_a_graph_output_adds_the_bias() -> None:
    rng = np.random.default_rng(4)
    matmul = helper.make_node("MatMul", ["d", "W"], ["y"])
    model = dyt_model([matmul], [2, 3, C], {"y": [2, 3, OUT]}, {"W": rng.normal(size=(C, OUT))})

    folded = assert_folds_exactly(model, [2, 3, C])

    assert [n.op_type for n in folded.graph.node] == ["Mul", "Tanh", "MatMul", "Add"]
    assert folded.graph.output[0].name == "y"
    assert folded.graph.node[-1].output[0] == "y"


def test_fold_without_beta_into_two_matmuls() -> None:
    rng = np.random.default_rng(5)
    consumers = [helper.make_node("MatMul", ["d", "W1"], ["y1"]), helper.make_node("MatMul", ["d", "W2"], ["y2"])]
    model = dyt_model(consumers, [2, 3, C], {"y1": [2, 3, OUT], "y2": [2, 3, 2]},
                      {"W1": rng.normal(size=(C, OUT)), "W2": rng.normal(size=(C, 2))}, with_beta=False)

    folded = assert_folds_exactly(model, [2, 3, C], linear_layers=2)

    assert "Add" not in [n.op_type for n in folded.graph.node]  # no beta, so no bias to add


@pytest.mark.parametrize("case", ["also_relu", "dyt_is_graph_output", "second_matmul_input", "gemm_trans_a"])
def test_dyt_with_a_non_linear_or_unfoldable_reader_is_left_alone(case: str) -> None:
    rng = np.random.default_rng(6)
    x_shape, outputs = [3, C], {"y": [3, OUT]}
    weights = {"W": rng.normal(size=(C, OUT))}
    consumers = [helper.make_node("MatMul", ["d", "W"], ["y"])]
    if case == "also_relu":
        consumers.append(helper.make_node("Relu", ["d"], ["r"]))
        outputs["r"] = [3, C]
    elif case == "dyt_is_graph_output":
        outputs["d"] = [3, C]
    elif case == "second_matmul_input":
        weights = {"W": rng.normal(size=(OUT, 3))}
        consumers = [helper.make_node("MatMul", ["W", "d"], ["y"])]
        outputs = {"y": [OUT, C]}
    else:
        weights = {"W": rng.normal(size=(3, OUT))}
        consumers = [helper.make_node("Gemm", ["d", "W"], ["y"], transA=1)]
        outputs = {"y": [C, OUT]}
    model = dyt_model(consumers, x_shape, outputs, weights)
    x = np.random.default_rng(7).normal(size=x_shape).astype(np.float32)

    report, folded = fold(model)

    assert (report.folded, report.skipped, report.linear_layers) == (0, 1, 0)
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in model.graph.node]
    assert {i.name for i in folded.graph.initializer} == {i.name for i in model.graph.initializer}
    for want, got in zip(run(model, x), run(folded, x), strict=True):
        np.testing.assert_array_equal(got, want)
