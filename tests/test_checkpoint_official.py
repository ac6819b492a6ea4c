"""Official DyT training checkpoints and safetensors state dicts through ``load_checkpoint``.

The checkpoints are built as the paper's training code writes them (tests/timm_reference.py), at
tiny sizes: the test timm names below map to small configs of the zoo's ViT and ConvNeXt, the way
``vit_base_patch16_224`` maps to ``vit_base``. Outputs are compared with the independent reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm_reference import (
    ConvNextSpec,
    VitSpec,
    convnext_forward,
    convnext_state,
    official_checkpoint,
    vit_forward,
    vit_state,
)

from dyt_deploy.checkpoint import load_checkpoint
from dyt_deploy.errors import CheckpointError, OptionError
from dyt_deploy.models import registry

TINY_VIT = VitSpec(dim=64, depth=2, heads=4, img=32, num_classes=10)
TINY_CONVNEXT = ConvNextSpec(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=7, img=32)
# the tiny configs are the timm names of tests/conftest.py's TINY_TIMM_NAMES
pytestmark = pytest.mark.usefixtures("tiny_timm_names")


def pixels(img: int, seed: int = 3) -> torch.Tensor:
    return torch.randn((2, 3, img, img), generator=torch.Generator().manual_seed(seed))


def close_to(model: torch.nn.Module, expected: torch.Tensor, img: int) -> bool:
    with torch.no_grad():
        got = model(pixels(img))
    return got.shape == expected.shape and bool(torch.allclose(got, expected, atol=1e-5, rtol=1e-5))


def write(path: Path, checkpoint: dict) -> Path:
    torch.save(checkpoint, path)
    return path


def vit_checkpoint(tmp_path: Path, ema: bool = True, **changes: object) -> tuple[Path, dict, dict]:
    model, averaged = vit_state(TINY_VIT, seed=1), vit_state(TINY_VIT, seed=2)
    checkpoint = official_checkpoint(model, averaged if ema else None, "test_vit_tiny_patch16_32", 10)
    checkpoint.update(changes)
    return write(tmp_path / "checkpoint-best.pth", checkpoint), model, averaged


# -- official checkpoints --------------------------------------------------------------------------

def test_official_vit_loads_with_no_options_and_uses_the_ema_weights(tmp_path: Path) -> None:
    path, model, ema = vit_checkpoint(tmp_path)
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.norm, loaded.weights, loaded.source_format) == (
        "vit_small", "dyt", "model_ema", "training-checkpoint")
    assert loaded.config["num_classes"] == 10 and loaded.config["global_pool"] == "avg"
    assert close_to(loaded.model, vit_forward(ema, TINY_VIT, pixels(32)), 32)
    assert not close_to(loaded.model, vit_forward(model, TINY_VIT, pixels(32)), 32)


def test_weights_model_picks_the_trained_weights(tmp_path: Path) -> None:
    path, model, _ = vit_checkpoint(tmp_path)
    loaded = load_checkpoint(path, weights="model")
    assert loaded.weights == "model"
    assert close_to(loaded.model, vit_forward(model, TINY_VIT, pixels(32)), 32)


def test_without_ema_the_model_weights_load_and_ema_is_refused(tmp_path: Path) -> None:
    path, model, _ = vit_checkpoint(tmp_path, ema=False)
    loaded = load_checkpoint(path)
    assert loaded.weights == "model"
    assert close_to(loaded.model, vit_forward(model, TINY_VIT, pixels(32)), 32)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, weights="ema")
    assert str(info.value) == (f"{path}: --weights ema, but the checkpoint holds no EMA weights "
                               "(no model_ema or state_dict_ema); pass --weights model")


def test_an_unknown_weights_choice_is_an_option_error(tmp_path: Path) -> None:
    path, _, _ = vit_checkpoint(tmp_path)
    with pytest.raises(OptionError) as info:
        load_checkpoint(path, weights="best")
    assert info.value.problems == [("weights", "unknown weights 'best'; choose one of model, ema")]


def test_official_convnext_loads_channels_first_dyt_everywhere(tmp_path: Path) -> None:
    model, ema = convnext_state(TINY_CONVNEXT, seed=1), convnext_state(TINY_CONVNEXT, seed=2)
    path = write(tmp_path / "checkpoint.pth", official_checkpoint(model, ema, "test_convnext_tiny_32", 7))
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.norm, loaded.weights, loaded.config["num_classes"]) == (
        "convnext_tiny", "dyt", "model_ema", 7)
    assert close_to(loaded.model, convnext_forward(ema, TINY_CONVNEXT, pixels(32)), 32)


def test_token_pooling_follows_the_keys(tmp_path: Path) -> None:
    spec = VitSpec(dim=64, depth=2, heads=4, img=32, num_classes=10, global_pool="token")
    state = vit_state(spec, seed=4)
    path = write(tmp_path / "token.pth", official_checkpoint(state, None, "test_vit_tiny_patch16_32", 10))
    loaded = load_checkpoint(path)
    assert loaded.config["global_pool"] == "token"
    assert close_to(loaded.model, vit_forward(state, spec, pixels(32)), 32)


def test_distributed_prefixes_strip(tmp_path: Path) -> None:
    state = vit_state(TINY_VIT, seed=1)
    wrapped = {f"module.{k}": v for k, v in state.items()}
    path = write(tmp_path / "ddp.pth", official_checkpoint(wrapped, None, "test_vit_tiny_patch16_32", 10))
    assert close_to(load_checkpoint(path).model, vit_forward(state, TINY_VIT, pixels(32)), 32)


def test_arch_overrides_the_recorded_name(tmp_path: Path) -> None:
    model, ema = vit_state(TINY_VIT, seed=1), vit_state(TINY_VIT, seed=2)
    path = write(tmp_path / "ckpt.pth", official_checkpoint(model, ema, "resnet50", 10))  # a name the zoo lacks
    loaded = load_checkpoint(path, arch="vit_tiny", dim=64, depth=2, heads=4, img_size=32)
    assert (loaded.arch, loaded.weights) == ("vit_tiny", "model_ema")
    assert close_to(loaded.model, vit_forward(ema, TINY_VIT, pixels(32)), 32)


def test_an_unknown_model_name_lists_the_supported_ones(tmp_path: Path) -> None:
    model = vit_state(TINY_VIT, seed=1)
    path = write(tmp_path / "swin.pth", official_checkpoint(model, None, "swin_base_patch4_window7_224", 10))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the checkpoint's model 'swin_base_patch4_window7_224' is not one")
    assert f"supported: {', '.join(registry.timm_names())}; " in message
    assert "vit_base_patch16_224" in message and "convnext_base" in message and "--arch" in message


def test_a_head_that_disagrees_with_nb_classes_is_an_error(tmp_path: Path) -> None:
    model = vit_state(TINY_VIT, seed=1)
    path = write(tmp_path / "odd.pth", official_checkpoint(model, None, "test_vit_tiny_patch16_32", 1000))
    with pytest.raises(CheckpointError, match="the head has 10 classes, but the training args say nb_classes=1000"):
        load_checkpoint(path)


def test_timm_train_script_checkpoints_load_too(tmp_path: Path) -> None:
    """timm's train.py: ``arch`` names the model, ``state_dict_ema`` holds the EMA weights."""
    model, ema = vit_state(TINY_VIT, seed=1), vit_state(TINY_VIT, seed=2)
    path = write(tmp_path / "model_best.pth.tar", {"epoch": 10, "arch": "test_vit_tiny_patch16_32",
                                                   "state_dict": model, "state_dict_ema": ema, "version": 2})
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.weights) == ("vit_small", "state_dict_ema")
    assert close_to(loaded.model, vit_forward(ema, TINY_VIT, pixels(32)), 32)
    assert load_checkpoint(path, weights="model").weights == "state_dict"


