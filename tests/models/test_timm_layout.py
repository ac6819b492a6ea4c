"""The zoo's ViT and ConvNeXt in timm's layout: key names, global pooling, a hand-written ConvNeXt
forward, channels-first norm twins, old dyt-deploy keys, parameter counts and the timm name map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyt_deploy.checkpoint import load_checkpoint, save_checkpoint
from dyt_deploy.errors import DytDeployError, UnknownNameError
from dyt_deploy.models import arch_for_timm_name, create_model, list_models, timm_names
from dyt_deploy.nn import DynamicTanh, LayerNorm2d, RMSNorm2d, convert_norms
from dyt_deploy.nn.convert import is_channels_first, norm_kind_of

VIT = {"img_size": 32, "patch_size": 16, "dim": 16, "depth": 2, "heads": 2, "num_classes": 10}
CONVNEXT = {"img_size": 32, "depths": (1, 2, 1), "dims": (8, 16, 32), "num_classes": 10}
CF_SITES = ["stem.1", "stages.1.downsample.0", "stages.2.downsample.0", "head.norm"]


def vit(norm: str = "layernorm", global_pool: str = "token", seed: int = 0) -> nn.Module:
    return create_model("vit_tiny", norm=norm, seed=seed, global_pool=global_pool, **VIT)


def convnext(norm: str = "layernorm", seed: int = 0) -> nn.Module:
    return create_model("convnext_tiny", norm=norm, seed=seed, **CONVNEXT)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial alpha, weight and bias in every norm layer, so broadcasting mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if norm_kind_of(module) is None:
                continue
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator)
                param.copy_({"weight": 1 + 0.3 * noise, "alpha": 0.5 + 0.2 * noise}.get(name, 0.3 * noise))
    return model


def with_norm(prefix: str, norm: str) -> list[str]:
    return [f"{prefix}.{p}" for p in {"layernorm": ("weight", "bias"), "dyt": ("alpha", "weight", "bias")}[norm]]


def linear(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


# -- ViT --------------------------------------------------------------------------------------------

def expected_vit_keys(norm: str, global_pool: str) -> set[str]:
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"]
    for n in range(2):
        keys += with_norm(f"blocks.{n}.norm1", norm) + with_norm(f"blocks.{n}.norm2", norm)
        keys += linear(f"blocks.{n}.attn.qkv") + linear(f"blocks.{n}.attn.proj")
        keys += linear(f"blocks.{n}.mlp.fc1") + linear(f"blocks.{n}.mlp.fc2")
    keys += with_norm("norm" if global_pool == "token" else "fc_norm", norm)
    return set(keys)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_vit_keys_are_timms(norm: str, global_pool: str) -> None:
    state = vit(norm, global_pool).state_dict()
    assert set(state) == expected_vit_keys(norm, global_pool)
    assert state["patch_embed.proj.weight"].shape == (16, 3, 16, 16)
    assert state["pos_embed"].shape == (1, 5, 16)
    assert state["blocks.0.attn.qkv.weight"].shape == (48, 16)
    assert state["blocks.1.mlp.fc1.weight"].shape == (64, 16)


def test_vit_block_norms_are_timms() -> None:
    model = vit()
    layer = model.blocks[0].norm1
    assert type(layer) is nn.LayerNorm and layer.eps == 1e-6
    assert isinstance(model.blocks[0].mlp.act, nn.GELU) and model.blocks[0].mlp.act.approximate == "none"


def test_avg_pool_differs_from_token_pool_on_shared_weights() -> None:
    token, avg = randomize_norms(vit("dyt", "token")), randomize_norms(vit("dyt", "avg"))
    avg.load_state_dict({k.replace("norm.", "fc_norm.") if k.startswith("norm.") else k: v
                         for k, v in token.state_dict().items()})
    inputs = token.example_inputs()
    with torch.no_grad():
        assert not torch.allclose(token(**inputs), avg(**inputs), atol=1e-3)


def run_with_last_block_class_token(model: nn.Module, value: float, inputs: dict) -> torch.Tensor:
    """The logits when the last block's output at the class token is replaced by ``value`` times a ramp."""

    def replace(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, 0] = value * torch.linspace(-1, 1, out.shape[-1])  # not constant: a norm would erase that
        return out

    handle = model.blocks[-1].register_forward_hook(replace)
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        handle.remove()


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_avg_pool_ignores_the_class_tokens_output_and_token_pool_reads_it(norm: str) -> None:
    avg, token = randomize_norms(vit(norm, "avg")), randomize_norms(vit(norm, "token"))
    inputs = avg.example_inputs()
    torch.testing.assert_close(run_with_last_block_class_token(avg, 5.0, inputs),
                               run_with_last_block_class_token(avg, -5.0, inputs), rtol=0, atol=0)
    assert not torch.allclose(run_with_last_block_class_token(token, 5.0, inputs),
                              run_with_last_block_class_token(token, -5.0, inputs), atol=1e-3)


