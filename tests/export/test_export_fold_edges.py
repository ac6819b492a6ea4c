"""Edges of --fold on hand-built graphs: what is (not) a DyT site, what is (not) a foldable reader, where beta goes.

Written against the mutants `make mutation` found surviving in ``export/fold.py``. Every graph is a
few nodes; each fold is checked against onnxruntime on the graph before folding.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from dyt_deploy.export import fold_dyt_affine
from dyt_deploy.export.fold import FoldReport

C, OUT, ROWS = 4, 3, 2
RNG = np.random.default_rng(0)
GAMMA = RNG.normal(1.0, 0.5, C)
BETA = RNG.normal(0.0, 0.5, C)
W = RNG.normal(size=(C, OUT))
W_T = RNG.normal(size=(OUT, C))
BIAS = RNG.normal(size=OUT)


def build(nodes: list[onnx.NodeProto], outputs: list[str], initializers: dict[str, np.ndarray],
          inputs: dict[str, list[int]] | None = None, dtype: type = np.float32) -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = inputs or {"x": [ROWS, C]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, elem, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v, dtype=dtype), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def dyt(x: str = "x", out: str = "d", beta: bool = True, prefix: str = "") -> tuple[list, dict]:
    """Mul(alpha) -> Tanh -> Mul(gamma) [-> Add(beta)] from ``x`` to ``out``."""
    p = prefix
    nodes = [helper.make_node("Mul", [x, f"{p}alpha"], [f"{p}ax"]), helper.make_node("Tanh", [f"{p}ax"], [f"{p}t"]),
             helper.make_node("Mul", [f"{p}t", f"{p}gamma"], [f"{p}gt" if beta else out])]
    weights = {f"{p}alpha": np.array([0.7]), f"{p}gamma": GAMMA}
    if beta:
        nodes.append(helper.make_node("Add", [f"{p}gt", f"{p}beta"], [out]))
        weights[f"{p}beta"] = BETA
    return nodes, weights


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def fold(model: onnx.ModelProto) -> tuple[FoldReport, onnx.ModelProto]:
    ir_model = ir.serde.deserialize_model(model)
    report = fold_dyt_affine(ir_model)
    folded = ir.serde.serialize_model(ir_model)
    return report, folded


def x_feed(dtype: type = np.float32, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(size=(ROWS, C)).astype(dtype), **extra}


def assert_same_outputs(model: onnx.ModelProto, folded: onnx.ModelProto, feed: dict, atol: float = 1e-5) -> None:
    assert [o.name for o in folded.graph.output] == [o.name for o in model.graph.output]
    for want, got in zip(run(model, feed), run(folded, feed), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_untouched(model: onnx.ModelProto, feed: dict | None = None) -> FoldReport:
    report, folded = fold(model)
    assert (report.folded, report.linear_layers) == (0, 0)
    assert ops(folded) == ops(model)
    feed = feed or x_feed()
    for want, got in zip(run(model, feed), run(folded, feed), strict=True):
        np.testing.assert_array_equal(got, want)
    return report


# -- the report ------------------------------------------------------------------------------------

def test_a_graph_without_dyt_reports_zeros() -> None:
    model = build([helper.make_node("MatMul", ["x", "W"], ["y"])], ["y"], {"W": W})
    report, folded = fold(model)
    assert report == FoldReport(0, 0, 0)
    assert ops(folded) == ["MatMul"]


# -- what is a DyT site ----------------------------------------------------------------------------

def test_tanh_of_a_graph_input_is_no_site() -> None:
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["t", "gamma"], ["d"]),
             helper.make_node("MatMul", ["d", "W"], ["y"])]
    report = assert_untouched(build(nodes, ["y"], {"gamma": GAMMA, "W": W}))
    assert report.skipped == 0


@pytest.mark.parametrize("scale", ["vector", "add", "variable"])
def test_tanh_after_anything_but_a_scalar_mul_is_no_site(scale: str) -> None:
    first = {"vector": helper.make_node("Mul", ["x", "alpha"], ["ax"]),
             "add": helper.make_node("Add", ["x", "alpha"], ["ax"]),
             "variable": helper.make_node("Mul", ["x", "s"], ["ax"])}[scale]
    nodes = [first, helper.make_node("Tanh", ["ax"], ["t"]), helper.make_node("Mul", ["t", "gamma"], ["d"]),
             helper.make_node("MatMul", ["d", "W"], ["y"])]
    alpha = np.full(C, 0.7) if scale == "vector" else np.array([0.7])
    inputs = {"x": [ROWS, C], "s": [1]} if scale == "variable" else None
    model = build(nodes, ["y"], {"alpha": alpha, "gamma": GAMMA, "W": W}, inputs)
    feed = x_feed(s=np.array([0.7], np.float32)) if scale == "variable" else None
    report = assert_untouched(model, feed)
    assert report.skipped == 0


def test_scalar_alpha_on_either_side_of_the_mul() -> None:
    nodes, weights = dyt()
    nodes[0] = helper.make_node("Mul", ["alpha", "x"], ["ax"])
    model = build([*nodes, helper.make_node("MatMul", ["d", "W"], ["y"])], ["y"], {**weights, "W": W})
    report, folded = fold(model)
    assert (report.folded, report.skipped) == (1, 0)
    assert_same_outputs(model, folded, x_feed())


@pytest.mark.parametrize("case", ["tanh_read_twice", "tanh_is_output", "tanh_then_add", "gamma_variable",
                                  "gamma_2d", "gamma_scalar", "gamma_of_itself"])
def test_no_site_without_a_lone_constant_per_channel_gamma(case: str) -> None:
    nodes = [helper.make_node("Mul", ["x", "alpha"], ["ax"]), helper.make_node("Tanh", ["ax"], ["t"])]
    weights: dict[str, np.ndarray] = {"alpha": np.array([0.7]), "W": W}
    inputs, outputs, feed = None, ["y"], x_feed()
    gamma_mul = helper.make_node("Mul", ["t", "gamma"], ["d"])
    weights["gamma"] = GAMMA
    if case == "tanh_read_twice":
        nodes.append(helper.make_node("Relu", ["t"], ["r"]))
        outputs.append("r")
    elif case == "tanh_is_output":
        outputs.append("t")
    elif case == "tanh_then_add":
        gamma_mul = helper.make_node("Add", ["t", "gamma"], ["d"])
    elif case == "gamma_variable":
        gamma_mul = helper.make_node("Mul", ["t", "g"], ["d"])
        inputs, feed = {"x": [ROWS, C], "g": [C]}, x_feed(g=GAMMA.astype(np.float32))
    elif case == "gamma_2d":
        weights["gamma"] = GAMMA[None, :]
    elif case == "gamma_scalar":
        weights["gamma"] = np.array(1.5)
    else:
        gamma_mul = helper.make_node("Mul", ["t", "t"], ["d"])
        del weights["gamma"]
    nodes += [gamma_mul, helper.make_node("MatMul", ["d", "W"], ["y"])]
    report = assert_untouched(build(nodes, outputs, weights, inputs), feed)
    assert report.skipped == 0  # not even a site


@pytest.mark.parametrize("case", ["beta_scalar", "beta_variable", "add_read_twice", "gamma_out_is_output"])
def test_an_add_that_is_not_a_per_channel_beta_stops_the_site(case: str) -> None:
    """The DyT's output is then its gamma Mul, read by a non-linear op (or the graph), so nothing folds."""
    nodes, weights = dyt()
    inputs, outputs, feed = None, ["y"], x_feed()
    if case == "beta_scalar":
        weights["beta"] = np.array([0.25])
    elif case == "beta_variable":
        nodes[3] = helper.make_node("Add", ["gt", "b"], ["d"])
        del weights["beta"]
        inputs, feed = {"x": [ROWS, C], "b": [C]}, x_feed(b=BETA.astype(np.float32))
    elif case == "add_read_twice":
        nodes.append(helper.make_node("Relu", ["gt"], ["r"]))
        outputs.append("r")
    else:
        outputs.append("gt")
    model = build([*nodes, helper.make_node("MatMul", ["d", "W"], ["y"])], outputs, {**weights, "W": W}, inputs)
    report = assert_untouched(model, feed)
    assert report.skipped == 1


