"""Edges of DynamicTanh and Derf: the documented defaults (alpha 0.5, shift 0) and the layer's repr.

Written against the mutants `make mutation` found surviving in ``nn/dyt.py``.
"""

from __future__ import annotations

import pytest
import torch

from dyt_deploy.nn import Derf, DynamicTanh


@pytest.mark.parametrize("cls", [DynamicTanh, Derf])
def test_default_alpha_is_the_papers_half(cls: type) -> None:
    layer = cls(4)
    assert layer.alpha.item() == 0.5
    assert layer.alpha_init == 0.5
    assert layer.channels_last is True
    assert layer.bias is not None


def test_derf_shift_starts_at_zero() -> None:
    derf = Derf(4)
    assert derf.shift.item() == 0.0
    x = torch.linspace(-3, 3, 8).reshape(2, 4)
    torch.testing.assert_close(derf(x), torch.erf(0.5 * x))  # default gamma 1, beta 0, shift 0


def test_repr_states_shape_layout_alpha_and_bias() -> None:
    assert DynamicTanh(8).extra_repr() == "(8,), channels_last=True, alpha_init=0.5, bias=True"
    derf = Derf(6, channels_last=False, alpha_init=2, bias=False)
    assert derf.extra_repr() == "(6,), channels_last=False, alpha_init=2.0, bias=False"