def test_avg_pool_is_fc_norm_of_the_mean_patch_token_then_head() -> None:
    model = randomize_norms(vit("dyt", "avg"))
    inputs = model.example_inputs()
    tokens = []
    handle = model.blocks[-1].register_forward_hook(lambda _m, _a, out: tokens.append(out))
    with torch.no_grad():
        logits = model(**inputs)
        handle.remove()
        fc_norm = model.fc_norm
        pooled = tokens[0][:, 1:].sum(dim=1) / tokens[0][:, 1:].shape[1]
        expected = F.linear(torch.tanh(fc_norm.alpha * pooled) * fc_norm.weight + fc_norm.bias,
                            model.head.weight, model.head.bias)
    assert isinstance(model.norm, nn.Identity)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_unknown_global_pool_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown global_pool 'max'; known: avg, token"):
        vit(global_pool="max")


# -- old dyt-deploy ViT keys ------------------------------------------------------------------------

def old_layout(state: dict) -> dict:
    """A state dict as dyt-deploy wrote it before the timm layout: patch_embed was the conv itself."""
    return {k.replace("patch_embed.proj.", "patch_embed."): v for k, v in state.items()}


def test_upgrade_state_dict_renames_old_patch_embed_keys() -> None:
    model = vit("dyt")
    old = old_layout(model.state_dict())
    assert "patch_embed.weight" in old and "patch_embed.proj.weight" not in old
    upgraded = model.upgrade_state_dict(old)
    assert set(upgraded) == set(model.state_dict())
    fresh = vit("dyt", seed=1)
    fresh.load_state_dict(upgraded)
    inputs = model.example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs), model(**inputs), rtol=0, atol=0)
    current = model.state_dict()
    assert model.upgrade_state_dict(current) is current  # nothing to rename
    llama = create_model("llama_tiny", depth=1, init_weights=False)
    assert llama.upgrade_state_dict(old) is old  # the default renames nothing


def test_old_dyt_deploy_checkpoints_load(tmp_path: Path) -> None:
    model = randomize_norms(vit("dyt"))
    path = save_checkpoint(model, tmp_path / "new.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = old_layout(payload["state_dict"])
    torch.save(payload, tmp_path / "old.pt")
    torch.save(old_layout(model.state_dict()), tmp_path / "old_sd.pt")
    inputs = model.example_inputs()
    with torch.no_grad():
        expected = model(**inputs)
        for loaded in (load_checkpoint(tmp_path / "old.pt"),
                       load_checkpoint(tmp_path / "old_sd.pt", arch="vit_tiny", **VIT)):
            torch.testing.assert_close(loaded.model(**inputs), expected, rtol=0, atol=0)


# -- ConvNeXt ---------------------------------------------------------------------------------------

def expected_convnext_keys(norm: str) -> set[str]:
    keys = linear("stem.0") + with_norm("stem.1", norm) + with_norm("head.norm", norm) + linear("head.fc")
    for stage, depth in enumerate((1, 2, 1)):
        if stage > 0:
            keys += with_norm(f"stages.{stage}.downsample.0", norm) + linear(f"stages.{stage}.downsample.1")
        for block in range(depth):
            prefix = f"stages.{stage}.blocks.{block}"
            keys += [f"{prefix}.gamma"] + linear(f"{prefix}.conv_dw") + with_norm(f"{prefix}.norm", norm)
            keys += linear(f"{prefix}.mlp.fc1") + linear(f"{prefix}.mlp.fc2")
    return set(keys)


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_convnext_keys_are_timms(norm: str) -> None:
    state = convnext(norm).state_dict()
    assert set(state) == expected_convnext_keys(norm)
    shapes = {"stem.0.weight": (8, 3, 4, 4), "stem.1.weight": (8,), "stages.1.downsample.0.weight": (8,),
              "stages.1.downsample.1.weight": (16, 8, 2, 2), "stages.2.blocks.0.conv_dw.weight": (32, 1, 7, 7),
              "stages.0.blocks.0.gamma": (8,), "stages.1.blocks.1.mlp.fc1.weight": (64, 16),
              "head.norm.weight": (32,), "head.fc.weight": (10, 32)}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    if norm == "dyt":
        assert state["stem.1.alpha"].shape == (1,)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "dyt", "derf"])
