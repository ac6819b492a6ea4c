"""``dyt_deploy.optimize``: gamma/beta folded into the next linear layers in PyTorch, kernels, torch.compile.

On the CPU the kernels run through Triton's interpreter (tests/conftest.py), so ``kernels=True`` takes
the same code path as on a GPU, only slower; ``kernels=False`` is the plain PyTorch path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dyt_deploy
from dyt_deploy.kernels import KernelDynamicTanh
from dyt_deploy.models import create_model
from dyt_deploy.nn import DynamicTanh
from dyt_deploy.optimize_model import MODES, fold_dyt_into_linear, optimize

SMALL = {"vit_tiny": {"depth": 2, "img_size": 32, "num_classes": 10},
         "llama_tiny": {"depth": 2, "vocab_size": 64},
         "bert_tiny": {"depth": 2, "vocab_size": 64}}


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random gamma, beta and alpha, as a trained model has (ones/zeros would make folding trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DynamicTanh):
                m.alpha.fill_(0.3 + torch.rand(1, generator=g).item())
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
    return model


def run(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs.values())


@pytest.mark.parametrize(("arch", "folded", "left"), [
    # pre-norm ViT: norm1 -> qkv and norm2 -> fc1 per block fold; the final norm feeds x[:, 0] (then the head)
    ("vit_tiny", 4, {"norm": "read by TensorBase.__getitem__, not a linear layer"}),
    # LLaMA: attention norm -> wq/wk/wv, FFN norm -> w1/w3, final norm -> lm_head: all fold
    ("llama_tiny", 5, {}),
])
def test_fold_keeps_the_outputs_and_leaves_only_tanh(arch: str, folded: int, left: dict) -> None:
    model = trained_like(create_model(arch, norm="dyt", **SMALL[arch]))
    inputs = model.example_inputs(seed=1)
    expected = run(model, inputs)

    optimized, report = optimize(model, mode="eager", kernels=False)

    assert len(report.folded) == folded and report.not_folded == left
    torch.testing.assert_close(run(optimized, inputs), expected, rtol=1e-5, atol=1e-5)
    folded_norms = [optimized.get_submodule(site) for site in report.folded]
    assert all(n.weight is None and n.bias is None for n in folded_norms)
    assert run(model, inputs).equal(expected)  # the caller's model is untouched (optimize works on a copy)


def test_post_norm_bert_folds_nothing_and_says_why() -> None:
    model = trained_like(create_model("bert_tiny", norm="dyt", **SMALL["bert_tiny"]))

    report = fold_dyt_into_linear(model)

    assert report.folded == {}
    assert len(report.not_folded) == 1 + 2 * 2  # embeddings + two per layer, each also read by a residual add
    assert all("not a linear layer" in why for why in report.not_folded.values())


def test_a_linear_layer_called_on_other_inputs_is_not_folded_into() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = DynamicTanh(8)
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(self.norm(x)) + self.proj(x)  # folding gamma into proj would change proj(x)

    model = trained_like(Shared())
    x = torch.randn(2, 8)
    expected = model(x)

    optimized, report = optimize(model, mode="eager", kernels=False, example_inputs=x)

    assert report.folded == {} and report.not_folded == {"norm": "proj is also called on other inputs"}
    torch.testing.assert_close(optimized(x), expected)


def test_data_dependent_control_flow_folds_given_example_inputs() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = DynamicTanh(4)
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on values: torch.fx could not trace this
                x = -x
            return self.fc(self.norm(x))

    model = trained_like(DataDependent())
    x = torch.randn(3, 4)

    optimized, report = optimize(model, mode="eager", kernels=False, example_inputs=x)

    assert report.folded == {"norm": ["fc"]}
    torch.testing.assert_close(optimized(x), model(x))
    torch.testing.assert_close(optimized(-x), model(-x))
    _, without = optimize(model, mode="eager", kernels=False)  # not a zoo model: no inputs of its own
    assert without.folded == {} and "pass example_inputs=" in without.describe()


def test_kernels_after_folding_run_the_tanh_only_form_and_fuse_the_residual_adds() -> None:
    model = trained_like(create_model("llama_tiny", norm="dyt", **SMALL["llama_tiny"]))
    inputs = model.example_inputs(seed=2, batch=1, seq=5)
    expected = run(model, inputs)

    optimized, report = optimize(model, mode="eager", kernels=True)

    assert report.kernel_sites == 5 and report.fused_adds >= 2
    kernel_norms = [m for m in optimized.modules() if isinstance(m, KernelDynamicTanh)]
    assert len(kernel_norms) == 5 and all(m.weight is None for m in kernel_norms)
    torch.testing.assert_close(run(optimized, inputs), expected, rtol=1e-4, atol=1e-4)


def test_compiled_mode_equals_eager() -> None:
    model = trained_like(create_model("vit_tiny", norm="dyt", depth=1, img_size=16, patch_size=8, dim=32, heads=2,
                                      num_classes=4))
    inputs = model.example_inputs(seed=3)

    optimized, report = dyt_deploy.optimize(model, mode="default", kernels=False)

    assert report.mode == "default" and len(report.folded) == 2
    torch.testing.assert_close(run(optimized, inputs), run(model, inputs), rtol=1e-4, atol=1e-4)


def test_unknown_mode_lists_the_modes() -> None:
    with pytest.raises(dyt_deploy.DytDeployError, match="unknown optimize mode 'fast'"):
        optimize(nn.Linear(2, 2), mode="fast")
    assert MODES == ("eager", "default", "reduce-overhead", "max-autotune")


def test_the_torch_optimize_runner_is_the_optimized_model_on_the_runner_interface() -> None:
    from dyt_deploy.runners import create_runner

    model = trained_like(create_model("llama_tiny", norm="dyt", **SMALL["llama_tiny"]))
    feed = {name: t.numpy() for name, t in model.example_inputs(seed=4).items()}
    names = list(feed)

    with create_runner("torch", model, input_names=names, output_names=["logits"]) as eager, \
            create_runner("torch-optimize", model, input_names=names, output_names=["logits"], optimize="eager",
                          warmup_feed=feed) as optimized:
        torch.testing.assert_close(optimized.infer(feed)["logits"], eager.infer(feed)["logits"], rtol=1e-4, atol=1e-4)
        assert len(optimized.optimize_report.folded) == 5 and optimized.name == "torch-optimize/eager"
