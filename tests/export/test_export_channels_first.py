"""Channels-first DyT (gamma/beta over dim 1 of NCHW, ConvNeXt's LayerNorm2d sites) in every ONNX form and folded.

A small conv net stands in for the ConvNeXt parts that matter here: a DyT read by an unpadded 2x2 conv
(ConvNeXt's downsample), a DyT on pooled features read by flatten -> linear (ConvNeXt's head), and a DyT
read by a padded depthwise conv and a residual Add (the stem), which cannot fold.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dyt_deploy.export import dyt_nodes, fold_dyt_affine, to_form
from dyt_deploy.export.forms import count_bare_dyt_chains
from dyt_deploy.nn import DynamicTanh

C = 8


class ChannelsFirstNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem_norm = DynamicTanh(C, channels_last=False)
        self.dw = nn.Conv2d(C, C, 3, padding=1, groups=C)
        self.down_norm = DynamicTanh(C, channels_last=False)
        self.down = nn.Conv2d(C, 2 * C, 2, stride=2)
        self.head_norm = DynamicTanh(2 * C, channels_last=False)
        self.fc = nn.Linear(2 * C, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(x)
        x = x + self.dw(x)  # padded depthwise conv + residual: not foldable
        x = self.down(self.down_norm(x))  # unpadded conv: folds
        pooled = x.mean((2, 3), keepdim=True)
        return self.fc(self.head_norm(pooled).flatten(1))  # flatten -> linear: folds


def random_net(seed: int = 0) -> ChannelsFirstNet:
    torch.manual_seed(seed)
    net = ChannelsFirstNet().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, DynamicTanh):
                module.alpha.fill_(0.7)
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape))
    return net


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ChannelsFirstNet, Path]:
    net = random_net()
    path = tmp_path_factory.mktemp("cf") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.randn(2, C, 8, 8),), dynamo=True, dynamic_shapes=({0: "batch"},),
                                    input_names=["x"], output_names=["y"], verbose=False)
    program.model.ir_version = min(program.model.ir_version, 10)
    ir.save(program.model, path)
    return net, path


def run_onnx(model: ir.Model, tmp_path: Path, x: np.ndarray) -> np.ndarray:
    path = tmp_path / "run.onnx"
    ir.save(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def expected(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, C, 8, 8)).astype(np.float32)


def test_the_export_holds_three_channels_first_dyt_patterns(exported) -> None:
    _, path = exported
    gammas = [n.inputs[1] for n in ir.load(path).graph if n.op_type == "Mul" and n.inputs[0].producer() is not None
              and n.inputs[0].producer().op_type == "Tanh"]
    assert sorted(tuple(g.const_value.shape) for g in gammas) == [(C, 1, 1), (C, 1, 1), (2 * C, 1, 1)]


@pytest.mark.parametrize("form", ["function", "plugin"])
def test_every_site_becomes_one_node_with_its_per_channel_gamma(exported, form: str) -> None:
    _, path = exported
    model = ir.load(path)

    counts = to_form(model, form)

    assert counts == Counter({"": 3})
    assert count_bare_dyt_chains(model) == 0
    assert sorted(tuple(n.inputs[2].const_value.shape) for n in dyt_nodes(model)) == [(C, 1, 1), (C, 1, 1),
                                                                                       (2 * C, 1, 1)]


def test_function_form_runs_in_onnxruntime_with_the_right_broadcasting(exported, tmp_path: Path, x) -> None:
    net, path = exported
    model = ir.load(path)
    to_form(model, "function")

    np.testing.assert_allclose(run_onnx(model, tmp_path, x), expected(net, x), atol=1e-5, rtol=1e-5)


def test_fold_takes_the_unpadded_conv_and_the_flattened_linear_and_leaves_the_stem(exported, tmp_path: Path,
                                                                                    x) -> None:
    net, path = exported
    model = ir.load(path)
    before = Counter(n.op_type for n in model.graph)

    report = fold_dyt_affine(model)

    assert (report.folded, report.skipped, report.linear_layers) == (2, 1, 2)
    after = Counter(n.op_type for n in model.graph)
    assert after["Mul"] == before["Mul"] - 2 and after["Add"] == before["Add"] - 2  # bias folded, no new Add
    assert after["Tanh"] == before["Tanh"] == 3
    np.testing.assert_allclose(run_onnx(model, tmp_path, x), expected(net, x), atol=1e-5, rtol=1e-5)
    to_form(model, "function")  # the folded sites are tanh_only overloads, the stem keeps its affine
    assert Counter(n.overload for n in dyt_nodes(model)) == {"tanh_only": 2, "": 1}
    np.testing.assert_allclose(run_onnx(model, tmp_path, x), expected(net, x), atol=1e-5, rtol=1e-5)


class FlattenAfterSpatial(nn.Module):
    """A DyT over C channels of a 2x2 map, flattened to C*4 features: feature f belongs to channel f // 4."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = DynamicTanh(C, channels_last=False)
        self.fc = nn.Linear(C * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.norm(x), 1))


