"""build_engine: input resolution, ONNX preparation, settings, and the TensorRT steps against a fake tensorrt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_testlib import make_dyt_onnx, make_model_folder

from dyt_deploy.errors import DytDeployError
from dyt_deploy.runners.base import MissingBackendError
from dyt_deploy.tensorrt import build as eb
from dyt_deploy.tensorrt.build import (
    BuildSettings,
    EngineBuildError,
    build_engine,
    describe_parser_error,
    max_batch_of,
    model_profiles,
    prepare_onnx,
    resolve_target,
)
from dyt_deploy.tensorrt.manifest import HostFacts, read_engine_manifest
from dyt_deploy.tensorrt.profiles import ProfileError, parse_profiles
from dyt_deploy.triton_config import read_config

HOST = HostFacts("10.13.0.35", "NVIDIA A10G", "8.6", "12.8")


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> HostFacts:
    monkeypatch.setattr(eb, "gather_host_facts", lambda: HOST)
    return HOST


# ---- where to read and write ----


def test_folder_target(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "repo")
    target = resolve_target(folder)
    assert target.onnx_path == folder / "1" / "model.onnx"
    assert target.plan_path == folder / "1" / "model.plan"
    assert target.model_dir == folder and target.model_manifest["name"] == "tiny-dyt"
    assert resolve_target(folder, tmp_path / "elsewhere.plan").plan_path == tmp_path / "elsewhere.plan"


def test_onnx_file_target(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    target = resolve_target(path)
    assert (target.onnx_path, target.plan_path, target.model_dir, target.model_manifest) == (
        path, tmp_path / "m.plan", None, None)
    assert resolve_target(path, tmp_path / "out" / "e.plan").plan_path == tmp_path / "out" / "e.plan"


def test_onnx_inside_a_model_folder_uses_its_manifest(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "repo")
    target = resolve_target(folder / "1" / "model.onnx")
    assert target.model_dir == folder.resolve() and target.model_manifest["family"] == "tiny"
    assert target.plan_path == folder / "1" / "model.plan"


@pytest.mark.parametrize("case, fragment", [
    ("missing", "does not exist; pass an .onnx file or a model folder"),
    ("not_onnx", "is not an .onnx file"),
    ("no_manifest", "no dyt.json; is this a dyt-deploy model folder?"),
    ("no_onnx", "no 1/model.onnx; export into the folder first"),
    ("plan_is_onnx", "would overwrite the ONNX file"),
    ("plan_is_dir", "is a folder; name the plan file"),
])
def test_target_errors(tmp_path: Path, case: str, fragment: str) -> None:
    folder = make_model_folder(tmp_path / "repo")
    onnx_path = folder / "1" / "model.onnx"
    args = {
        "missing": (tmp_path / "nope.onnx", None),
        "not_onnx": ((folder / "dyt.json"), None),
        "no_manifest": (tmp_path, None),
        "no_onnx": (folder, None),
        "plan_is_onnx": (onnx_path, onnx_path),
        "plan_is_dir": (onnx_path, tmp_path),
    }[case]
    if case == "no_onnx":
        onnx_path.unlink()
    with pytest.raises(DytDeployError, match=fragment):
        resolve_target(*args)


def test_max_batch_of(tmp_path: Path) -> None:
    assert max_batch_of(make_model_folder(tmp_path / "a", max_batch_size=16)) == 16
    unbatched = make_model_folder(tmp_path / "b", shape=[1, "seq", 8])
    assert read_config(unbatched).max_batch_size == 0  # proto3 leaves the 0 out of the text
    assert max_batch_of(unbatched) is None
    assert max_batch_of(None) is None
    assert max_batch_of(tmp_path) is None


# ---- profiles for a target ----


def test_folder_profiles_come_from_dyt_json_and_config(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "repo", config={"max_seq_len": 64}, max_batch_size=16)
    target = resolve_target(folder)
    profiles = model_profiles(target, prepare_onnx(target.onnx_path), None)
    assert profiles["x"].to_dict() == {"min": [1, 1, 8], "opt": [8, 64, 8], "max": [16, 64, 8]}


def test_onnx_profiles_come_from_dim_params(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, shape=["batch", 4, 6, 6], param_shape=[4, 1, 1])
    target = resolve_target(path)
    profiles = model_profiles(target, prepare_onnx(path), None)
    assert profiles["x"].to_dict() == {"min": [1, 4, 6, 6], "opt": [8, 4, 6, 6], "max": [32, 4, 6, 6]}


def test_given_profiles_win_and_unknown_dims_need_one(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, shape=["batch", "tokens", 8])
    target, prepared = resolve_target(path), prepare_onnx(path)
    with pytest.raises(ProfileError, match=r"x: shape \[batch, tokens, 8\] has dims with no default range"):
        model_profiles(target, prepared, None)
    given = parse_profiles(["x=1x1x8:2x16x8:4x64x8"])
    assert model_profiles(target, prepared, given) == given


# ---- preparing the ONNX for TensorRT ----


def test_pattern_form_is_passed_through(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    prepared = prepare_onnx(path)
    assert (prepared.plugin_nodes, prepared.notes, prepared.precision) == (0, [], "fp32")
    assert onnx.load_from_string(prepared.data).graph == onnx.load(str(path)).graph
    assert prepared.inputs == [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 8]}]


def test_plugin_form_is_checked_and_completed(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, "plugin", ["", "no_bias", "tanh_only"])
    prepared = prepare_onnx(path)
    assert prepared.plugin_nodes == 3
    assert prepared.notes == ["3 DynamicTanh nodes run as the dyt_deploy plugin (2 given neutral gamma/beta inputs)"]
    nodes = onnx.load_from_string(prepared.data).graph.node
    assert [len(n.input) for n in nodes] == [4, 4, 4]
    assert all({a.name for a in n.attribute} == {"plugin_namespace", "plugin_version"} for n in nodes)


def test_plugin_form_with_bad_parameters_lists_every_node(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, "plugin", ["", "no_bias"], param_shape=[3])  # x's last dim is 8
    with pytest.raises(DytDeployError) as info:
        prepare_onnx(path)
    message = str(info.value)
    assert message.startswith("the plugin DyT form cannot be built: ")
    assert "node 'site0.dyt'" in message and "node 'site1.dyt'" in message
    assert "gamma of shape [3] does not fit x of shape [?, ?, 8]" in message


def test_plugin_form_checks_channels_first_parameters(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, "plugin", [""], shape=["batch", 4, 6, 6], param_shape=[4, 1, 1])
    assert prepare_onnx(path).plugin_nodes == 1
    make_dyt_onnx(path, "plugin", [""], shape=["batch", 5, 6, 6], param_shape=[4, 1, 1])
    with pytest.raises(DytDeployError, match=r"\[4, 1, 1\] does not fit x of shape \[\?, 5, 6, 6\]"):
        prepare_onnx(path)


def test_function_form_with_several_overloads_is_inlined(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, "function", ["", "tanh_only"])
    prepared = prepare_onnx(path)
    model = onnx.load_from_string(prepared.data)
    assert len(model.functions) == 0 and "DynamicTanh" not in {n.op_type for n in model.graph.node}
    assert prepared.notes == ["inlined the local functions: DynamicTanh has several overloads and TensorRT's parser "
                              "keys functions by name alone"]


def test_function_form_with_one_overload_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, "function", ["", ""])
    prepared = prepare_onnx(path)
    assert len(onnx.load_from_string(prepared.data).functions) == 1 and prepared.notes == []


def test_fp16_precision_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, dtype=np.float16)
    assert prepare_onnx(path).precision == "fp16"
    assert prepare_onnx(path).inputs[0]["dtype"] == "float16"


def test_unreadable_onnx(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x00not a protobuf\xff" * 3)
    with pytest.raises(DytDeployError, match="not a readable ONNX file"):
        prepare_onnx(path)


# ---- settings and the command line recorded for rebuilds ----


def test_settings_problems(tmp_path: Path) -> None:
    assert BuildSettings().problems() == []
    assert BuildSettings(1024, 5, tmp_path / "cache.bin").problems() == []
    problems = BuildSettings(0, 6, tmp_path).problems()
    assert problems == ["--workspace must be a positive number of MiB, not 0",
                        "--opt-level must be 0..5 (TensorRT's default is 3), not 6",
                        f"--timing-cache {tmp_path} is a folder; name a file"]


def test_describe_parser_error() -> None:
    class Error:
        def __init__(self, node: int, name: str, op: str, desc: str) -> None:
            self.values = node, name, op, desc

        def node(self) -> int:
            return self.values[0]

        def node_name(self) -> str:
            return self.values[1]

        def node_operator(self) -> str:
            return self.values[2]

        def desc(self) -> str:
            return self.values[3]

    assert describe_parser_error(Error(3, "site0.dyt", "DynamicTanh", "Plugin not found")) == (
        "node 3 (site0.dyt, DynamicTanh): Plugin not found")
    assert describe_parser_error(Error(-1, "", "", "Failed to parse ONNX model")) == "Failed to parse ONNX model"


# ---- without TensorRT ----


def test_without_tensorrt_one_line_naming_the_extra(tmp_path: Path, no_tensorrt: None) -> None:
    folder = make_model_folder(tmp_path / "repo")
    with pytest.raises(MissingBackendError) as info:
        build_engine(folder)
    message = str(info.value)
    assert "TensorRT is not installed" in message and "dyt-deploy[tensorrt]" in message and "\n" not in message
    assert not (folder / "1" / "model.plan").exists()


def test_input_problems_are_reported_before_tensorrt_is_needed(tmp_path: Path, no_tensorrt: None) -> None:
    folder = make_model_folder(tmp_path / "repo")
    with pytest.raises(ProfileError, match="'nope', which is not an input"):
        build_engine(folder, profiles=parse_profiles(["nope=1:1:1"]))
    with pytest.raises(DytDeployError, match="--opt-level must be 0..5"):
        build_engine(folder, opt_level=9)


# ---- against the fake TensorRT ----


def test_no_gpu_is_a_one_line_error(tmp_path: Path, fake_trt) -> None:
    fake_trt.no_gpu = True
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    with pytest.raises(MissingBackendError) as info:
        build_engine(path)
    assert "no usable CUDA device" in str(info.value) and "factory function returned nullptr" in str(info.value)
    assert not (tmp_path / "m.plan").exists()


def test_build_writes_plan_and_manifest(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    folder = make_model_folder(tmp_path / "repo", config={"max_positions": 128})
    cache = tmp_path / "cache" / "timing.bin"
    result = build_engine(folder, timing_cache=cache, workspace_mb=512, opt_level=4)
    plan = folder / "1" / "model.plan"
    assert result.plan_path == plan and result.manifest_path == folder / "1" / "model.plan.json"
    assert plan.read_bytes().startswith(b"FAKE-PLAN:")
    manifest = read_engine_manifest(plan)
    assert manifest == result.manifest
    assert (manifest.tensorrt_version, manifest.gpu_name, manifest.compute_capability) == ("10.13.0.35",
                                                                                           "NVIDIA A10G", "8.6")
    assert manifest.onnx_sha256 == hashlib.sha256((folder / "1" / "model.onnx").read_bytes()).hexdigest()
    assert manifest.plan_sha256 == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert manifest.onnx_path == "model.onnx" and manifest.plugin is False and manifest.precision == "fp32"
    assert manifest.profiles == {"x": {"min": [1, 1, 8], "opt": [8, 128, 8], "max": [32, 128, 8]}}
    assert manifest.build["strongly_typed"] is True and manifest.build["tf32"] is False
    assert manifest.build["command"] == ["dyt-build", str(folder), "-o", str(plan), "--timing-cache", str(cache),
                                         "--workspace", "512", "--opt-level", "4"]
    assert sorted(p.name for p in plan.parent.iterdir()) == ["model.onnx", "model.plan", "model.plan.json"]


def test_build_settings_reach_tensorrt(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    cache = tmp_path / "timing.bin"
    cache.write_bytes(b"OLD")
    build_engine(path, timing_cache=cache, workspace_mb=256, opt_level=1,
                 profiles=parse_profiles(["x=1x4x8:2x4x8:4x16x8"]))
    assert fake_trt.network_flags == 1 << 5  # STRONGLY_TYPED
    assert fake_trt.cleared_flags == [7] and fake_trt.set_flags == []  # TF32 off, no precision flag
    assert fake_trt.pool_limits == {0: 256 << 20} and fake_trt.opt_level == 1
    assert fake_trt.profiles == [{"x": ((1, 4, 8), (2, 4, 8), (4, 16, 8))}]
    assert fake_trt.parsed[1] == str(path)  # external data resolve against the original file
    assert fake_trt.timing_cache_in == b"OLD" and cache.read_bytes() == b"OLD+tuned"


def test_defaults_leave_tensorrt_defaults(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, shape=[2, 4, 8])  # static: no profile needed
    result = build_engine(path)
    assert fake_trt.pool_limits == {} and fake_trt.opt_level is None and fake_trt.profiles == []
    assert result.manifest.profiles == {} and result.manifest.build["command"] == [
        "dyt-build", str(path), "-o", str(tmp_path / "m.plan")]


def test_tensorrt_without_strongly_typed_flag(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    fake_trt.module.NetworkDefinitionCreationFlag = type("Flags", (), {})()
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    assert build_engine(path).manifest.build["strongly_typed"] is False
    assert fake_trt.network_flags == 0


def test_parse_errors_are_collected_and_nothing_is_written(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    fake_trt.parse_errors = [
        {"node": 0, "node_name": "site0.dyt", "node_operator": "DynamicTanh", "desc": "Plugin not found"},
        {"node": 4, "node_name": "site1.mul", "node_operator": "Mul", "desc": "Invalid broadcast"},
    ]
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    (tmp_path / "m.plan").write_bytes(b"PREVIOUS")
    with pytest.raises(EngineBuildError) as info:
        build_engine(path)
    assert str(info.value) == (f"TensorRT could not parse {path}: node 0 (site0.dyt, DynamicTanh): Plugin not found; "
                               "node 4 (site1.mul, Mul): Invalid broadcast")
    assert (tmp_path / "m.plan").read_bytes() == b"PREVIOUS"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.plan"]


def test_failed_build_is_an_error(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    fake_trt.build_fails = True
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    with pytest.raises(EngineBuildError, match="could not build an engine"):
        build_engine(path)
    assert not (tmp_path / "m.plan").exists() and not (tmp_path / "m.plan.json").exists()


def test_plugin_form_registers_the_plugin_first(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path, "plugin", ["", "tanh_only"])
    result = build_engine(path)
    assert "dyt_deploy::DynamicTanh" in fake_trt.plugin_registry
    assert result.manifest.plugin is True
    assert result.notes == ["2 DynamicTanh nodes run as the dyt_deploy plugin (1 given neutral gamma/beta inputs)"]
    parsed = onnx.load_from_string(fake_trt.parsed[0])
    assert [len(n.input) for n in parsed.graph.node] == [4, 4]


def test_rebuild_replaces_the_engine(tmp_path: Path, fake_trt, host: HostFacts) -> None:
    path = tmp_path / "m.onnx"
    make_dyt_onnx(path)
    first = build_engine(path).manifest
    make_dyt_onnx(path, overloads=["no_bias"])
    second = build_engine(path).manifest
    assert first.onnx_sha256 != second.onnx_sha256
    assert json.loads((tmp_path / "m.plan.json").read_text())["onnx_sha256"] == second.onnx_sha256


@pytest.fixture(scope="module")
def exported_plugin_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dyt-export model folder: vit_tiny, plugin form, folded (so it mixes overloads). Exported before
    any fake tensorrt is installed (torch.export probes for the real one)."""
    import dyt_deploy
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx

    tmp = tmp_path_factory.mktemp("export")
    save_checkpoint(dyt_deploy.create_model("vit_tiny", norm="dyt", depth=1, img_size=32), tmp / "m.pt")
    export_onnx(tmp / "m.pt", repository=tmp / "repo", name="vit", form="plugin", fold=True, verify=False)
    return tmp / "repo" / "vit"


@pytest.mark.slow
def test_exported_plugin_folder_builds(exported_plugin_folder: Path, fake_trt, host: HostFacts) -> None:
    result = build_engine(exported_plugin_folder)
    assert result.manifest.plugin is True
    assert result.manifest.profiles == {"pixel_values": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                                                         "max": [32, 3, 32, 32]}}
    parsed = onnx.load_from_string(fake_trt.parsed[0])
    assert {len(n.input) for n in parsed.graph.node if n.op_type == "DynamicTanh"} == {4}


def test_broken_tensorrt_install_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyt_deploy.tensorrt import backend

    def broken(name: str):
        raise ImportError("libnvinfer.so.10: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(backend.importlib, "import_module", broken)
    with pytest.raises(MissingBackendError, match=r"installed but does not load \(libnvinfer.so.10: cannot open"):
        backend.import_tensorrt()