def test_convnext_norms_are_channels_first_where_timm_has_layernorm2d(norm: str) -> None:
    model = convnext(norm)
    sites = {name: m for name, m in model.named_modules() if norm_kind_of(m) is not None}
    assert {name for name, m in sites.items() if is_channels_first(m)} == set(CF_SITES)
    assert all(norm_kind_of(m) == norm for m in sites.values())
    assert all(getattr(m, "eps", 1e-6) == 1e-6 for m in sites.values())


def norm_ref(state: dict, prefix: str, x: torch.Tensor, norm: str, channels_first: bool) -> torch.Tensor:
    """A norm written out by hand on channels-last ``x`` (or channels-first when ``channels_first``)."""
    if channels_first:
        return norm_ref(state, prefix, x.permute(0, 2, 3, 1), norm, False).permute(0, 3, 1, 2)
    weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    if norm == "dyt":
        return torch.tanh(state[f"{prefix}.alpha"] * x) * weight + bias
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight + bias


def convnext_ref(state: dict, x: torch.Tensor, norm: str, depths: tuple[int, ...]) -> torch.Tensor:
    """ConvNeXt's forward from its state dict alone (timm's layout), without the zoo's modules."""
    x = F.conv2d(x, state["stem.0.weight"], state["stem.0.bias"], stride=4)
    x = norm_ref(state, "stem.1", x, norm, True)
    for stage, depth in enumerate(depths):
        if stage > 0:
            x = norm_ref(state, f"stages.{stage}.downsample.0", x, norm, True)
            down = f"stages.{stage}.downsample.1"
            x = F.conv2d(x, state[f"{down}.weight"], state[f"{down}.bias"], stride=2)
        for block in range(depth):
            p = f"stages.{stage}.blocks.{block}"
            y = F.conv2d(x, state[f"{p}.conv_dw.weight"], state[f"{p}.conv_dw.bias"], padding=3, groups=x.shape[1])
            y = norm_ref(state, f"{p}.norm", y.permute(0, 2, 3, 1), norm, False)
            y = F.linear(F.gelu(F.linear(y, state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"])),
                         state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"])
            x = x + y.permute(0, 3, 1, 2) * state[f"{p}.gamma"][None, :, None, None]
    x = norm_ref(state, "head.norm", x.mean(dim=(2, 3), keepdim=True), norm, True)
    return F.linear(x.flatten(1), state["head.fc.weight"], state["head.fc.bias"])


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_convnext_forward_matches_a_hand_written_one(norm: str) -> None:
    model = randomize_norms(convnext(norm))
    inputs = model.example_inputs(batch=3)
    with torch.no_grad():
        expected = convnext_ref(model.state_dict(), inputs["pixel_values"], norm, CONVNEXT["depths"])
        torch.testing.assert_close(model(**inputs), expected, rtol=1e-4, atol=1e-5)


def test_every_convnext_block_changes_the_output_of_a_zoo_model() -> None:
    """The zoo's layer scale (1.0) keeps blocks visible; timm's training init (1e-6) hides them."""
    model = convnext("dyt")
    assert model.config["ls_init"] == 1.0
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if n.endswith(".gamma"))
    inputs = model.example_inputs()
    with torch.no_grad():
        reference = model(**inputs)
        for block in model.modules():
            if type(block).__name__ == "ConvNextBlock":
                saved = block.gamma.clone()
                block.gamma.zero_()
                assert (model(**inputs) - reference).abs().max() > 1e-2 * reference.abs().max()
                block.gamma.copy_(saved)
    timm_init = create_model("convnext_tiny", norm="dyt", **CONVNEXT, ls_init=1e-6)
    assert timm_init.stages[0].blocks[0].gamma.max().item() == pytest.approx(1e-6)


def test_convnext_twins_through_convert_norms_keep_channels_first_and_affine() -> None:
    dyt = randomize_norms(convnext("dyt"))
    original = {k: v.clone() for k, v in dyt.state_dict().items()}
    convert_norms(dyt, "layernorm", eps=1e-6)
    layernorm = dict(dyt.named_modules())
    assert all(type(layernorm[site]) is LayerNorm2d for site in CF_SITES)
    assert type(layernorm["stages.0.blocks.0.norm"]) is nn.LayerNorm
    twin_state = dyt.state_dict()
    assert set(twin_state) == set(original) - {k for k in original if k.endswith(".alpha")}
    assert all(torch.equal(v, original[k]) for k, v in twin_state.items())
    inputs = dyt.example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(dyt(**inputs), convnext_ref(twin_state, inputs["pixel_values"], "layernorm",
                                                               CONVNEXT["depths"]), rtol=1e-4, atol=1e-5)
    convert_norms(dyt, "dyt")
    back = dict(dyt.named_modules())
    assert all(type(back[s]) is DynamicTanh and not back[s].channels_last for s in CF_SITES)
    assert all(torch.equal(v, original[k]) for k, v in dyt.state_dict().items() if not k.endswith(".alpha"))
    convert_norms(dyt, "rmsnorm")
    assert all(type(m) is RMSNorm2d for name, m in dyt.named_modules() if name in CF_SITES)


def test_convnext_stage_lists_may_be_comma_separated() -> None:
    model = create_model("convnext_tiny", depths="1,2", dims="8, 16", img_size=32, init_weights=False)
    assert (model.config["depths"], model.config["dims"]) == ((1, 2), (8, 16))
    with pytest.raises(DytDeployError, match="ConvNeXt dims must be integers, one per stage"):
        create_model("convnext_tiny", depths="1,2", dims="8,wide", img_size=32)


def test_bad_convnext_shapes_are_one_line_errors() -> None:
    with pytest.raises(DytDeployError, match="one depth per stage"):
        create_model("convnext_tiny", depths=(1, 1), dims=(8, 16, 32))
    with pytest.raises(DytDeployError, match="img_size 16 is too small for 4 ConvNeXt stages; use at least 32"):
        create_model("convnext_tiny", img_size=16, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))


# -- sizes and timm names ----------------------------------------------------------------------------

# Parameter counts of the reference implementations with a 1000-class head (ViT: class token pooling).
PARAMS = {"vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656, "vit_large": 304_326_632,
          "convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
          "convnext_large": 197_767_336}


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_full_size_parameter_counts(arch: str) -> None:
    with torch.device("meta"):
        model = create_model(arch, init_weights=False)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]


