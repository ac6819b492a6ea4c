"""The model zoo: every architecture in every norm variant, shared weights, IO specs, errors."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from dyt_deploy.errors import DytDeployError, UnknownNameError
from dyt_deploy.models import ZOO_NORMS, create_model, get_arch, list_models
from dyt_deploy.nn import Derf, DynamicTanh, LayerNorm2d, RMSNorm2d
from dyt_deploy.nn.convert import is_channels_first, norm_kind_of

ARCHS = list_models()
ONE_PER_FAMILY = ["vit_tiny", "llama_tiny", "bert_tiny", "convnext_tiny"]
# norm kind -> (channels-last class, channels-first class)
NORM_TYPES = {"layernorm": (nn.LayerNorm, LayerNorm2d), "rmsnorm": (nn.RMSNorm, RMSNorm2d),
              "dyt": (DynamicTanh, DynamicTanh), "derf": (Derf, Derf)}


def small(arch: str) -> dict:
    """Overrides that make an architecture one block deep (per stage) with small inputs (ConvNeXt: 1/8 the width)."""
    family = get_arch(arch).family
    if family == "convnext":
        return {"depths": (1, 1, 1, 1), "dims": tuple(d // 8 for d in get_arch(arch).config["dims"]), "img_size": 32}
    overrides = {"depth": 1}
    if family == "vit":
        overrides["img_size"] = 32
    return overrides


@functools.cache
def build(arch: str, norm: str, seed: int = 0) -> nn.Module:
    """Built once per module run: the tests only read the models."""
    return create_model(arch, norm=norm, seed=seed, **small(arch))


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    build.cache_clear()


def norm_param_names(model: nn.Module) -> set[str]:
    return {f"{name}.{p}" if name else p for name, m in model.named_modules() if norm_kind_of(m) is not None
            for p, _ in m.named_parameters(recurse=False)}


def test_zoo_lists_the_four_families() -> None:
    assert ARCHS == sorted(ARCHS)
    assert {"vit_tiny", "vit_small", "vit_base", "vit_large", "llama_tiny", "llama_small", "bert_tiny", "bert_small",
            "convnext_tiny", "convnext_small", "convnext_base", "convnext_large"} <= set(ARCHS)
    assert {get_arch(name).family for name in ARCHS} >= {"vit", "llama", "bert", "convnext"}
    assert [get_arch(name).family for name in ONE_PER_FAMILY] == ["vit", "llama", "bert", "convnext"]
    assert ZOO_NORMS == ("layernorm", "rmsnorm", "dyt", "derf")


@pytest.mark.parametrize("norm", ZOO_NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_and_runs_in_every_norm(arch: str, norm: str) -> None:
    model = build(arch, norm)
    assert model.arch == arch
    assert model.config["norm"] == norm
    assert all(model.config[key] == value for key, value in small(arch).items())
    assert not model.training
    kinds = {norm_kind_of(m) for m in model.modules()} - {None}
    assert kinds == {norm}
    assert all(type(m) is NORM_TYPES[norm][is_channels_first(m)] for m in model.modules() if norm_kind_of(m))

    inputs = model.example_inputs()
    assert [spec.name for spec in model.input_specs()] == list(inputs)
    with torch.no_grad():
        out = model(**inputs)
    (spec,) = model.output_specs()
    assert tuple(out.shape) == spec.concrete_shape(model.default_sizes)
    assert out.dtype == torch.float32
    assert out.isfinite().all()
    assert out.std() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_weights_outside_norms(arch: str) -> None:
    variants = {norm: build(arch, norm) for norm in ZOO_NORMS}
    reference = variants["layernorm"]
    ref_params = {n: p for n, p in reference.named_parameters() if n not in norm_param_names(reference)}
    assert any(p.dim() >= 2 for p in ref_params.values())
    for norm, model in variants.items():
        params = {n: p for n, p in model.named_parameters() if n not in norm_param_names(model)}
        assert params.keys() == ref_params.keys(), norm
        for name, param in params.items():
            assert torch.equal(param, ref_params[name]), (norm, name)
    outputs = []
    with torch.no_grad():
        for model in variants.values():
            outputs.append(model(**model.example_inputs()))
    assert not torch.allclose(outputs[0], outputs[2])  # layernorm vs dyt


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)  # one per family, to stay fast
def test_different_seed_different_weights(arch: str) -> None:
    first, second = build(arch, "dyt", seed=0), build(arch, "dyt", seed=1)
    second_params = dict(second.named_parameters())
    matrices = [n for n, p in first.named_parameters() if p.dim() >= 2]
    assert matrices
    for name in matrices:
        assert not torch.equal(first.get_parameter(name), second_params[name]), name
    # rebuilding with the first seed reproduces it exactly
    again = create_model(arch, norm="dyt", seed=0, **small(arch))
    for name, param in again.named_parameters():
        assert torch.equal(param, first.get_parameter(name)), name
    # the seed is not a global side effect: torch's own RNG does not enter the weights
    torch.manual_seed(123)
    assert torch.equal(create_model(arch, norm="dyt", seed=0, **small(arch)).get_parameter(matrices[0]),
                       first.get_parameter(matrices[0]))


def test_each_parameter_has_its_own_draw() -> None:
    model = create_model("llama_tiny", depth=2)
    wq0, wk0 = model.get_parameter("layers.0.attn.wq.weight"), model.get_parameter("layers.0.attn.wk.weight")
    wq1 = model.get_parameter("layers.1.attn.wq.weight")
    assert wq0.shape == wk0.shape == wq1.shape
    assert not torch.equal(wq0, wk0)
    assert not torch.equal(wq0, wq1)
    # std 1/sqrt(fan_in), truncated at 2 std; vectors start at zero
    std = model.config["dim"] ** -0.5
    assert wq0.abs().max() <= 2 * std + 1e-6
    assert 0.7 * std < wq0.std() < 1.1 * std
    bert = create_model("bert_tiny", depth=1)
    assert torch.equal(bert.classifier.bias, torch.zeros_like(bert.classifier.bias))


@pytest.mark.parametrize("arch", ["vit_tiny", "convnext_tiny"])
def test_norm_layers_keep_their_init(arch: str) -> None:
    dyt = build(arch, "dyt")
    for m in dyt.modules():
        if isinstance(m, DynamicTanh):
            assert m.alpha.item() == pytest.approx(0.5)
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    ln = build(arch, "layernorm")
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in ln.modules() if isinstance(m, nn.LayerNorm))


def test_llama_dyt_follows_the_paper() -> None:
    model = build("llama_tiny", "dyt")
    layers = [m for m in model.modules() if isinstance(m, DynamicTanh)]
    assert layers and all(m.bias is None for m in layers)  # no beta in the paper's LLaMA
    assert all(m.alpha.item() == pytest.approx(1.0) for m in layers)  # width 256: the paper's 1024 row
    custom = create_model("llama_tiny", norm="dyt", depth=1, alpha_init=0.3)
    assert all(m.alpha.item() == pytest.approx(0.3) for m in custom.modules() if isinstance(m, DynamicTanh))


def test_default_norms() -> None:
    assert create_model("vit_tiny", depth=1, img_size=32).config["norm"] == "layernorm"
    assert create_model("llama_tiny", depth=1).config["norm"] == "rmsnorm"
    assert create_model("bert_tiny", depth=1).config["norm"] == "layernorm"
    assert create_model("convnext_tiny", **small("convnext_tiny")).config["norm"] == "layernorm"


def test_unknown_arch_lists_the_zoo() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet50")
    message = str(info.value)
    assert "resnet50" in message
    for name in ARCHS:
        assert name in message


def test_unknown_norm_lists_zoo_norms() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_model("vit_tiny", norm="batchnorm", depth=1, img_size=32)
    for kind in ZOO_NORMS:
        assert kind in str(info.value)


def test_bad_override_is_a_user_error() -> None:
    with pytest.raises(DytDeployError, match="wrong_key") as info:
        create_model("vit_tiny", wrong_key=1)
    assert "vit_tiny" in str(info.value)


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_example_inputs_dynamic_dims(arch: str) -> None:
    model = build(arch, "layernorm")
    inputs = model.example_inputs(batch=3, seq=7)
    family = get_arch(arch).family
    if family in ("vit", "convnext"):
        assert {k: tuple(v.shape) for k, v in inputs.items()} == {"pixel_values": (3, 3, 32, 32)}
        assert inputs["pixel_values"].dtype == torch.float32
    elif family == "llama":
        assert {k: tuple(v.shape) for k, v in inputs.items()} == {"input_ids": (3, 7)}
    else:
        assert {k: tuple(v.shape) for k, v in inputs.items()} == {"input_ids": (3, 7), "attention_mask": (3, 7)}
        assert inputs["attention_mask"][:, 0].eq(1).all()
        assert set(inputs["attention_mask"].unique().tolist()) <= {0, 1}
    for spec in model.input_specs():
        tensor = inputs[spec.name]
        assert tuple(tensor.shape) == spec.concrete_shape({"batch": 3, "seq": 7})
        if not tensor.is_floating_point():
            assert tensor.dtype == torch.int64
            assert spec.low <= tensor.min() and tensor.max() < spec.high
    with torch.no_grad():
        out = model(**inputs)
    (spec,) = model.output_specs()
    assert tuple(out.shape) == spec.concrete_shape({"batch": 3, "seq": 7})
    assert spec.dynamic_dims == ({0: "batch"} if family != "llama" else {0: "batch", 1: "seq"})


def test_example_inputs_are_seeded() -> None:
    model = build("llama_tiny", "rmsnorm")
    assert torch.equal(model.example_inputs(seed=5)["input_ids"], model.example_inputs(seed=5)["input_ids"])
    assert not torch.equal(model.example_inputs(seed=5)["input_ids"], model.example_inputs(seed=6)["input_ids"])