def test_gamma_only_site_folds_when_its_add_is_not_a_beta() -> None:
    """Mul(gamma) -> Add(scalar) -> MatMul: the gamma Mul's reader is the Add, so no fold; but
    Mul(gamma) -> MatMul with an unrelated Add elsewhere folds gamma alone."""
    nodes, weights = dyt(beta=False)
    nodes.append(helper.make_node("MatMul", ["d", "W"], ["y"]))
    nodes.append(helper.make_node("Add", ["x", "shift"], ["z"]))
    model = build(nodes, ["y", "z"], {**weights, "W": W, "shift": np.full(C, 0.5)})
    report, folded = fold(model)
    assert (report.folded, report.skipped, report.linear_layers) == (1, 0, 1)
    assert ops(folded) == ["Mul", "Tanh", "MatMul", "Add"]  # the Add is the unrelated one
    assert_same_outputs(model, folded, x_feed())


# -- what is a foldable reader ---------------------------------------------------------------------

@pytest.mark.parametrize("case", ["weight_variable", "weight_3d", "weight_1d", "mul_reader", "dead_end"])
def test_unfoldable_readers_leave_the_site_alone(case: str) -> None:
    nodes, weights = dyt()
    inputs, outputs, feed = None, ["y"], x_feed()
    if case == "weight_variable":
        nodes.append(helper.make_node("MatMul", ["d", "w"], ["y"]))
        inputs, feed = {"x": [ROWS, C], "w": [C, OUT]}, x_feed(w=W.astype(np.float32))
    elif case == "weight_3d":
        nodes.append(helper.make_node("MatMul", ["d", "W"], ["y"]))
        weights["W"] = RNG.normal(size=(2, C, OUT))
    elif case == "weight_1d":
        nodes.append(helper.make_node("MatMul", ["d", "W"], ["y"]))
        weights["W"] = RNG.normal(size=C)
    elif case == "mul_reader":
        nodes.append(helper.make_node("Mul", ["d", "W"], ["y"]))  # constant 2-D second input, not a linear op
        weights["W"] = RNG.normal(size=(ROWS, C))
    else:
        nodes.append(helper.make_node("Relu", ["x"], ["y"]))  # and nothing reads "d"
    model = build(nodes, outputs, weights, inputs)
    report, folded = fold(model)
    assert report.folded == 0 and report.linear_layers == 0
    if case == "dead_end":  # nothing reads the DyT: skipped, then removed as unused
        assert report.skipped == 1
        assert ops(folded) == ["Relu"]
    else:
        assert report.skipped == 1
        assert ops(folded) == ops(model)
    assert_same_outputs(model, folded, feed)


