"""The engine manifest: round trip, every compatibility decision, host facts, checking a plan file."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

import pytest

from dyt_deploy.tensorrt import manifest as em
from dyt_deploy.tensorrt.manifest import (
    EngineIncompatibleError,
    EngineManifest,
    EngineManifestError,
    HostFacts,
    check_compatibility,
    check_engine_file,
    manifest_path_for,
    read_engine_manifest,
    write_engine_manifest,
)

HERE = HostFacts(tensorrt_version="10.13.0.35", gpu_name="NVIDIA A10G", compute_capability="8.6", cuda_version="12.8")
COMMAND = ["dyt-build", "repo/vit-dyt", "-o", "repo/vit-dyt/1/model.plan"]


def engine_manifest(**changes: object) -> EngineManifest:
    values = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA A10G", compute_capability="8.6",
                  onnx_sha256="a" * 64, plan_sha256="b" * 64, precision="fp32", onnx_path="model.onnx",
                  profiles={"x": {"min": [1, 8], "opt": [8, 8], "max": [32, 8]}}, build={"command": COMMAND})
    values.update(changes)
    return EngineManifest(**values)


def test_round_trip(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    manifest = engine_manifest(plugin=True, cuda_version="12.8")
    write_engine_manifest(manifest_path_for(plan), manifest)
    assert manifest_path_for(plan).name == "model.plan.json"
    data = json.loads(manifest_path_for(plan).read_text())
    assert data["format"] == "dyt-deploy/engine-manifest" and data["format_version"] == 1
    assert data["compute_capability"] == "8.6" and data["plugin"] is True
    assert read_engine_manifest(plan) == manifest


def test_reading_tolerates_unknown_keys_and_refuses_missing_ones(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    data = {**engine_manifest().to_dict(), "added_later": 1}
    manifest_path_for(plan).write_text(json.dumps(data))
    assert read_engine_manifest(plan).tensorrt_version == "10.13.0.35"
    del data["compute_capability"]
    manifest_path_for(plan).write_text(json.dumps(data))
    with pytest.raises(EngineManifestError, match="missing compute_capability; rebuild"):
        read_engine_manifest(plan)


def test_missing_or_foreign_manifest(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    with pytest.raises(EngineManifestError, match="has no engine manifest .*rebuild it with dyt-build"):
        read_engine_manifest(plan)
    manifest_path_for(plan).write_text("{not json")
    with pytest.raises(EngineManifestError, match="not valid JSON"):
        read_engine_manifest(plan)
    manifest_path_for(plan).write_text(json.dumps({"format": "dyt-deploy/manifest"}))
    with pytest.raises(EngineManifestError, match="not a dyt-deploy engine manifest"):
        read_engine_manifest(plan)


def test_same_host_is_compatible() -> None:
    decision = check_compatibility(engine_manifest(), HERE, onnx_sha256="a" * 64)
    assert decision.ok and not decision.warnings
    decision.raise_if_refused()


def test_patch_release_of_tensorrt_is_compatible() -> None:
    assert check_compatibility(engine_manifest(), HostFacts("10.13.2.6", "NVIDIA A10G", "8.6")).ok


@pytest.mark.parametrize("version", ["10.12.0.36", "11.13.0.1", "9.3.0", "unknown"])
def test_other_tensorrt_major_or_minor_is_refused(version: str) -> None:
    decision = check_compatibility(engine_manifest(), HostFacts(version, "NVIDIA A10G", "8.6"))
    assert not decision.ok
    assert f"built with TensorRT 10.13.0.35, this host has {version}" in decision.message()
    assert "Rebuild it on this host: dyt-build repo/vit-dyt -o repo/vit-dyt/1/model.plan" in decision.message()
    with pytest.raises(EngineIncompatibleError, match="cannot be loaded here"):
        decision.raise_if_refused()


def test_other_compute_capability_is_refused() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts("10.13.0.35", "Tesla T4", "7.5"))
    assert decision.refusals == ["it was built for compute capability 8.6 (NVIDIA A10G), this GPU is 7.5 (Tesla T4)"]


def test_other_gpu_name_same_compute_capability_only_warns() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts("10.13.0.35", "NVIDIA A10", "8.6"))
    assert decision.ok
    assert decision.warnings == ["it was built on a NVIDIA A10G and runs on a NVIDIA A10 (same compute capability "
                                 "8.6); rebuild here for the best kernels"]


def test_changed_onnx_is_refused_and_absent_onnx_is_not_checked() -> None:
    decision = check_compatibility(engine_manifest(), HERE, onnx_sha256="c" * 64)
    assert decision.refusals == ["its ONNX file changed since the build (sha256 aaaaaaaaaaaa… in the manifest, "
                                 "cccccccccccc… now)"]
    assert check_compatibility(engine_manifest(), HERE, onnx_sha256=None).ok


def test_every_refusal_is_reported_at_once() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts("11.1.0", "H100", "9.0"), onnx_sha256="c" * 64,
                                   plan="repo/vit-dyt/1/model.plan")
    assert len(decision.refusals) == 3
    message = decision.message()
    assert message.startswith("engine repo/vit-dyt/1/model.plan cannot be loaded here: ")
    assert "TensorRT 10.13.0.35" in message and "compute capability 8.6" in message and "ONNX file changed" in message


def test_unknown_host_facts_warn_instead_of_deciding() -> None:
    decision = check_compatibility(engine_manifest(), HostFacts())
    assert decision.ok
    assert decision.warnings == ["this host's TensorRT version is unknown",
                                 "this host's GPU compute capability is unknown"]


def test_rebuild_command_falls_back_to_a_generic_one() -> None:
    assert engine_manifest(build={}).rebuild_command() == "dyt-build MODEL.onnx|REPO/NAME -o model.plan"
    quoted = engine_manifest(build={"command": ["dyt-build", "my models/m.onnx"]}).rebuild_command()
    assert quoted == "dyt-build 'my models/m.onnx'"


def test_major_minor() -> None:
    assert em.major_minor("10.13.0.35") == (10, 13)
    assert em.major_minor("11.4") == (11, 4)
    assert em.major_minor("unknown") is None
    assert em.major_minor("11") is None


# ---- host facts ----


def test_gather_host_facts_without_tensorrt_or_gpu(no_tensorrt: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(em, "nvidia_smi_facts", lambda device=None: (None, None))
    facts = em.gather_host_facts()
    assert facts.tensorrt_version is None and facts.gpu_name is None and facts.compute_capability is None


def test_gather_host_facts_reads_tensorrt_and_torch_cuda(fake_trt, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    facts = em.gather_host_facts()
    assert facts.tensorrt_version == "10.13.0.35"
    assert (facts.gpu_name, facts.compute_capability) == ("NVIDIA H100 80GB HBM3", "9.0")


def test_gather_host_facts_falls_back_to_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="NVIDIA L4, 8.9\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    facts = em.gather_host_facts()
    assert (facts.gpu_name, facts.compute_capability) == ("NVIDIA L4", "8.9")
    assert calls[0][-2:] == ["-i", "2"]


def test_nvidia_smi_absent_or_odd(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(command, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert em.nvidia_smi_facts() == (None, None)
    assert em.parse_nvidia_smi("") == (None, None)
    assert em.parse_nvidia_smi("[N/A]") == (None, None)
    assert em.parse_nvidia_smi("NVIDIA GeForce RTX 4090, 8.9\nNVIDIA GeForce RTX 4090, 8.9") == (
        "NVIDIA GeForce RTX 4090", "8.9")


# ---- checking a plan file ----


def write_engine(folder: Path, plan_bytes: bytes = b"PLAN", onnx_bytes: bytes = b"ONNX", **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plan, onnx_file = folder / "model.plan", folder / "model.onnx"
    plan.write_bytes(plan_bytes)
    onnx_file.write_bytes(onnx_bytes)
    values = dict(plan_sha256=hashlib.sha256(plan_bytes).hexdigest(),
                  onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest())
    values.update(changes)
    write_engine_manifest(manifest_path_for(plan), engine_manifest(**values))
    return plan


def test_check_engine_file_accepts_a_matching_engine(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    manifest, decision = check_engine_file(plan, HERE)
    assert manifest.precision == "fp32" and decision.ok


def test_check_engine_file_refuses_a_swapped_plan(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    plan.write_bytes(b"ANOTHER PLAN")
    with pytest.raises(EngineManifestError, match="not the engine its manifest describes .* rebuild it: dyt-build"):
        check_engine_file(plan, HERE)


def test_check_engine_file_refuses_a_stale_engine(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"RE-EXPORTED")
    with pytest.raises(EngineIncompatibleError, match="ONNX file changed since the build"):
        check_engine_file(plan, HERE)


def test_check_engine_file_uses_an_explicit_onnx(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"OTHER")
    with pytest.raises(EngineIncompatibleError, match="ONNX file changed"):
        check_engine_file(plan, HERE, onnx_path=other)


def test_check_engine_file_skips_the_onnx_check_when_the_file_is_gone(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    (tmp_path / "model.onnx").unlink()
    assert check_engine_file(plan, HERE)[1].ok


def test_check_engine_file_refuses_another_gpu(tmp_path: Path) -> None:
    plan = write_engine(tmp_path)
    with pytest.raises(EngineIncompatibleError) as info:
        check_engine_file(plan, HostFacts("10.13.0.35", "Tesla T4", "7.5"))
    assert str(info.value).endswith("Rebuild it on this host: dyt-build repo/vit-dyt -o repo/vit-dyt/1/model.plan")


def test_check_engine_file_logs_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plan = write_engine(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dyt_deploy.tensorrt"):
        check_engine_file(plan, HostFacts("10.13.0.35", "NVIDIA A10", "8.6"))
    assert "runs on a NVIDIA A10" in caplog.text


def test_check_engine_file_without_a_plan(tmp_path: Path) -> None:
    with pytest.raises(EngineManifestError, match="no engine at .*build one with dyt-build"):
        check_engine_file(tmp_path / "model.plan", HERE)
