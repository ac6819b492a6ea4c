"""DynamicTanh and Derf: the formulas, channels-first inputs, parameter names, placement."""

from __future__ import annotations

import pytest
import torch

from dyt_deploy.nn import Derf, DynamicTanh


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a non-trivial random value (alpha and shift away from their inits)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) + 1.5)


def test_dyt_forward_is_the_formula() -> None:
    dyt = DynamicTanh(16)
    _randomize(dyt)
    assert dyt.alpha.item() != pytest.approx(0.5)
    x = torch.randn(4, 5, 16)
    expected = dyt.weight * torch.tanh(dyt.alpha * x) + dyt.bias
    torch.testing.assert_close(dyt(x), expected)


def test_dyt_init_values() -> None:
    dyt = DynamicTanh(8, alpha_init=0.3)
    assert dyt.alpha.shape == (1,)
    assert dyt.alpha.item() == pytest.approx(0.3)
    assert torch.equal(dyt.weight, torch.ones(8))
    assert torch.equal(dyt.bias, torch.zeros(8))
    x = torch.randn(3, 8) * 5
    torch.testing.assert_close(dyt(x), torch.tanh(0.3 * x))


def test_dyt_squashes_large_inputs() -> None:
    out = DynamicTanh(4, alpha_init=1.0)(torch.tensor([[-1e6, -1.0, 1.0, 1e6]]))
    assert out.abs().max() <= 1.0
    torch.testing.assert_close(out[0, [0, 3]], torch.tensor([-1.0, 1.0]))


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (2, 6, 9)], ids=["NCHW", "NCL"])
def test_dyt_channels_first(shape: tuple[int, ...]) -> None:
    dyt = DynamicTanh(6, channels_last=False)
    _randomize(dyt, seed=1)
    x = torch.randn(shape)
    trailing = (1,) * (len(shape) - 2)
    weight, bias = dyt.weight.view(6, *trailing), dyt.bias.view(6, *trailing)
    torch.testing.assert_close(dyt(x), weight * torch.tanh(dyt.alpha * x) + bias)
    if len(shape) == 4:
        torch.testing.assert_close(
            dyt(x), dyt.weight[:, None, None] * torch.tanh(dyt.alpha * x) + dyt.bias[:, None, None]
        )


def test_dyt_without_bias() -> None:
    dyt = DynamicTanh(8, bias=False)
    _randomize(dyt, seed=2)
    assert dyt.bias is None
    assert [name for name, _ in dyt.named_parameters()] == ["alpha", "weight"]
    assert set(dyt.state_dict()) == {"alpha", "weight"}
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(dyt(x), dyt.weight * torch.tanh(dyt.alpha * x))


def test_dyt_parameter_names_match_official_code() -> None:
    dyt = DynamicTanh(8)
    assert {name: tuple(p.shape) for name, p in dyt.named_parameters()} == {
        "alpha": (1,),
        "weight": (8,),
        "bias": (8,),
    }
    # A state_dict as the official DyT code (facebookresearch/DyT) writes it.
    official = {"alpha": torch.tensor([0.8]), "weight": torch.randn(8), "bias": torch.randn(8)}
    result = dyt.load_state_dict(official, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in official.items():
        assert torch.equal(getattr(dyt, name).detach(), value)
    x = torch.randn(5, 8)
    torch.testing.assert_close(dyt(x), official["weight"] * torch.tanh(0.8 * x) + official["bias"])


def test_derf_forward_is_the_formula() -> None:
    derf = Derf(16, shift_init=0.25)
    assert derf.shift.shape == (1,)
    assert derf.shift.item() == pytest.approx(0.25)
    _randomize(derf, seed=3)
    x = torch.randn(4, 5, 16)
    expected = derf.weight * torch.erf(derf.alpha * x + derf.shift) + derf.bias
    torch.testing.assert_close(derf(x), expected)
    assert not torch.allclose(derf(x), derf.weight * torch.erf(derf.alpha * x) + derf.bias)


def test_derf_parameters_and_channels_first() -> None:
    derf = Derf(6, channels_last=False, bias=False)
    assert {name for name, _ in derf.named_parameters()} == {"alpha", "weight", "shift"}
    _randomize(derf, seed=4)
    x = torch.randn(2, 6, 3, 4)
    expected = derf.weight[:, None, None] * torch.erf(derf.alpha * x + derf.shift)
    torch.testing.assert_close(derf(x), expected)


@pytest.mark.parametrize("cls", [DynamicTanh, Derf])
def test_dtype_kwarg(cls: type) -> None:
    layer = cls(8, dtype=torch.float64)
    params = dict(layer.named_parameters())
    assert params and all(p.dtype == torch.float64 for p in params.values()), {
        n: p.dtype for n, p in params.items()
    }
    assert layer(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("cls", [DynamicTanh, Derf])
def test_device_kwarg(cls: type) -> None:
    layer = cls(8, device="meta", dtype=torch.bfloat16)
    for name, param in layer.named_parameters():
        assert param.is_meta, name
        assert param.dtype == torch.bfloat16, name
    assert cls(8, device="cpu").weight.device.type == "cpu"


def test_trailing_shape_and_repr() -> None:
    dyt = DynamicTanh((3, 4), alpha_init=0.7, bias=False)
    assert dyt.weight.shape == (3, 4)
    assert dyt(torch.randn(2, 3, 4)).shape == (2, 3, 4)
    text = repr(dyt)
    assert "alpha_init=0.7" in text and "bias=False" in text