def test_gemm_with_explicit_trans_a_0_folds() -> None:
    nodes, weights = dyt()
    nodes.append(helper.make_node("Gemm", ["d", "W", "c"], ["y"], transA=0))
    model = build(nodes, ["y"], {**weights, "W": W, "c": BIAS})
    report, folded = fold(model)
    assert (report.folded, report.linear_layers) == (1, 1)
    assert_same_outputs(model, folded, x_feed())


# -- where beta goes -------------------------------------------------------------------------------

@pytest.mark.parametrize("reversed_inputs", [False, True], ids=["out+bias", "bias+out"])
def test_matmul_bias_add_absorbs_beta_on_either_side(reversed_inputs: bool) -> None:
    nodes, weights = dyt()
    add_inputs = ["bias", "m"] if reversed_inputs else ["m", "bias"]
    nodes += [helper.make_node("MatMul", ["d", "W"], ["m"]), helper.make_node("Add", add_inputs, ["y"])]
    model = build(nodes, ["y"], {**weights, "W": W, "bias": BIAS})
    report, folded = fold(model)
    assert (report.folded, report.linear_layers) == (1, 1)
    assert ops(folded) == ["Mul", "Tanh", "MatMul", "Add"]  # beta into the existing bias: no new Add
    initializers = {i.name for i in folded.graph.initializer}
    assert {"W.dyt_folded", "bias.dyt_folded"} <= initializers
    assert not {"W", "bias", "gamma", "beta"} & initializers  # replaced ones are dropped
    assert_same_outputs(model, folded, x_feed())