def test_ema_is_refused_for_formats_with_one_set_of_weights(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(vit_state(TINY_VIT, seed=1), path)
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        load_checkpoint(path, arch="vit_small", weights="ema", dim=64, depth=2, heads=4, img_size=32)
    loaded = load_checkpoint(path, arch="vit_small", weights="model", dim=64, depth=2, heads=4, img_size=32)
    assert loaded.weights is None  # a bare state dict: the one set of weights there is


def test_a_bare_state_dict_takes_its_class_count_from_the_head(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(vit_state(TINY_VIT, seed=1), path)
    loaded = load_checkpoint(path, arch="vit_small", dim=64, depth=2, heads=4, img_size=32)
    assert loaded.config["num_classes"] == 10 and loaded.config["global_pool"] == "avg"
    assert loaded.source_format == "state_dict"


# -- safetensors -----------------------------------------------------------------------------------

def test_safetensors_with_arch(tmp_path: Path) -> None:
    state = convnext_state(TINY_CONVNEXT, seed=5)
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_checkpoint(tmp_path / "model.safetensors", arch="convnext_tiny", depths=(1, 1, 2, 1),
                             dims=(16, 32, 48, 64), img_size=32)
    assert (loaded.source_format, loaded.norm, loaded.config["num_classes"]) == ("safetensors", "dyt", 7)
    assert close_to(loaded.model, convnext_forward(state, TINY_CONVNEXT, pixels(32)), 32)


def test_safetensors_without_arch_asks_for_it(tmp_path: Path) -> None:
    save_file(vit_state(TINY_VIT, seed=5), tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="does not say its architecture; pass --arch NAME"):
        load_checkpoint(tmp_path / "model.safetensors")


@pytest.mark.parametrize("key", ["arch", "architecture", "model"])
def test_safetensors_metadata_names_the_model(tmp_path: Path, key: str) -> None:
    state = vit_state(TINY_VIT, seed=5)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt", key: "test_vit_tiny_patch16_32"})
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.arch == "vit_small"
    assert close_to(loaded.model, vit_forward(state, TINY_VIT, pixels(32)), 32)


def test_safetensors_with_a_timm_config_beside_it(tmp_path: Path) -> None:
    """What a timm model folder holds: model.safetensors and a config.json naming the architecture."""
    state = vit_state(TINY_VIT, seed=5)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_vit_tiny_patch16_32.augreg_in1k",
                                                      "num_classes": 10, "global_pool": "avg"}))
    assert close_to(load_checkpoint(tmp_path / "model.safetensors").model,
                    vit_forward(state, TINY_VIT, pixels(32)), 32)