def test_fold_through_a_flatten_of_a_spatial_map_repeats_gamma_per_position(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = FlattenAfterSpatial().eval()
    with torch.no_grad():
        net.norm.weight.copy_(torch.randn(C))
        net.norm.bias.copy_(torch.randn(C))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.onnx.export(net, (torch.randn(2, C, 2, 2),), dynamo=True, dynamic_shapes=({0: "batch"},),
                                  input_names=["x"], verbose=False).model
    model.ir_version = min(model.ir_version, 10)

    report = fold_dyt_affine(model)

    assert (report.folded, report.skipped) == (1, 0)
    x = np.random.default_rng(0).standard_normal((4, C, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model, tmp_path, x), expected(net, x), atol=1e-5, rtol=1e-5)


# -- hand-built graphs: which convs a channels-first DyT folds into -------------------------------

def conv_after_dyt(conv_inputs: list[str], weights: dict[str, np.ndarray], **conv_attrs) -> ir.Model:
    """x (N, C, 4, 4) -> channels-first DyT -> Conv(**conv_attrs) -> y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    params = {"alpha": np.array([0.6]), "gamma": rng.normal(1, 0.5, (C, 1, 1)), "beta": rng.normal(0, 0.5, (C, 1, 1)),
              **weights}
    nodes = [helper.make_node("Mul", ["x", "alpha"], ["ax"]), helper.make_node("Tanh", ["ax"], ["t"]),
             helper.make_node("Mul", ["t", "gamma"], ["gt"]), helper.make_node("Add", ["gt", "beta"], ["d"]),
             helper.make_node("Conv", ["d", *conv_inputs], ["y"], **conv_attrs)]
    graph = helper.make_graph(
        nodes, "cf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 10
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize(("case", "folds"), [
    ("1x1 with bias", True), ("2x2 stride 2 without bias", True),
    ("3x3 padded", False), ("grouped", False), ("auto_pad same", False)])
def test_a_channels_first_dyt_folds_into_a_conv_only_without_padding_or_groups(case: str, folds: bool,
                                                                               tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    w = {"1x1 with bias": (4, C, 1, 1), "2x2 stride 2 without bias": (4, C, 2, 2), "3x3 padded": (4, C, 3, 3),
         "grouped": (4, C // 2, 1, 1), "auto_pad same": (4, C, 3, 3)}[case]
    attrs = {"2x2 stride 2 without bias": {"strides": [2, 2]}, "3x3 padded": {"pads": [1, 1, 1, 1]},
             "grouped": {"group": 2}, "auto_pad same": {"auto_pad": "SAME_UPPER"}}.get(case, {})
    weights = {"W": rng.normal(size=w)}
    inputs = ["W"]
    if case != "2x2 stride 2 without bias":
        weights["B"] = rng.normal(size=4)
        inputs.append("B")
    model = conv_after_dyt(inputs, weights, **attrs)
    x = np.random.default_rng(9).standard_normal((2, C, 4, 4)).astype(np.float32)
    before = run_onnx(model, tmp_path, x)

    report = fold_dyt_affine(model)

    assert (report.folded, report.skipped) == ((1, 0) if folds else (0, 1))
    assert sum(n.op_type == "Mul" for n in model.graph) == (1 if folds else 2)
    np.testing.assert_allclose(run_onnx(model, tmp_path, x), before, atol=1e-5, rtol=1e-5)