@pytest.mark.parametrize("bias_shape", [(1, OUT), (ROWS, OUT)])
def test_a_bias_of_another_shape_gets_its_own_add(bias_shape: tuple[int, ...]) -> None:
    nodes, weights = dyt()
    nodes += [helper.make_node("MatMul", ["d", "W"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    model = build(nodes, ["y"], {**weights, "W": W, "bias": RNG.normal(size=bias_shape)})
    report, folded = fold(model)
    assert report.folded == 1
    assert ops(folded) == ["Mul", "Tanh", "MatMul", "Add", "Add"]
    assert "bias" in {i.name for i in folded.graph.initializer}  # left as it was
    assert_same_outputs(model, folded, x_feed())


def test_a_matmul_read_twice_gets_one_add_that_both_readers_see() -> None:
    nodes, weights = dyt()
    nodes += [helper.make_node("MatMul", ["d", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
              helper.make_node("Sigmoid", ["m"], ["s"])]
    model = build(nodes, ["r", "s", "m"], {**weights, "W": W})
    report, folded = fold(model)
    assert report.folded == 1
    assert ops(folded).count("Add") == 1
    add = next(n for n in folded.graph.node if n.op_type == "Add")
    readers = [n for n in folded.graph.node if n.op_type in ("Relu", "Sigmoid")]
    assert all(r.input[0] == add.output[0] for r in readers)
    assert folded.graph.output[2].name == "m" == add.output[0]  # the graph output keeps its name
    assert_same_outputs(model, folded, x_feed())


def test_gemm_with_a_zero_beta_ignores_its_c_and_gets_an_add() -> None:
    nodes, weights = dyt()
    nodes.append(helper.make_node("Gemm", ["d", "W", "c"], ["y"], alpha=2.0, beta=0.0))
    model = build(nodes, ["y"], {**weights, "W": W, "c": BIAS})
    report, folded = fold(model)
    assert report.folded == 1
    assert ops(folded) == ["Mul", "Tanh", "Gemm", "Add"]
    assert_same_outputs(model, folded, x_feed())


def test_gemm_with_a_variable_c_gets_an_add() -> None:
    nodes, weights = dyt()
    nodes.append(helper.make_node("Gemm", ["d", "W", "c"], ["y"], alpha=0.5, beta=3.0))
    model = build(nodes, ["y"], {**weights, "W": W}, {"x": [ROWS, C], "c": [OUT]})
    report, folded = fold(model)
    assert report.folded == 1
    assert ops(folded) == ["Mul", "Tanh", "Gemm", "Add"]
    assert_same_outputs(model, folded, x_feed(c=BIAS.astype(np.float32)))


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 4.0), (3.0, 0.25)])
def test_gemm_constant_c_absorbs_beta_scaled_by_alpha_over_beta(alpha: float, beta: float) -> None:
    nodes, weights = dyt()
    nodes.append(helper.make_node("Gemm", ["d", "Wt", "c"], ["y"], alpha=alpha, beta=beta, transB=1))
    model = build(nodes, ["y"], {**weights, "Wt": W_T, "c": BIAS})
    report, folded = fold(model)
    assert ops(folded) == ["Mul", "Tanh", "Gemm"]
    assert {"Wt.dyt_folded", "c.dyt_folded"} <= {i.name for i in folded.graph.initializer}
    assert_same_outputs(model, folded, x_feed())


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 4.0), (2.0, 0.0)])
def test_gemm_without_c_gets_alpha_times_shift_and_beta_1(alpha: float, beta: float) -> None:
    nodes, weights = dyt()
    nodes.append(helper.make_node("Gemm", ["d", "W"], ["y"], alpha=alpha, beta=beta))
    model = build(nodes, ["y"], {**weights, "W": W})
    report, folded = fold(model)
    gemm = folded.graph.node[-1]
    assert ops(folded) == ["Mul", "Tanh", "Gemm"] and len(gemm.input) == 3
    assert {a.name: helper.get_attribute_value(a) for a in gemm.attribute}["beta"] == 1.0
    assert_same_outputs(model, folded, x_feed())