def test_safetensors_content_loads_whatever_its_name(tmp_path: Path) -> None:
    state = vit_state(TINY_VIT, seed=5)
    save_file(state, tmp_path / "weights.pt", metadata={"arch": "test_vit_tiny_patch16_32"})
    assert load_checkpoint(tmp_path / "weights.pt").source_format == "safetensors"


def test_safetensors_with_prefixes_and_a_torch_file_named_safetensors(tmp_path: Path) -> None:
    state = vit_state(TINY_VIT, seed=5)
    save_file({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.safetensors")
    options = {"arch": "vit_small", "dim": 64, "depth": 2, "heads": 4, "img_size": 32}
    assert close_to(load_checkpoint(tmp_path / "ddp.safetensors", **options).model,
                    vit_forward(state, TINY_VIT, pixels(32)), 32)
    torch.save(state, tmp_path / "really-torch.safetensors")  # the content tells, and the message says so
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "really-torch.safetensors", **options)
    assert str(info.value) == (f"{tmp_path / 'really-torch.safetensors'}: it is a PyTorch checkpoint archive, "
                               "not a safetensors file; name it .pt")


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_a_damaged_safetensors_file_is_one_line(tmp_path: Path, cut: float) -> None:
    save_file(vit_state(TINY_VIT, seed=5), tmp_path / "whole.safetensors")
    data = (tmp_path / "whole.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="vit_small")
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable safetensors file: it is a safetensors file (")
    assert "\n" not in message and message.endswith("re-save or re-download it")
