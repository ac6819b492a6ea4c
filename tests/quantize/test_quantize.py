"""dyt_deploy.quantize on the tiny trained twins: DyT scales from the graph without data, the INT8
verdict in onnxruntime and OpenVINO, LayerNorm's need for data or dynamic ranges, refusals that
write nothing, and INT8 model folders that load like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from reference_testlib import tiny_reference

from dyt_deploy.errors import DytDeployError, OptionError
from dyt_deploy.export import ExportConfig
from dyt_deploy.quantize import QuantizeOptions, quantize_model
from dyt_deploy.quantize.sites import linear_sites
from dyt_deploy.runners import runner_for_folder
from dyt_deploy.runners.onnxruntime_runner import _disabled_optimizers

ONE_OVER_127 = np.float32(1 / 127)


@pytest.fixture(scope="module")
def twins():
    return tiny_reference("image")


# The tiny twins reach 74-79% test top-1 (200 steps): their thin margins flip a few more of the 360 held-out
# digits than the full twins' (99.7% agreement, README): the defaults' run is judged at 98% here.
TINY_AGREEMENT = 0.98


@pytest.fixture(scope="module")
def dyt_int8(twins, tmp_path_factory):
    """The DyT twin quantized with the defaults (no calibration data, no --data), written to a file."""
    out = tmp_path_factory.mktemp("int8") / "dyt.int8.onnx"
    return quantize_model(twins.checkpoints["dyt"], out, ExportConfig(),
                          QuantizeOptions(min_agreement=TINY_AGREEMENT)), out


@pytest.fixture(scope="module")
def exported(twins, tmp_path_factory):
    """Both twins exported to fp32 ONNX once (dyt-export), for the tests that start from an .onnx."""
    from dyt_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("fp32")
    for variant in ("dyt", "layernorm"):
        export_onnx(twins.checkpoints[variant], folder / f"{variant}.onnx", samples=1)
    return {variant: folder / f"{variant}.onnx" for variant in ("dyt", "layernorm")}


def _quantize_scales(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per QuantizeLinear: the quantized tensor's name -> (scale, zero point)."""
    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: (init[n.input[1]], init[n.input[2]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_post_dyt_inputs_get_scale_one_over_127_without_data(dyt_int8) -> None:
    result, path = dyt_int8
    assert not result.plan.needs_data
    fixed = result.plan.fixed_sites()
    assert fixed and all(s.kind == "dyt-folded" for s in fixed)
    scales = _quantize_scales(path)
    for site in fixed:
        scale, zero_point = scales[site.input]
        assert scale == ONE_OVER_127 and zero_point == 0 and zero_point.dtype == np.int8
    # every linear layer reading a tanh got the fixed scale; the others are quantized dynamically
    assert result.plan.table()["dyt-folded"] == {"static-fixed": len(fixed)}
    assert result.plan.table()["other"] == {"dynamic": len(result.plan.sites) - len(fixed)}
    assert result.fused.get("MatMulIntegerToFloat") == len(fixed)
    assert result.fused.get("DynamicQuantizeMatMul") == len(result.plan.sites) - len(fixed)


def test_int8_passes_its_verdict_on_the_twins_test_set(dyt_int8, twins) -> None:
    result, path = dyt_int8
    (ort,) = result.verdicts
    assert ort.data == str(twins.test_data) and ort.samples > 100  # the twin's own held-out set, found alone
    assert ort.passed and ort.agreement >= TINY_AGREEMENT
    assert ort.reference_accuracy - ort.accuracy <= 0.01
    quantization = result.summary()
    assert quantization["fixed_scales"] == [round(1 / 127, 8)] and quantization["needs_data"] is False


def test_data_free_int8_passes_the_default_verdict_on_both_runtimes(twins, tmp_path) -> None:
    """Only the DyT-fed layers quantized (their scale from the graph), the default floors (99% agreement,
    at most 1 point of accuracy), in onnxruntime and in OpenVINO's INT8 IR."""
    result = quantize_model(twins.checkpoints["dyt"], None, ExportConfig(repository=tmp_path, backend="openvino"),
                            QuantizeOptions(activations="float"))
    assert [v.runtime for v in result.verdicts] == ["onnxruntime", "openvino"]
    for verdict in result.verdicts:
        assert verdict.passed and verdict.agreement >= 0.99 and verdict.min_agreement == 0.99
    assert result.openvino["linear_layers"]["int8"] == len(result.plan.fixed_sites())  # OpenVINO runs them INT8


def test_unfolded_dyt_scale_is_the_gamma_beta_bound(twins, tmp_path) -> None:
    import torch

    from dyt_deploy.checkpoint import load_checkpoint

    result = quantize_model(twins.checkpoints["dyt"], tmp_path / "unfolded.onnx", ExportConfig(),
                            QuantizeOptions(fold=False, activations="float"))
    module = load_checkpoint(twins.checkpoints["dyt"]).model
    bounds = sorted(float(torch.max(m.weight.detach().abs() + m.bias.detach().abs())) for m in module.modules()
                    if type(m).__name__ == "DynamicTanh")
    got = sorted({s.bound for s in result.plan.fixed_sites()})
    assert all(s.kind == "dyt" for s in result.plan.fixed_sites())
    assert all(any(abs(b - g) < 1e-5 for b in bounds) for g in got)
    scales = _quantize_scales(tmp_path / "unfolded.onnx")
    for site in result.plan.fixed_sites():
        assert scales[site.input][0] == pytest.approx(site.bound / 127, rel=1e-6)
    assert set(result.plan.table()["other"]) == {"float"}


def test_int8_openvino_folder_runs_int8_and_loads_like_any_folder(twins, tmp_path) -> None:
    repo = tmp_path / "repo"
    result = quantize_model(twins.checkpoints["dyt"], None, ExportConfig(repository=repo, backend="openvino"),
                            QuantizeOptions(min_agreement=TINY_AGREEMENT))
    folder = repo / "vit_tiny-dyt-int8"
    assert result.model_dir == folder and (folder / "1" / "model.xml").is_file()
    assert {v.runtime for v in result.verdicts} == {"onnxruntime", "openvino"} and result.passed
    assert result.openvino["linear_layers"].get("int8", 0) == len(result.plan.fixed_sites())  # INT8 kernels
    assert result.manifest["precision"] == "int8" and result.manifest["quantization"]["how"]
    feed = {"pixel_values": np.load(twins.test_data)["pixel_values"][:4]}
    with runner_for_folder(folder) as runner:
        assert runner.infer(feed)["logits"].shape == (4, 10)


def test_int8_onnx_folder_serves_through_runner_for_folder(twins, tmp_path) -> None:
    repo = tmp_path / "repo"
    quantize_model(twins.checkpoints["dyt"], None, ExportConfig(repository=repo), QuantizeOptions(verify=False))
    folder = repo / "vit_tiny-dyt-int8"
    assert _disabled_optimizers(folder / "1" / "model.onnx") == ["MatMulAddFusion"]
    feed = {"pixel_values": np.load(twins.test_data)["pixel_values"][:2]}
    with runner_for_folder(folder) as runner:
        assert runner.infer(feed)["logits"].shape == (2, 10)


def test_layernorm_without_data_or_dynamic_is_a_clear_error(exported, tmp_path) -> None:
    out = tmp_path / "ln.int8.onnx"
    with pytest.raises(DytDeployError, match="calibration") as caught:
        quantize_model(exported["layernorm"], out, ExportConfig(), QuantizeOptions(activations="float"))
    message = str(caught.value)
    assert "layernorm" in message and "--activations dynamic" in message and "DyT" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_layernorm_dynamic_says_post_norm_inputs_need_data_or_runtime_ranges(exported, tmp_path) -> None:
    result = quantize_model(exported["layernorm"], tmp_path / "ln.int8.onnx", ExportConfig())
    assert not result.plan.fixed_sites()
    notes = " ".join(result.plan.notes)
    assert "post-layernorm" in notes and "needs calibration data or run-time ranges" in notes
    assert "no foldable DyT site" in notes
    assert result.plan.table()["layernorm"] == {"dynamic": 8 // 2}  # 2 blocks x (qkv, fc1)


def test_layernorm_static_with_calibration(exported, twins, tmp_path) -> None:
    result = quantize_model(exported["layernorm"], tmp_path / "ln.int8.onnx", ExportConfig(),
                            QuantizeOptions(activations="static", calibration=twins.test_data, data=twins.test_data))
    assert result.plan.needs_data and result.passed
    assert set(result.plan.table()["layernorm"]) == {"static-calibrated"}


def test_no_foldable_dyt_site_says_so() -> None:
    """A model whose only linear layer reads a ReLU: no DyT site; with float nothing is left to quantize."""
    from onnx import TensorProto, helper

    from dyt_deploy.quantize.plan import make_plan

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    sites = linear_sites(helper.make_model(graph))
    assert [s.kind for s in sites] == ["other"]
    assert "no foldable DyT site" in " ".join(make_plan(sites, "dynamic", False).notes)
    with pytest.raises(DytDeployError, match="no foldable DyT site"):
        make_plan(sites, "float", False)


@pytest.mark.parametrize("arrays, expected", [
    ({"images": np.zeros((4, 1, 8, 8), np.float32)}, "no array 'pixel_values'"),
    ({"pixel_values": np.zeros((4, 3, 8, 8), np.float32)}, "has shape (4, 3, 8, 8)"),
    ({"pixel_values": np.zeros((4, 1, 8, 8), np.int64)}, "has dtype int64"),
])
def test_bad_calibration_files_are_clear_errors_and_write_nothing(exported, tmp_path, arrays, expected) -> None:
    bad = tmp_path / "calib.npz"
    np.savez(bad, **arrays)
    out = tmp_path / "out" / "m.int8.onnx"
    with pytest.raises(DytDeployError, match="bad calibration file") as caught:
        quantize_model(exported["layernorm"], out, ExportConfig(), QuantizeOptions(activations="static",
                                                                                   calibration=bad))
    assert expected in str(caught.value)
    assert not out.parent.exists()


def test_a_calibration_file_that_is_not_npz(exported, tmp_path) -> None:
    bad = tmp_path / "calib.npz"
    bad.write_text("not an archive")
    with pytest.raises(DytDeployError, match="not a readable .npz"):
        quantize_model(exported["dyt"], tmp_path / "m.onnx", ExportConfig(),
                       QuantizeOptions(activations="static", calibration=bad))
    assert not (tmp_path / "m.onnx").exists()


def test_options_refuse_static_without_calibration_and_int8_fp16() -> None:
    with pytest.raises(OptionError, match="calibration"):
        QuantizeOptions(activations="static")
    with pytest.raises(OptionError, match="fp32"):
        ExportConfig(precision="int8", dtype="fp16")


def test_an_exported_onnx_is_quantized_against_itself(dyt_int8, exported, twins, tmp_path) -> None:
    result = quantize_model(exported["dyt"], tmp_path / "dyt.int8.onnx", ExportConfig(),
                            QuantizeOptions(data=twins.test_data, min_agreement=TINY_AGREEMENT))
    assert result.passed and result.verdicts[0].samples == 360
    assert {s.kind for s in result.plan.fixed_sites()} == {"dyt-folded"}  # folded here, as for a checkpoint
    with pytest.raises(DytDeployError, match="already quantized"):
        quantize_model(dyt_int8[1], tmp_path / "twice.onnx", ExportConfig())


def test_static_shapes_still_fuse_to_int8_kernels(twins, tmp_path) -> None:
    """With static shapes onnxruntime's MatMulAddFusion would turn every DQ -> MatMul -> Add into a float
    Gemm (no INT8 kernel left); sessions of QDQ models turn it off, so each fixed-scale layer fuses."""
    import onnxruntime as ort

    path = tmp_path / "static.int8.onnx"
    result = quantize_model(twins.checkpoints["dyt"], path, ExportConfig(dynamic=()),
                            QuantizeOptions(activations="float", verify=False))
    fixed = len(result.plan.fixed_sites())
    assert result.fused["MatMulIntegerToFloat"] == fixed

    def fused(disabled: list[str]) -> int:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return sum(n.op_type == "MatMulIntegerToFloat" for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)

    assert fused(_disabled_optimizers(path)) == fixed
    assert fused([]) < fixed  # the rewrite the runner turns off (if onnxruntime fixes it, drop the workaround)


def test_dyt_check_judges_an_int8_folder_by_int8s_verdict(twins, tmp_path) -> None:
    """dyt-check on an INT8 folder: its own file by cosine similarity (elementwise fp32 tolerances
    would fail any INT8 model), the PyTorch runner still elementwise; on data, agreement at INT8's
    threshold."""
    from dyt_deploy.check import check_model, check_model_on_data
    from dyt_deploy.parity import INT8_MIN_COSINE, ParityReport

    repo = tmp_path / "repo"
    quantize_model(twins.checkpoints["dyt"], None, ExportConfig(repository=repo), QuantizeOptions(verify=False))
    folder = repo / "vit_tiny-dyt-int8"
    reports = check_model(folder, runners=["ort", "torch"], samples=2)
    assert reports["ort"].min_cosine == INT8_MIN_COSINE and reports["ort"].passed
    assert reports["torch"].min_cosine is None and reports["torch"].passed
    assert min(o.cosine for o in reports["ort"].outputs.values()) >= INT8_MIN_COSINE
    elementwise = ParityReport(1e-4, 1e-3)  # what the folder was judged by before: fp32's tolerances
    assert max(o.max_abs for o in reports["ort"].outputs.values()) > elementwise.atol * 10
    on_data = check_model_on_data(folder, twins.test_data, runners=["ort"], agreement={"int8": TINY_AGREEMENT})
    assert on_data["ort"].figures.precision == "int8" and on_data["ort"].figures.threshold == TINY_AGREEMENT
    assert on_data["ort"].passed, on_data["ort"].figures