# -- precision and names -----------------------------------------------------------------------------

def test_folded_weights_keep_the_model_dtype_and_are_computed_in_float64() -> None:
    nodes, weights = dyt()
    nodes += [helper.make_node("MatMul", ["d", "W"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    model = build(nodes, ["y"], {**weights, "W": W, "bias": BIAS}, dtype=np.float16)
    report, folded = fold(model)
    assert report.folded == 1
    arrays = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    assert all(a.dtype == np.float16 for a in arrays.values())
    # each folded value is the float64 result rounded once to fp16
    w16, g16, b16, bias16 = (np.float16(v).astype(np.float64) for v in (W, GAMMA, BETA, BIAS))
    np.testing.assert_array_equal(arrays["W.dyt_folded"], (w16 * g16[:, None]).astype(np.float16))
    np.testing.assert_array_equal(arrays["bias.dyt_folded"], (bias16 + b16 @ w16).astype(np.float16))
    assert_same_outputs(model, folded, x_feed(np.float16), atol=2e-2)


def test_two_dyts_reading_one_shared_weight_get_distinct_folded_copies() -> None:
    """Unnamed nodes too (names are optional in ONNX): each inserted beta Add gets its own node name."""
    first, w1 = dyt("x", "d1", prefix="a_")
    second, w2 = dyt("x", "d2", prefix="b_")
    nodes = [*first, *second, helper.make_node("MatMul", ["d1", "W"], ["y1"]),
             helper.make_node("MatMul", ["d2", "W"], ["y2"])]
    w2 = {**w2, "b_gamma": GAMMA[::-1].copy()}
    model = build(nodes, ["y1", "y2"], {**w1, **w2, "W": W})
    report, folded = fold(model)
    assert (report.folded, report.linear_layers) == (2, 2)
    names = {i.name for i in folded.graph.initializer}
    assert {"W.dyt_folded", "W.dyt_folded.1"} <= names
    assert "W" not in names
    node_names = [n.name for n in folded.graph.node if n.name]
    assert len(node_names) == len(set(node_names))
    assert ops(folded).count("Add") == 2
    assert_same_outputs(model, folded, x_feed())


def test_three_folds_into_one_name_count_up() -> None:
    nodes, weights = [], {"W": W}
    for k in range(3):
        site, site_weights = dyt("x", f"d{k}", prefix=f"s{k}_")
        nodes += [*site, helper.make_node("MatMul", [f"d{k}", "W"], [f"y{k}"])]
        weights.update(site_weights)
    model = build(nodes, ["y0", "y1", "y2"], weights)
    report, folded = fold(model)
    assert report.folded == 3
    assert {"W.dyt_folded", "W.dyt_folded.1", "W.dyt_folded.2"} <= {i.name for i in folded.graph.initializer}
    assert_same_outputs(model, folded, x_feed())


def test_the_inserted_beta_add_is_named_after_its_linear_layer() -> None:
    nodes, weights = dyt()
    nodes.append(helper.make_node("MatMul", ["d", "W"], ["y"], name="blocks.0.fc1"))
    model = build(nodes, ["y"], {**weights, "W": W})
    _, folded = fold(model)
    add = folded.graph.node[-1]
    assert (add.op_type, add.name) == ("Add", "blocks.0.fc1_beta")


def test_a_tanh_that_is_no_dyt_does_not_stop_the_search() -> None:
    nodes, weights = dyt()
    bare = helper.make_node("Tanh", ["x"], ["plain"])  # before the DyT in graph order
    model = build([bare, *nodes, helper.make_node("MatMul", ["d", "W"], ["y"])], ["plain", "y"], {**weights, "W": W})
    report, folded = fold(model)
    assert (report.folded, report.skipped) == (1, 0)
    assert_same_outputs(model, folded, x_feed())
