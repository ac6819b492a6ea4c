"""Edges of the engine manifest: same-major compute capabilities, version parsing, host facts, file layout.

Written against the mutants `make mutation` found surviving in ``tensorrt/manifest.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from dyt_deploy.errors import DytDeployError
from dyt_deploy.tensorrt import manifest as em
from dyt_deploy.tensorrt.manifest import (
    Compatibility,
    EngineIncompatibleError,
    EngineManifest,
    EngineManifestError,
    HostFacts,
    check_compatibility,
    check_engine_file,
    manifest_path_for,
    read_engine_manifest,
    recorded_onnx_path,
    write_engine_manifest,
)

REQUIRED = ["tensorrt_version", "gpu_name", "compute_capability", "onnx_sha256", "plan_sha256", "profiles",
            "precision"]


def engine_manifest(**changes: object) -> EngineManifest:
    values = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA A10G", compute_capability="8.6",
                  onnx_sha256="a" * 64, plan_sha256="b" * 64, precision="fp16", profiles={})
    values.update(changes)
    return EngineManifest(**values)


# ---- compute capability: minors matter ----

@pytest.mark.parametrize(("built", "host"), [("8.6", "8.0"), ("8.0", "8.6"), ("8.6", "8.9"), ("9.0", "9.0a")])
def test_same_major_other_minor_compute_capability_is_refused(built: str, host: str) -> None:
    """An sm_86 engine has no sm_80 kernels (nor the other way round): same major is not enough."""
    decision = check_compatibility(engine_manifest(compute_capability=built),
                                   HostFacts("10.13.0.35", "NVIDIA A10G", host))
    assert not decision.ok
    assert decision.refusals == [f"it was built for compute capability {built} (NVIDIA A10G), "
                                 f"this GPU is {host} (NVIDIA A10G)"]
    assert decision.warnings == []  # refused, not also warned about the name


def test_same_compute_capability_with_an_unknown_gpu_name_neither_refuses_nor_warns() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts("10.13.0.35", None, "8.6"))
    assert decision.ok and decision.warnings == []


def test_unknown_compute_capability_warns_but_the_tensorrt_check_still_decides() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts("10.12.0", "NVIDIA A10G", None))
    assert decision.warnings == ["this host's GPU compute capability is unknown"]
    assert decision.refusals == ["it was built with TensorRT 10.13.0.35, this host has 10.12.0"]


def test_unknown_tensorrt_version_warns_but_the_gpu_check_still_decides() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts(None, "Tesla T4", "7.5"))
    assert decision.warnings == ["this host's TensorRT version is unknown"]
    assert len(decision.refusals) == 1 and "compute capability 8.6" in decision.refusals[0]


def test_an_unparseable_recorded_tensorrt_version_is_refused_even_when_equal() -> None:
    decision = check_compatibility(engine_manifest(tensorrt_version="custom"),
                                   HostFacts("custom", "NVIDIA A10G", "8.6"))
    assert decision.refusals == ["it was built with TensorRT custom, this host has custom"]


def test_tensorrt_minor_matters_and_patch_does_not() -> None:
    host = HostFacts("10.13.9", "NVIDIA A10G", "8.6")
    assert check_compatibility(engine_manifest(tensorrt_version="10.13.0.35"), host).ok
    assert not check_compatibility(engine_manifest(tensorrt_version="10.14.0.1"), host).ok
    assert not check_compatibility(engine_manifest(tensorrt_version="11.13.0.1"), host).ok


def test_the_onnx_refusal_shows_twelve_characters_of_each_hash() -> None:
    manifest = engine_manifest(onnx_sha256="0123456789abcdef" * 4)
    decision = check_compatibility(manifest, HostFacts("10.13.0.35", "NVIDIA A10G", "8.6"),
                                   onnx_sha256="fedcba9876543210" * 4)
    assert decision.refusals == ["its ONNX file changed since the build (sha256 0123456789ab… in the manifest, "
                                 "fedcba987654… now)"]
    host = HostFacts("10.13.0.35", "NVIDIA A10G", "8.6")
    assert check_compatibility(manifest, host, onnx_sha256=manifest.onnx_sha256).ok


def test_the_decision_names_the_plan_and_the_rebuild_command() -> None:
    manifest = engine_manifest(build={"command": ["dyt-build", "m.onnx", "-o", "m.plan"]})
    decision = check_compatibility(manifest, HostFacts("9.0", "T4", "7.5"), plan="repo/m/1/model.plan")
    assert decision.plan == "repo/m/1/model.plan"
    assert decision.rebuild == "dyt-build m.onnx -o m.plan"
    assert check_compatibility(manifest, HostFacts()).plan == "model.plan"  # the default


# ---- Compatibility ----

def test_compatibility_message_joins_every_refusal() -> None:
    decision = Compatibility("a.plan", ["first", "second"], ["ignored"], "dyt-build x")
    assert not decision.ok
    assert decision.message() == ("engine a.plan cannot be loaded here: first; second. "
                                  "Rebuild it on this host: dyt-build x")
    with pytest.raises(EngineIncompatibleError) as info:
        decision.raise_if_refused()
    assert str(info.value) == decision.message()
    assert isinstance(info.value, DytDeployError)


def test_warnings_alone_do_not_refuse() -> None:
    decision = Compatibility("a.plan", [], ["a warning"], "dyt-build x")
    assert decision.ok
    decision.raise_if_refused()  # returns without raising


# ---- versions ----

@pytest.mark.parametrize(("text", "expected"), [
    ("10.13.0.35", (10, 13)), ("10.13", (10, 13)), ("8.6", (8, 6)), ("0.0", (0, 0)),
    ("10", None), ("", None), ("10.x", None), ("x.13", None), (".13", None), ("10.13rc1", None), ("v10.13", None),
])
def test_major_minor(text: str, expected: tuple | None) -> None:
    assert em.major_minor(text) == expected


# ---- the manifest as data ----

def test_to_dict_tags_the_format_and_holds_every_field() -> None:
    manifest = engine_manifest(cuda_version="12.8", plugin=True, onnx_path="model.onnx", build={"seconds": 3})
    data = manifest.to_dict()
    assert data["format"] == "dyt-deploy/engine-manifest"
    assert data["format_version"] == 1
    assert {k: v for k, v in data.items() if not k.startswith("format")} == {
        "tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA A10G", "compute_capability": "8.6",
        "onnx_sha256": "a" * 64, "plan_sha256": "b" * 64, "profiles": {}, "precision": "fp16",
        "onnx_path": "model.onnx", "plugin": True, "cuda_version": "12.8", "build": {"seconds": 3}}
    assert EngineManifest.from_dict(data) == manifest


def test_from_dict_fills_optional_fields_with_their_defaults() -> None:
    data = {"format": "dyt-deploy/engine-manifest", **{name: "x" for name in REQUIRED}}
    manifest = EngineManifest.from_dict(data)
    assert (manifest.onnx_path, manifest.plugin, manifest.cuda_version, manifest.build) == (None, False, None, {})


def test_from_dict_lists_every_missing_field_and_names_its_source() -> None:
    data = {"format": "dyt-deploy/engine-manifest", "gpu_name": "x", "precision": "fp32", "plugin": True}
    missing = [name for name in REQUIRED if name not in data]
    with pytest.raises(EngineManifestError) as info:
        EngineManifest.from_dict(data, source="repo/m/1/model.plan.json")
    assert str(info.value) == (f"repo/m/1/model.plan.json: missing {', '.join(missing)}; "
                               "rebuild the engine with dyt-build")
    with pytest.raises(EngineManifestError, match="^engine manifest: missing "):
        EngineManifest.from_dict(data)


def test_from_dict_refuses_another_format_and_says_which() -> None:
    with pytest.raises(EngineManifestError) as info:
        EngineManifest.from_dict({"format": "other/format"}, source="x.json")
    assert str(info.value) == "x.json: not a dyt-deploy engine manifest (format 'other/format')"
    with pytest.raises(EngineManifestError) as info:
        EngineManifest.from_dict({})
    assert str(info.value) == "engine manifest: not a dyt-deploy engine manifest (format None)"


def test_manifest_path_appends_json_to_the_plan_name() -> None:
    assert manifest_path_for("repo/m/1/model.plan") == Path("repo/m/1/model.plan.json")
    assert manifest_path_for(Path("engine.v2.plan")) == Path("engine.v2.plan.json")


def test_written_manifest_is_indented_json_with_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "model.plan.json"
    write_engine_manifest(path, engine_manifest())
    text = path.read_text()
    assert text.endswith("}\n")
    assert '\n  "format": "dyt-deploy/engine-manifest",\n' in text  # one key per line, two-space indent
    assert json.loads(text) == engine_manifest().to_dict()


def test_read_errors_name_the_manifest_file(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    with pytest.raises(EngineManifestError) as info:
        read_engine_manifest(plan)
    assert str(info.value).startswith(f"{plan} has no engine manifest (model.plan.json); engines are tied to the "
                                      "TensorRT version and GPU that built them")
    manifest_path_for(plan).write_text("[")
    with pytest.raises(EngineManifestError, match=r"model\.plan\.json: not valid JSON \(.+\); rebuild the engine"):
        read_engine_manifest(plan)
    manifest_path_for(plan).write_text(json.dumps({"format": "dyt-deploy/engine-manifest"}))
    with pytest.raises(EngineManifestError, match=r"^.*model\.plan\.json: missing tensorrt_version"):
        read_engine_manifest(plan)


# ---- host facts ----

def test_tensorrt_without_a_version_attribute_reads_as_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert em._installed_tensorrt_version() == "unknown"
    versioned = types.ModuleType("tensorrt")
    versioned.__version__ = "10.9.0"
    monkeypatch.setitem(sys.modules, "tensorrt", versioned)
    assert em._installed_tensorrt_version() == "10.9.0"


def test_host_facts_of_a_chosen_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: asked.append(index) or (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU{index}")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert em._cuda_device_facts(3) == ("GPU3", "8.9", "12.8")
    assert em._cuda_device_facts(None) == ("GPU0", "8.9", "12.8")
    assert asked == [3, 0]


def test_host_facts_without_cuda_use_nvidia_smi_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(em, "nvidia_smi_facts", lambda device=None: (f"smi{device}", "7.5"))
    assert em._cuda_device_facts(2) == ("smi2", "7.5", None)


def test_host_facts_without_torch_use_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(em, "nvidia_smi_facts", lambda device=None: (f"smi{device}", "8.0"))
    assert em._cuda_device_facts(1) == ("smi1", "8.0", None)


def test_gather_host_facts_passes_the_device_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(em, "_installed_tensorrt_version", lambda: "10.1")
    monkeypatch.setattr(em, "_cuda_device_facts", lambda device: (f"gpu{device}", "9.0", "12.4"))
    assert em.gather_host_facts(5) == HostFacts("10.1", "gpu5", "9.0", "12.4")
    assert em.gather_host_facts() == HostFacts("10.1", "gpuNone", "9.0", "12.4")


def test_nvidia_smi_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0, stdout="NVIDIA A100-SXM4-80GB, 8.0\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert em.nvidia_smi_facts(1) == ("NVIDIA A100-SXM4-80GB", "8.0")
    command, kwargs = calls[0]
    assert command == ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "1"]
    assert kwargs == {"capture_output": True, "text": True, "timeout": 20, "check": True}


@pytest.mark.parametrize("error", [subprocess.CalledProcessError(9, "nvidia-smi"),
                                   subprocess.TimeoutExpired("nvidia-smi", 20), PermissionError("denied")])
def test_nvidia_smi_failures_mean_unknown(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def failing(command, **kwargs):
        raise error

    monkeypatch.setattr(subprocess, "run", failing)
    assert em.nvidia_smi_facts(0) == (None, None)


@pytest.mark.parametrize(("visible", "expected"), [(None, "0"), ("", "0"), (" 3 ,4", "3"), ("GPU-abc", "GPU-abc")])
def test_first_visible_device(monkeypatch: pytest.MonkeyPatch, visible: str | None, expected: str) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert em._first_visible_device() == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("  NVIDIA A10G ,  8.6  \n", ("NVIDIA A10G", "8.6")),
    ("Vendor, Inc. Card, 9.0", ("Vendor, Inc. Card", "9.0")),  # the last comma splits
    (", 8.6", (None, None)),
    ("NVIDIA A10G, [N/A]", (None, None)),
    ("NVIDIA A10G", (None, None)),
    ("   \n", (None, None)),
])
def test_parse_nvidia_smi(text: str, expected: tuple) -> None:
    assert em.parse_nvidia_smi(text) == expected


# ---- the plan file ----

def test_recorded_onnx_path_resolves_against_the_plan_folder(tmp_path: Path) -> None:
    plan = tmp_path / "1" / "model.plan"
    plan.parent.mkdir()
    (tmp_path / "model.onnx").write_bytes(b"ONNX")
    assert recorded_onnx_path(plan, engine_manifest(onnx_path="../model.onnx")) == plan.parent / "../model.onnx"
    assert recorded_onnx_path(plan, engine_manifest(onnx_path="model.onnx")) is None  # not in 1/
    assert recorded_onnx_path(plan, engine_manifest(onnx_path=None)) is None
    assert recorded_onnx_path(plan, engine_manifest(onnx_path="")) is None


def test_check_engine_file_returns_the_manifest_and_logs_each_warning(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    onnx_file = tmp_path / "elsewhere.onnx"
    onnx_file.write_bytes(b"ONNX")
    manifest = engine_manifest(plan_sha256=hashlib.sha256(b"PLAN").hexdigest(),
                               onnx_sha256=hashlib.sha256(b"ONNX").hexdigest())
    write_engine_manifest(manifest_path_for(plan), manifest)
    with caplog.at_level(logging.WARNING, logger="dyt_deploy.tensorrt"):
        got, decision = check_engine_file(str(plan), HostFacts(), onnx_path=str(onnx_file))
    assert got == manifest
    assert decision.ok and decision.plan == str(plan)
    assert [r.getMessage() for r in caplog.records] == [
        f"engine {plan}: this host's TensorRT version is unknown",
        f"engine {plan}: this host's GPU compute capability is unknown",
    ]


def test_check_engine_file_checks_the_explicit_onnx_over_the_recorded_one(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    (tmp_path / "model.onnx").write_bytes(b"CHANGED")
    (tmp_path / "built-from.onnx").write_bytes(b"ONNX")
    manifest = engine_manifest(plan_sha256=hashlib.sha256(b"PLAN").hexdigest(), onnx_path="model.onnx",
                               onnx_sha256=hashlib.sha256(b"ONNX").hexdigest())
    write_engine_manifest(manifest_path_for(plan), manifest)
    host = HostFacts("10.13.0.35", "NVIDIA A10G", "8.6")
    with pytest.raises(EngineIncompatibleError):
        check_engine_file(plan, host)  # the recorded model.onnx changed
    assert check_engine_file(plan, host, onnx_path=tmp_path / "built-from.onnx")[1].ok
