"""The residual-add fusion pass on architectures written with no kernel knowledge, and where it must not act.

These run without Triton too: with no kernel to launch, the fused calls take the eager reference,
so outputs must equal the unfused model bit for bit.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from dyt_deploy import kernels as K
from dyt_deploy.nn import DynamicTanh


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch):
    """The reference path everywhere: these tests check the graph rewrite, not the kernel."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU tensors then never take the kernel


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


class ParallelBlock(nn.Module):
    """GPT-J style: one norm feeds attention and MLP side by side; adds written as torch.add and Tensor.add."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = DynamicTanh(dim)
        self.a, self.b = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return torch.add(x, self.a(h)).add(self.b(h))


class ParallelNet(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 3) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ParallelBlock(dim) for _ in range(depth)))
        self.final = DynamicTanh(dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(x))


def fused_copy(model: nn.Module) -> tuple[nn.Module, K.FusionReport]:
    fused, _ = K.use_kernels(copy.deepcopy(model), fuse=False)
    return fused, K.fuse_residual_adds(fused)


def test_a_new_architecture_is_fused_without_knowing_the_kernels():
    model = seeded(ParallelNet())
    fused, report = fused_copy(model)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))
    # each block's closing add feeds the next block's norm (keeping the sum); the last only the final norm
    assert [(s.norm, s.form) for s in report.fused] == [("blocks.1.norm", "add"), ("blocks.2.norm", "add"),
                                                          ("final", "sum")]
    assert fused.state_dict().keys() == model.state_dict().keys()


class Untraceable(nn.Module):
    """Python control flow on a tensor value: fx cannot trace the top level, only the blocks below."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.inner = ParallelNet(dim, depth=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.inner(x)


def test_an_untraceable_module_keeps_its_forward_and_says_why():
    model = seeded(Untraceable())
    fused, report = fused_copy(model)
    assert "" in report.untraced and "traced" in report.untraced[""].lower()
    assert "forward" not in vars(fused) and "forward" in vars(fused.inner)
    assert [s.module for s in report.fused] == ["inner", "inner"]
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))


def test_use_kernels_warns_when_nothing_could_be_traced(caplog):
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = DynamicTanh(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x + 1) if x.max() > 0 else self.norm(x)

    with caplog.at_level(logging.INFO, logger="dyt_deploy.kernels.fusion"):
        model, count = K.use_kernels(Opaque())
    assert count == 1 and "forward" not in vars(model)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "the model not traced" in record.getMessage()


def test_adds_that_do_not_feed_a_norm_alone_stay_as_they_are():
    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = DynamicTanh(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.norm(x + 1.0)  # an add of a Python number: no residual tensor to hand over
            return self.norm(x * 2.0) + y  # an add after a norm

    model, _ = K.use_kernels(Other(), fuse=False)
    report = K.fuse_residual_adds(model)
    assert report.fused == [] and report.untraced == {} and "forward" not in vars(model)


def test_the_fused_forward_is_the_models_own_after_a_move_and_a_copy():
    model = seeded(ParallelNet())
    fused, _ = fused_copy(model)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    fused64 = fused.to(torch.float64)  # parameters and buffers are looked up on the module at each call
    with torch.no_grad():
        expected = copy.deepcopy(model).to(torch.float64)(x)
        assert torch.equal(fused64(x), expected)
        twin = copy.deepcopy(fused64)
        assert twin.forward.__self__ is twin and torch.equal(twin(x), expected)


def test_fusing_again_is_harmless_and_a_foreign_forward_is_left_alone():
    model = seeded(ParallelNet())
    fused, first = fused_copy(model)
    again = K.fuse_residual_adds(fused)
    assert again.fused == first.fused and again.untraced == {}
    hooked = copy.deepcopy(model)
    hooked.forward = lambda x: x  # e.g. a wrapper library's hook
    K.use_kernels(hooked, fuse=False)
    report = K.fuse_residual_adds(hooked)
    assert "replaced on the instance" in report.untraced[""]


def test_training_after_fusion_still_gets_gradients():
    model = seeded(ParallelNet())
    fused, _ = fused_copy(model)
    fused.train()
    x = torch.randn(2, 16, requires_grad=True)
    fused(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in fused.parameters())
