"""model.pt: dyt-deploy's own format, foreign formats, the pickle guard, bad files, atomic saves."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from dyt_deploy.checkpoint import FORMAT_TAG, FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from dyt_deploy.errors import CheckpointError, DytDeployError
from dyt_deploy.models import create_model, list_models
from dyt_deploy.nn import DynamicTanh

SMALL = {"vit_tiny": {"depth": 1, "img_size": 32}, "llama_tiny": {"depth": 1}, "bert_tiny": {"depth": 1}}


def make(arch: str = "vit_tiny", norm: str | None = None, seed: int = 0) -> nn.Module:
    model = create_model(arch, norm=norm, seed=seed, **SMALL[arch])
    # non-default norm parameters, so a load that skipped them would show
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.rand(param.shape, generator=generator) * 0.5)
    return model


def outputs(model: nn.Module, reference: nn.Module | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(reference or model).example_inputs(seed=7))


def assert_same_model(loaded: nn.Module, original: nn.Module) -> None:
    assert not loaded.training
    assert torch.equal(outputs(loaded, original), outputs(original))


# --- dyt-deploy's own format ---------------------------------------------------------------


@pytest.mark.parametrize(("arch", "norm"), [("vit_tiny", "dyt"), ("llama_tiny", "rmsnorm"), ("bert_tiny", "derf")])
def test_round_trip(tmp_path: Path, arch: str, norm: str) -> None:
    model = make(arch, norm)
    path = save_checkpoint(model, tmp_path / "model.pt")
    assert path == tmp_path / "model.pt" and path.is_file()

    loaded = load_checkpoint(path)

    assert loaded.source_format == FORMAT_TAG
    assert loaded.arch == arch and loaded.model.arch == arch
    assert loaded.norm == norm
    assert loaded.config == model.config
    assert loaded.path == path
    assert_same_model(loaded.model, model)
    assert load_checkpoint(path, arch=arch).arch == arch  # a matching arch= is fine


def test_file_is_weights_only_loadable(tmp_path: Path) -> None:
    model = make("vit_tiny", "dyt")
    path = save_checkpoint(model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT_TAG
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["arch"] == "vit_tiny"
    assert payload["norm"] == "dyt"
    assert payload["config"] == model.config
    assert payload["state_dict"].keys() == model.state_dict().keys()
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())


def test_save_creates_parent_dirs_and_load_model_is_eval(tmp_path: Path) -> None:
    model = make("llama_tiny", "dyt").train()
    path = save_checkpoint(model, tmp_path / "a" / "b" / "model.pt")
    reloaded = load_model(path)
    assert not reloaded.training
    assert any(isinstance(m, DynamicTanh) for m in reloaded.modules())
    assert torch.equal(outputs(reloaded), outputs(model.eval()))


def test_save_refuses_non_zoo_models(tmp_path: Path) -> None:
    with pytest.raises(DytDeployError, match="zoo"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())


# --- bare state_dicts and training checkpoints -----------------------------------------------------


@pytest.mark.parametrize("norm", ["dyt", "derf", "layernorm", "rmsnorm"])
@pytest.mark.parametrize("arch", ["vit_tiny", "llama_tiny", "bert_tiny"])
def test_bare_state_dict_infers_norm(tmp_path: Path, arch: str, norm: str) -> None:
    model = make(arch, norm)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt", arch=arch, **SMALL[arch])
    assert loaded.source_format == "state_dict"
    assert loaded.norm == norm
    assert loaded.arch == arch
    assert loaded.config["norm"] == norm
    assert_same_model(loaded.model, model)


def test_explicit_norm_that_does_not_fit(tmp_path: Path) -> None:
    model = make("vit_tiny", "dyt")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "sd.pt", arch="vit_tiny", norm="layernorm", **SMALL["vit_tiny"])


@pytest.mark.parametrize("key", ["model", "state_dict", "model_state_dict"])
def test_training_checkpoint(tmp_path: Path, key: str) -> None:
    model = make("vit_tiny", "dyt")
    checkpoint = {key: model.state_dict(), "epoch": 1, "args": argparse.Namespace(lr=0.1)}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt", arch="vit_tiny", **SMALL["vit_tiny"])
    assert loaded.norm == "dyt"
    assert_same_model(loaded.model, model)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapper_prefixed_state_dict(tmp_path: Path, prefix: str) -> None:
    model = make("llama_tiny", "rmsnorm")
    torch.save({f"{prefix}{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pt")
    loaded = load_checkpoint(tmp_path / "ddp.pt", arch="llama_tiny", **SMALL["llama_tiny"])
    assert loaded.norm == "rmsnorm"
    assert_same_model(loaded.model, model)


# --- torch.export and pickled modules ---------------------------------------------------------------


def test_torch_export_round_trip(tmp_path: Path) -> None:
    model = make("vit_tiny", "dyt")
    program = torch.export.export(model, (), model.example_inputs(seed=7))
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = load_checkpoint(tmp_path / "model.pt2")
    assert loaded.source_format == "torch.export"
    assert loaded.arch is None and loaded.norm is None
    assert torch.equal(outputs(loaded.model, model), outputs(model))


def test_bad_pt2(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"not an archive" * 10)
    with pytest.raises(CheckpointError, match="torch.export"):
        load_checkpoint(tmp_path / "model.pt2")


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    model = make("vit_tiny", "dyt").train()
    torch.save(model, tmp_path / "whole.pt")
    model.eval()
    with pytest.raises(CheckpointError, match="--trust-pickle") as info:
        load_checkpoint(tmp_path / "whole.pt")
    assert "refused" in str(info.value)

    loaded = load_checkpoint(tmp_path / "whole.pt", trust_pickle=True)
    assert loaded.source_format == "pickled-module"
    assert loaded.arch == "vit_tiny"
    assert loaded.config == model.config
    assert loaded.norm == "dyt"
    assert_same_model(loaded.model, model)


# --- bad inputs: each a CheckpointError that says what is wrong -----------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_checkpoint(make("vit_tiny", "dyt"), tmp_path / "model.pt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="a folder without config.json"):
        load_checkpoint(tmp_path)  # a directory is not a model.pt (nor a Hugging Face folder)


def test_truncated_file(tmp_path: Path, saved: Path) -> None:
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="it is a truncated or damaged zip archive") as info:
        load_checkpoint(truncated)
    assert str(truncated) in str(info.value)


@pytest.mark.parametrize("content", [b"garbage!" * 100, bytes(range(256)) * 4, b""], ids=["text", "bytes", "empty"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint: it is"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint: it is"):
        load_checkpoint(path, trust_pickle=True)


def test_bare_state_dict_without_arch(tmp_path: Path) -> None:
    torch.save(make("vit_tiny", "dyt").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="--arch") as info:
        load_checkpoint(tmp_path / "sd.pt")
    for name in list_models():
        assert name in str(info.value)


def test_bare_state_dict_with_unknown_arch(tmp_path: Path) -> None:
    torch.save(make("vit_tiny", "dyt").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet'"):
        load_checkpoint(tmp_path / "sd.pt", arch="resnet")


def test_state_dict_that_does_not_fit(tmp_path: Path) -> None:
    state = make("vit_tiny", "layernorm").state_dict()
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "sd.pt", arch="vit_tiny", depth=2, img_size=32)
    message = str(info.value)
    assert "does not fit architecture 'vit_tiny'" in message
    assert "missing keys" in message and "blocks.1.norm1.weight" in message
    assert "unexpected keys" in message and "extra.weight" in message


def test_state_dict_with_wrong_shapes(tmp_path: Path) -> None:
    torch.save(make("vit_tiny", "layernorm").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="wrong shapes") as info:
        load_checkpoint(tmp_path / "sd.pt", arch="vit_tiny", depth=1, img_size=64)
    assert "pos_embed" in str(info.value)


def test_recorded_arch_disagrees(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="records architecture 'vit_tiny', but 'bert_tiny'"):
        load_checkpoint(saved, arch="bert_tiny")


def test_newer_format_version(tmp_path: Path, saved: Path) -> None:
    payload = torch.load(saved, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer dyt-deploy"):
        load_checkpoint(tmp_path / "newer.pt")


def test_dict_without_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "note": "no weights here"}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_checkpoint(tmp_path / "meta.pt", arch="vit_tiny")


def test_not_a_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


def test_checkpoint_errors_are_project_errors() -> None:
    assert issubclass(CheckpointError, DytDeployError)


# --- atomic saves ---------------------------------------------------------------------------------


def test_failed_save_leaves_the_old_file(tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = saved.read_bytes()

    def broken_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make("vit_tiny", "layernorm"), saved)
    monkeypatch.undo()

    assert saved.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]  # no temp file left behind
    assert load_checkpoint(saved).norm == "dyt"


def test_save_overwrites_atomically(tmp_path: Path, saved: Path) -> None:
    save_checkpoint(make("vit_tiny", "layernorm"), saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]
    assert load_checkpoint(saved).norm == "layernorm"
