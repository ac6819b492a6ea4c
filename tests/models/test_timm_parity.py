"""Official DyT checkpoints (timm models, LayerNorms converted as the paper's code does) load into the zoo
with the same outputs: against timm where it imports; against the zoo's LayerNorm models otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dyt_deploy.models import create_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "timm_parity.py"
TIMM_REASON = "timm is not installed (it needs torchvision, which has no CPU build for the pinned torch)"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("timm_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parity = load_script()


@pytest.mark.parametrize(("name", "timm_kwargs", "zoo_overrides"), [
    ("vit_small_patch16_224", {"global_pool": "avg", "img_size": 64, "depth": 2},
     {"img_size": 64, "depth": 2}),
    ("vit_tiny_patch16_224", {"global_pool": "token", "img_size": 64, "depth": 2},
     {"img_size": 64, "depth": 2}),
    ("convnext_tiny", {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128)},
     {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128), "img_size": 64}),
], ids=["vit-avg", "vit-token", "convnext"])
def test_timm_models_converted_officially_load_with_identical_outputs(name: str, timm_kwargs: dict,
                                                                       zoo_overrides: dict) -> None:
    pytest.importorskip("timm", reason=TIMM_REASON)
    assert parity.check(name, timm_kwargs, zoo_overrides) <= parity.TOLERANCE


@pytest.mark.parametrize(("name", "arch", "overrides"), [
    ("vit_small_patch16_224", "vit_small", {"img_size": 32, "depth": 2, "global_pool": "avg"}),
    ("convnext_tiny", "convnext_tiny", {"img_size": 32, "depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128)}),
])
def test_the_official_conversion_of_zoo_layernorm_models_loads_into_their_dyt_twins(name: str, arch: str,
                                                                                     overrides: dict) -> None:
    """Without timm: the script's conversion, applied to the zoo's LayerNorm models (whose
    channels-first sites are ``LayerNorm2d``, as timm's), gives state dicts the DyT zoo loads strictly."""
    source = parity.convert_ln_to_dyt(create_model(arch, norm="layernorm", **overrides))
    channels_first = [m for m in source.modules() if isinstance(m, parity.OfficialDynamicTanh) and not m.channels_last]
    assert len(channels_first) == (5 if arch.startswith("convnext") else 0)  # stem, 3 downsamples, head
    parity.randomize_dyt(source, seed=1)
    zoo = parity.zoo_model_for(name, source.state_dict(), **{k: v for k, v in overrides.items() if k != "global_pool"})
    if arch.startswith("vit"):  # found from the fc_norm keys
        assert zoo.config["global_pool"] == "avg"
    diff = parity.max_logit_diff(source, zoo)
    assert diff <= 1e-5
    with torch.no_grad():  # the randomised norms matter: the plain conversion gives other logits
        plain = parity.convert_ln_to_dyt(create_model(arch, norm="layernorm", **overrides))
        inputs = zoo.example_inputs()
        assert not torch.allclose(plain(**inputs), zoo(**inputs), atol=1e-3)


def test_the_script_refuses_names_the_zoo_does_not_know() -> None:
    from dyt_deploy.errors import DytDeployError

    with pytest.raises(DytDeployError, match="no zoo architecture for timm model 'resnet50'; known: convnext_base"):
        parity.zoo_model_for("resnet50", {})
