"""The norm switchboard (create_norm) and the DyT paper's alpha table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyt_deploy.errors import DytDeployError, UnknownNameError
from dyt_deploy.nn import (
    Derf,
    DynamicTanh,
    LayerNorm2d,
    RMSNorm2d,
    create_norm,
    norm_kinds,
    paper_alpha_init,
    register_norm,
)
from dyt_deploy.nn import norms as norms_module

KINDS = ["layernorm", "rmsnorm", "batchnorm", "instancenorm", "dyt", "derf", "identity"]
DIM = 8


@pytest.mark.parametrize(
    ("kind", "cls", "shape"),
    [
        ("layernorm", nn.LayerNorm, (2, 5, DIM)),
        ("rmsnorm", nn.RMSNorm, (2, 5, DIM)),
        ("batchnorm", nn.BatchNorm1d, (4, DIM, 5)),
        ("instancenorm", nn.InstanceNorm1d, (2, DIM, 5)),
        ("dyt", DynamicTanh, (2, 5, DIM)),
        ("derf", Derf, (2, 5, DIM)),
        ("identity", nn.Identity, (2, 5, DIM)),
    ],
)
def test_create_norm_kinds(kind: str, cls: type, shape: tuple[int, ...]) -> None:
    layer = create_norm(kind, DIM)
    assert type(layer) is cls
    x = torch.randn(shape) * 3 + 1
    out = layer(x)
    assert out.shape == x.shape
    if kind != "identity":
        assert layer.weight.shape == (DIM,)
        assert not torch.allclose(out, x)
    if kind == "layernorm":
        torch.testing.assert_close(out.mean(-1), torch.zeros(shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(shape[:-1]), atol=1e-3, rtol=0)
    elif kind == "rmsnorm":
        torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(shape[:-1]), atol=1e-3, rtol=0)
    elif kind in ("batchnorm", "instancenorm"):
        dims = (0, 2) if kind == "batchnorm" else (2,)
        torch.testing.assert_close(out.mean(dims), torch.zeros(out.mean(dims).shape), atol=1e-5, rtol=0)
    elif kind in ("dyt", "derf"):
        assert out.abs().max() <= 1.0
    else:
        assert out is x


def test_norm_kinds_lists_every_kind() -> None:
    assert norm_kinds() == sorted(KINDS)


def test_create_norm_is_case_insensitive() -> None:
    assert isinstance(create_norm("DyT", DIM), DynamicTanh)
    assert isinstance(create_norm("LayerNorm", DIM), nn.LayerNorm)


def test_create_norm_passes_keywords() -> None:
    assert create_norm("layernorm", DIM, eps=1e-3).eps == 1e-3
    assert create_norm("layernorm", DIM, bias=False).bias is None
    assert create_norm("rmsnorm", DIM, eps=1e-4).eps == 1e-4
    dyt = create_norm("dyt", DIM, alpha_init=0.2, bias=False, channels_last=False)
    assert dyt.alpha.item() == pytest.approx(0.2)
    assert dyt.bias is None
    assert dyt.channels_last is False
    derf = create_norm("derf", DIM, alpha_init=0.7, shift_init=0.1)
    assert derf.alpha.item() == pytest.approx(0.7)
    assert derf.shift.item() == pytest.approx(0.1)
    assert create_norm("instancenorm", DIM).affine


def test_create_norm_ignores_keywords_a_kind_does_not_use() -> None:
    shared = {"eps": 1e-6, "alpha_init": 0.9, "bias": True, "channels_last": True, "shift_init": 0.0}
    for kind in KINDS:
        assert create_norm(kind, DIM, **shared) is not None


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_norm("groupnorm", DIM)
    message = str(info.value)
    assert "groupnorm" in message
    for kind in KINDS:
        assert kind in message
    assert isinstance(info.value, DytDeployError)
    assert isinstance(info.value, LookupError)


def test_register_norm_adds_a_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norms_module, "_NORMS", dict(norms_module._NORMS))

    @register_norm("scaled_identity")
    def _factory(dim: int, **_: object) -> nn.Module:
        return nn.Linear(dim, dim)

    layer = create_norm("scaled_identity", 4)
    assert isinstance(layer, nn.Linear) and layer.in_features == 4
    assert "scaled_identity" in norm_kinds()


@pytest.mark.parametrize(
    ("width", "attention", "other"),
    [
        (1024, 1.0, 1.0),
        (2048, 1.0, 0.5),
        (4096, 0.8, 0.2),
        (8192, 0.2, 0.05),
        (512, 1.0, 1.0),
        (256, 1.0, 1.0),
        (64, 1.0, 1.0),
        (1, 1.0, 1.0),
        (5000, 0.8, 0.2),
        (16384, 0.2, 0.05),
    ],
)
def test_paper_alpha_init(width: int, attention: float, other: float) -> None:
    assert paper_alpha_init(width) == {"attention": attention, "ffn": other, "final": other}


# -- channels-first LayerNorm and RMSNorm -------------------------------------------------------------

def layer_norm_over_dim1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    shape = (-1,) + (1,) * (x.dim() - 2)
    mean = x.mean(1, keepdim=True)
    var = ((x - mean) ** 2).mean(1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


def rms_norm_over_dim1(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    shape = (-1,) + (1,) * (x.dim() - 2)
    return x / torch.sqrt((x**2).mean(1, keepdim=True) + eps) * weight.view(shape)


def random_affine(layer: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return layer


@pytest.mark.parametrize("shape", [(2, DIM, 5, 7), (2, DIM, 9)])
def test_channels_first_layernorm_equals_a_hand_written_one(shape: tuple[int, ...]) -> None:
    layer = random_affine(create_norm("layernorm", DIM, eps=1e-6, channels_last=False))
    assert type(layer) is LayerNorm2d and layer.channels_last is False
    assert set(layer.state_dict()) == {"weight", "bias"} and layer.normalized_shape == (DIM,)
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(layer(x), layer_norm_over_dim1(x, layer.weight, layer.bias, 1e-6),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, DIM, 5, 7), (2, DIM, 9)])
def test_channels_first_rmsnorm_equals_a_hand_written_one(shape: tuple[int, ...]) -> None:
    layer = random_affine(create_norm("rmsnorm", DIM, eps=1e-5, channels_last=False))
    assert type(layer) is RMSNorm2d and layer.channels_last is False
    assert set(layer.state_dict()) == {"weight"}
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(layer(x), rms_norm_over_dim1(x, layer.weight, 1e-5), rtol=1e-5, atol=1e-5)


def test_channels_last_is_the_default_for_every_kind() -> None:
    assert type(create_norm("layernorm", DIM, channels_last=True)) is nn.LayerNorm
    assert type(create_norm("rmsnorm", DIM)) is nn.RMSNorm
    assert create_norm("dyt", DIM).channels_last and not create_norm("derf", DIM, channels_last=False).channels_last
