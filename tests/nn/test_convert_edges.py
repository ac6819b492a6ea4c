"""Edges of convert_norms: which layers count as norms, eps and bias across kinds, roles by substring, the report.

Written against the mutants `make mutation` found surviving in ``nn/convert.py``; small hand-built
modules only, so every test runs in milliseconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyt_deploy.errors import ConversionError, UnknownNameError
from dyt_deploy.nn import (
    ConversionReport,
    ConvertedSite,
    Derf,
    DynamicTanh,
    LayerNorm2d,
    RMSNorm2d,
    convert_norms,
    site_role,
)
from dyt_deploy.nn.convert import norm_kind_of


class ForeignRMSNorm(nn.Module):
    """An RMSNorm of another library (as transformers' LlamaRMSNorm): ``weight`` and ``variance_epsilon``."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


class RMSNormWithChildren(nn.Module):
    """Named like an RMSNorm but a container: not a leaf, so not a norm layer."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.inner = nn.Linear(width, width)


def wrapped(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), layer)


# -- what counts as a norm layer -----------------------------------------------------------------

@pytest.mark.parametrize(("layer", "kind"), [
    (DynamicTanh(4), "dyt"),
    (Derf(4), "derf"),
    (nn.LayerNorm(4), "layernorm"),
    (nn.RMSNorm(4), "rmsnorm"),
    (ForeignRMSNorm(4), "rmsnorm"),
    (LayerNorm2d(4), "layernorm"),
    (RMSNorm2d(4), "rmsnorm"),
])
def test_norm_kind_of_convertible_layers(layer: nn.Module, kind: str) -> None:
    assert norm_kind_of(layer) == kind


@pytest.mark.parametrize("layer", [
    nn.LayerNorm((4, 8)),  # 2-D normalized shape: no DyT counterpart
    nn.RMSNorm((4, 8)),
    nn.BatchNorm1d(4),  # a leaf with a 1-D weight, but not an RMSNorm
    nn.GroupNorm(2, 4),
    nn.Linear(4, 4),
    RMSNormWithChildren(4),
    nn.Identity(),
], ids=["ln-2d", "rms-2d", "batchnorm", "groupnorm", "linear", "rms-container", "identity"])
def test_norm_kind_of_other_layers_is_none(layer: nn.Module) -> None:
    assert norm_kind_of(layer) is None


def test_other_layers_are_left_alone() -> None:
    model = nn.Sequential(nn.BatchNorm1d(4), nn.GroupNorm(2, 4), nn.RMSNorm((2, 4)), nn.LayerNorm(4))
    report = convert_norms(model, "dyt")
    assert [type(m) for m in model] == [nn.BatchNorm1d, nn.GroupNorm, nn.RMSNorm, DynamicTanh]
    assert [site.name for site in report] == ["3"]


# -- defaults and errors -----------------------------------------------------------------------------

def test_the_default_target_is_dyt() -> None:
    model = wrapped(nn.LayerNorm(4))
    report = convert_norms(model)
    assert isinstance(model[1], DynamicTanh)
    assert report.to == "dyt"


def test_targets_are_case_insensitive() -> None:
    model = wrapped(nn.LayerNorm(4))
    assert convert_norms(model, "DyT").to == "dyt"
    assert isinstance(model[1], DynamicTanh)


def test_unknown_target_message_names_what_and_which() -> None:
    with pytest.raises(UnknownNameError) as info:
        convert_norms(wrapped(nn.LayerNorm(4)), "groupnorm")
    assert str(info.value) == "unknown conversion target 'groupnorm'; known: derf, dyt, layernorm, rmsnorm"


def test_a_bare_norm_layer_is_refused_with_advice() -> None:
    with pytest.raises(ConversionError) as info:
        convert_norms(Derf(4), "dyt")
    assert str(info.value) == "the model itself is a norm layer; wrap it in a container module to convert it"


@pytest.mark.parametrize(("to", "target"),
                         [("layernorm", LayerNorm2d), ("rmsnorm", RMSNorm2d), ("LayerNorm", LayerNorm2d)])
@pytest.mark.parametrize("cls", [DynamicTanh, Derf])
def test_channels_first_to_a_torch_norm_gives_its_channels_first_twin(to: str, target: type, cls: type) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), cls(4, channels_last=False))
    report = convert_norms(model, to)
    assert type(model[1]) is target and model[1].channels_last is False
    assert report.sites[0].new_type == target.__name__
    assert norm_kind_of(model[1]) == to.lower()
    out = model(torch.randn(2, 3, 5, 6))
    assert out.shape == (2, 4, 5, 6)
    if target is LayerNorm2d:  # normalized over the channels, not over the last dim
        torch.testing.assert_close(out.mean(1), torch.zeros(2, 5, 6), atol=1e-5, rtol=0)


# -- bias and eps across kinds -------------------------------------------------------------------

def test_layernorm_without_bias_gives_dyt_without_bias_and_keeps_gamma() -> None:
    norm = nn.LayerNorm(4, bias=False)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    model = wrapped(norm)
    report = convert_norms(model, "dyt")
    assert model[1].bias is None
    assert torch.equal(model[1].weight.detach(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert report.sites[0].note == ""  # nothing to drop


def test_kept_bias_is_not_reported_dropped_and_a_dropped_one_is() -> None:
    report = convert_norms(wrapped(nn.LayerNorm(4)), "dyt")
    assert report.sites[0].note == ""
    report = convert_norms(wrapped(nn.LayerNorm(4)), "rmsnorm")
    assert report.sites[0].note == "bias dropped (target has none)"
    report = convert_norms(wrapped(DynamicTanh(4)), "rmsnorm")
    assert report.sites[0].note == "bias dropped (target has none)"


@pytest.mark.parametrize("to", ["rmsnorm", "layernorm"])
def test_the_source_eps_carries_over(to: str) -> None:
    source = nn.LayerNorm(4, eps=1e-3) if to == "rmsnorm" else nn.RMSNorm(4, eps=1e-3)
    model = wrapped(source)
    convert_norms(model, to)
    assert model[1].eps == 1e-3


def test_an_explicit_eps_wins_over_the_source_eps() -> None:
    model = wrapped(nn.LayerNorm(4, eps=1e-3))
    convert_norms(model, "rmsnorm", eps=1e-2)
    assert model[1].eps == 1e-2


def test_variance_epsilon_of_foreign_rmsnorms_carries_over() -> None:
    model = wrapped(ForeignRMSNorm(4, eps=1e-4))
    convert_norms(model, "layernorm")
    assert isinstance(model[1], nn.LayerNorm)
    assert model[1].eps == 1e-4
    assert model[1].bias is None  # an RMSNorm had no beta


def test_a_source_without_eps_takes_the_target_default() -> None:
    model = wrapped(nn.RMSNorm(4))  # torch's RMSNorm keeps eps=None (its own default)
    convert_norms(model, "layernorm")
    assert model[1].eps == 1e-5  # create_norm's LayerNorm default
    model = wrapped(DynamicTanh(4))
    convert_norms(model, "rmsnorm")
    assert model[1].eps == 1e-6  # create_norm's RMSNorm default


def test_dyt_targets_take_no_eps() -> None:
    model = wrapped(nn.LayerNorm(4, eps=1e-3))
    convert_norms(model, "derf", eps=1e-2)
    assert isinstance(model[1], Derf) and not hasattr(model[1], "eps")


# -- roles ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "role"), [
    ("blocks.0.post_mlp_ln", "ffn"),  # substrings, for names outside the known tables
    ("layers.2.FFN_LN", "ffn"),
    ("encoder.layer.1.feed_forward_ln", "ffn"),
    ("blocks.0.cross_attn_ln", "attention"),
    ("blocks.0.self_attention_ln", "attention"),
    ("a.b.c.mlp_ln", "ffn"),
    ("attention.block.ln_post", None),  # only the last component decides
    ("mlp.0.ln_post", None),
])
def test_site_role_by_substring_of_the_last_component(name: str, role: str | None) -> None:
    assert site_role(name) == role


def test_site_alpha_dict_by_substring_roles_and_default_for_the_rest() -> None:
    model = nn.Module()
    model.cross_attn_ln = nn.LayerNorm(4)
    model.post_mlp_ln = nn.LayerNorm(4)
    model.embed_ln = nn.LayerNorm(4)
    report = convert_norms(model, "dyt", alpha_init=0.25, site_alpha={"attention": 0.75, "ffn": 0.5, "final": 2.0})
    assert {site.name: (site.role, site.alpha_init) for site in report} == {
        "cross_attn_ln": ("attention", 0.75), "post_mlp_ln": ("ffn", 0.5), "embed_ln": (None, 0.25)}
    assert model.embed_ln.alpha.item() == 0.25


def test_conversion_to_a_torch_norm_records_no_alpha() -> None:
    report = convert_norms(wrapped(DynamicTanh(4)), "layernorm", site_alpha="paper")
    assert report.sites[0].alpha_init is None


# -- the report --------------------------------------------------------------------------------------

def test_report_table_has_a_header_and_one_line_per_site() -> None:
    report = ConversionReport("dyt", [
        ConvertedSite("layers.0.attn_norm", "RMSNorm", "DynamicTanh", 0.8, "attention"),
        ConvertedSite("head_norm", "LayerNorm", "RMSNorm", None, None, "bias dropped (target has none)"),
        ConvertedSite("norm", "LayerNorm", "LayerNorm", None),
    ])
    header, first, second, third = report.table().split("\n")
    assert header.split() == ["site", "from", "to", "alpha", "role"]
    assert first.split() == ["layers.0.attn_norm", "RMSNorm", "DynamicTanh", "0.8", "attention"]
    assert second.split() == ["head_norm", "LayerNorm", "RMSNorm", "bias", "dropped", "(target", "has", "none)"]
    assert third.split() == ["norm", "LayerNorm", "LayerNorm"]  # no alpha, no role: nothing printed for them
    assert third == third.rstrip()
    # columns line up: every column starts where the header's does
    for line in (first, second):
        assert line.index(line.split()[1]) == header.index("from")
    assert first.index("0.8") + len("0.8") == header.index("alpha") + len("alpha")  # alpha right-aligned
    assert first.startswith("layers.0.attn_norm ")


def test_report_as_dicts_and_length() -> None:
    report = convert_norms(wrapped(nn.LayerNorm(4)), "derf", alpha_init=0.3)
    assert len(report) == 1
    assert report.as_dicts() == [{"name": "1", "old_type": "LayerNorm", "new_type": "Derf", "alpha_init": 0.3,
                                  "role": None, "note": ""}]
    assert list(report) == report.sites
