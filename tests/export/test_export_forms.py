"""pattern <-> function <-> plugin rewrites keep what the model computes (API and the dyt-form CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from typer.testing import CliRunner

from dyt_deploy.cli import form_app
from dyt_deploy.errors import DytDeployError
from dyt_deploy.export import DOMAIN, OP_TYPE, convert_form_file, current_form, dyt_nodes
from dyt_deploy.export.forms import PLUGIN_VERSION, count_bare_dyt_chains

runner = CliRunner()
DYT_MODELS = ["vit_tiny", "llama_tiny", "bert_tiny"]


def feed_for(model) -> dict[str, np.ndarray]:
    """Inputs at sizes other than the export's (3 x 5), so dynamic dims are exercised too."""
    return {k: v.numpy() for k, v in model.example_inputs(seed=1, batch=3, seq=5).items()}


def run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def assert_same_outputs(first: list[np.ndarray], second: list[np.ndarray], atol: float = 1e-6) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("arch", DYT_MODELS)
def test_pattern_function_pattern_round_trip_keeps_outputs(zoo_export, tmp_path: Path, arch: str) -> None:
    done = zoo_export(arch, "dyt")
    feed = feed_for(done.model)
    original = run(done.pattern, feed)

    back = convert_form_file(done.function, tmp_path / "back.onnx", "pattern")
    assert (back.before, back.after) == ("function", "pattern")
    assert back.max_abs_diff is not None and back.max_abs_diff <= 1e-5

    restored = ir.load(tmp_path / "back.onnx")
    assert current_form(restored) == "pattern"
    assert dyt_nodes(restored) == []
    assert not restored.functions
    assert DOMAIN not in restored.opset_imports
    assert count_bare_dyt_chains(restored) == 3
    assert_same_outputs(original, run(done.function, feed))
    assert_same_outputs(original, run(tmp_path / "back.onnx", feed))


def test_dyt_form_cli_round_trip_keeps_outputs(zoo_export, tmp_path: Path) -> None:
    done = zoo_export("llama_tiny", "dyt")
    feed = feed_for(done.model)
    function_file, pattern_file = tmp_path / "function.onnx", tmp_path / "pattern.onnx"

    to_function = runner.invoke(form_app, [str(done.pattern), "--to", "function", "-o", str(function_file)])
    assert to_function.exit_code == 0, to_function.output
    assert "pattern -> function" in flat(to_function.output)
    assert "3 no_bias" in flat(to_function.output)
    assert len(dyt_nodes(ir.load(function_file))) == 3

    to_pattern = runner.invoke(form_app, [str(function_file), "--to", "pattern", "-o", str(pattern_file)])
    assert to_pattern.exit_code == 0, to_pattern.output
    assert "function -> pattern" in flat(to_pattern.output)
    assert current_form(ir.load(pattern_file)) == "pattern"

    original = run(done.pattern, feed)
    assert_same_outputs(original, run(function_file, feed))
    assert_same_outputs(original, run(pattern_file, feed))


def test_dyt_form_cli_refuses_to_overwrite_in_place_without_force(zoo_export, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(zoo_export("vit_tiny", "dyt").pattern.read_bytes())
    before = source.read_bytes()

    result = runner.invoke(form_app, [str(source), "--to", "function"])

    assert result.exit_code == 2
    assert "error:" in result.output and "--force" in flat(result.output)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_dyt_form_cli_in_place_with_force(zoo_export, tmp_path: Path) -> None:
    done = zoo_export("vit_tiny", "dyt")
    source = tmp_path / "model.onnx"
    source.write_bytes(done.pattern.read_bytes())

    result = runner.invoke(form_app, [str(source), "--to", "function", "--force"])

    assert result.exit_code == 0, result.output
    assert current_form(ir.load(source)) == "function"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no staging folder left behind
    feed = feed_for(done.model)
    assert_same_outputs(run(done.pattern, feed), run(source, feed))


@pytest.mark.parametrize("arch", ["vit_tiny", "llama_tiny"])
def test_plugin_form_has_bodiless_nodes_with_plugin_attributes(zoo_export, tmp_path: Path, arch: str) -> None:
    done = zoo_export(arch, "dyt")
    plugin_file = tmp_path / "plugin.onnx"

    conversion = convert_form_file(done.pattern, plugin_file, "plugin")

    assert conversion.max_abs_diff is None  # onnxruntime cannot run the plugin form, so it is not checked
    proto = onnx.load(plugin_file)
    assert list(proto.functions) == []
    nodes = [n for n in proto.graph.node if n.op_type == OP_TYPE]
    assert len(nodes) == 3
    for node in nodes:
        assert node.domain == DOMAIN
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes == {"plugin_namespace": DOMAIN.encode(), "plugin_version": PLUGIN_VERSION.encode()}
        assert PLUGIN_VERSION == "1"
    assert current_form(ir.load(plugin_file)) == "plugin"
    assert count_bare_dyt_chains(ir.load(plugin_file)) == 0
    with pytest.raises(OrtFail, match="not a registered function/op"):  # no kernel for a bodiless custom op
        ort.InferenceSession(str(plugin_file), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch", ["vit_tiny", "llama_tiny"])
def test_plugin_back_to_pattern_restores_identical_outputs(zoo_export, tmp_path: Path, arch: str) -> None:
    done = zoo_export(arch, "dyt")
    convert_form_file(done.function, tmp_path / "plugin.onnx", "plugin")
    restored = convert_form_file(tmp_path / "plugin.onnx", tmp_path / "pattern.onnx", "pattern")
    assert (restored.before, restored.after) == ("plugin", "pattern")

    model = ir.load(tmp_path / "pattern.onnx")
    assert dyt_nodes(model) == [] and not model.functions
    assert count_bare_dyt_chains(model) == 3
    feed = feed_for(done.model)
    for a, b in zip(run(done.pattern, feed), run(tmp_path / "pattern.onnx", feed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plugin_to_function_runs_again(zoo_export, tmp_path: Path) -> None:
    done = zoo_export("bert_tiny", "dyt")
    convert_form_file(done.pattern, tmp_path / "plugin.onnx", "plugin")
    convert_form_file(tmp_path / "plugin.onnx", tmp_path / "function.onnx", "function")

    proto = onnx.load(tmp_path / "function.onnx")
    assert [(f.domain, f.name, f.overload) for f in proto.functions] == [(DOMAIN, OP_TYPE, "")]
    for node in (n for n in proto.graph.node if n.op_type == OP_TYPE):
        assert not node.attribute  # the plugin attributes are gone once there is a body again
    feed = feed_for(done.model)
    assert_same_outputs(run(done.pattern, feed), run(tmp_path / "function.onnx", feed))


def test_unknown_form_and_missing_source_are_clear_errors(zoo_export, tmp_path: Path) -> None:
    with pytest.raises(DytDeployError, match="known: function, pattern, plugin"):
        convert_form_file(zoo_export("vit_tiny", "dyt").pattern, tmp_path / "x.onnx", "graph")
    with pytest.raises(DytDeployError, match="no such file"):
        convert_form_file(tmp_path / "missing.onnx", tmp_path / "x.onnx", "function")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(DytDeployError, match="not a readable ONNX model"):
        convert_form_file(tmp_path / "junk.onnx", tmp_path / "x.onnx", "function")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]