def test_vit_large_is_registered_as_timms() -> None:
    config = create_model("vit_large", init_weights=False, depth=1, img_size=32).config
    assert (config["dim"], config["heads"], config["patch_size"]) == (1024, 16, 16)


@pytest.mark.parametrize(("name", "arch"), [
    ("vit_tiny_patch16_224", "vit_tiny"), ("vit_small_patch16_224", "vit_small"),
    ("vit_base_patch16_224", "vit_base"), ("vit_large_patch16_224", "vit_large"),
    ("convnext_tiny", "convnext_tiny"), ("convnext_small", "convnext_small"),
    ("convnext_base", "convnext_base"), ("convnext_large", "convnext_large"),
    ("vit_base_patch16_224.augreg_in21k", "vit_base"),
])
def test_timm_names_map_to_zoo_architectures(name: str, arch: str) -> None:
    expected = (arch, {"img_size": 224, "patch_size": 16} if arch.startswith("vit") else {})
    found = arch_for_timm_name(name)
    assert found == expected
    found[1]["img_size"] = 1  # callers get a copy: the table stays as it is
    assert arch_for_timm_name(name) == expected


@pytest.mark.parametrize("name", ["vit_base_patch32_224", "vit_base_patch16_384", "resnet50", "convnext_nano",
                                  "deit_base_patch16_224", ""])
def test_other_timm_names_map_to_none(name: str) -> None:
    assert arch_for_timm_name(name) is None


def test_timm_names_lists_every_mapped_name() -> None:
    names = timm_names()
    assert names == sorted(names) and len(names) == 8
    assert all(arch_for_timm_name(n)[0] in list_models() for n in names)
