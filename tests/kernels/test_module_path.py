"""The module path: KernelDynamicTanh / use_kernels and its residual-add fusion, kernel where it can run,
reference elsewhere."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton not installed (pip install 'dyt-deploy[test]')")
from kernel_testlib import DEVICE  # noqa: E402
from torch import nn  # noqa: E402

from dyt_deploy import kernels as K  # noqa: E402
from dyt_deploy.models import create_model  # noqa: E402
from dyt_deploy.nn import DynamicTanh  # noqa: E402

FAMILIES = ["vit_tiny", "llama_tiny", "bert_tiny"]
# two blocks show every fusion site (within a block, across blocks, before the final norm); under
# Triton's interpreter the full-size models only cost time
SMALL = {"depth": 2}


def small_model(name: str, norm: str = "dyt") -> torch.nn.Module:
    extra = {"img_size": 64} if name.startswith("vit") else {}
    return create_model(name, norm, seed=0, **SMALL, **extra)


@pytest.fixture
def no_interpreter(monkeypatch):
    """CPU tensors without TRITON_INTERPRET: the kernel cannot run, the reference must."""
    if DEVICE == "cuda":
        pytest.skip("CUDA tensors always take the kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def launches(monkeypatch):
    """Counts kernel launches by form: "plain", "add" (sum kept) and "sum" (post-norm)."""
    from dyt_deploy.kernels import triton_dyt

    counts = {"plain": 0, "add": 0, "sum": 0}
    real = triton_dyt.dyt_forward

    def counting(*args, **kwargs):
        form = "plain" if kwargs.get("residual") is None else "add" if kwargs.get("keep_sum", True) else "sum"
        counts[form] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(triton_dyt, "dyt_forward", counting)
    return counts


def trained_like(module: DynamicTanh, seed: int = 0) -> DynamicTanh:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.alpha.fill_(0.7)
        module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        if module.bias is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=g))
    return module


@pytest.mark.parametrize("bias", [True, False])
def test_kernel_module_matches_dynamic_tanh_under_no_grad(bias):
    ref = trained_like(DynamicTanh(64, bias=bias)).to(DEVICE)
    fused = K.KernelDynamicTanh.from_module(ref)
    x = torch.randn(3, 10, 64, device=DEVICE) * 4
    with torch.no_grad():
        assert K.will_use_kernel(x, ref.alpha, ref.weight, ref.bias)
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-6, atol=1e-6)
        r = torch.randn_like(x)
        h, y = fused.forward_add(x, r)
        assert torch.equal(h, r + x)
        torch.testing.assert_close(y, ref(r + x), rtol=1e-6, atol=1e-6)


def test_without_a_kernel_device_the_reference_runs_bit_for_bit(no_interpreter):
    ref = trained_like(DynamicTanh(32))
    fused = K.KernelDynamicTanh.from_module(ref)
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert not K.will_use_kernel(x, ref.alpha)
        assert torch.equal(fused(x), ref(x))


def test_training_takes_the_reference_so_gradients_flow():
    ref = trained_like(DynamicTanh(16)).to(DEVICE)
    fused = K.KernelDynamicTanh.from_module(ref)
    x = torch.randn(5, 16, device=DEVICE, requires_grad=True)
    assert not K.will_use_kernel(x, fused.alpha)
    fused(x).sum().backward()
    assert x.grad is not None and fused.alpha.grad is not None and fused.weight.grad is not None


def test_float64_and_channels_first_take_the_reference():
    x64 = torch.randn(2, 8, dtype=torch.float64, device=DEVICE)
    assert not K.will_use_kernel(x64, torch.ones(1, dtype=torch.float64))
    cf = trained_like(DynamicTanh(6, channels_last=False)).to(DEVICE)
    x = torch.randn(2, 6, 5, 5, device=DEVICE)
    with torch.no_grad():
        assert torch.equal(K.KernelDynamicTanh.from_module(cf)(x), cf(x))


def test_from_module_shares_parameters_and_state_dict():
    ref = trained_like(DynamicTanh(12, bias=False))
    fused = K.KernelDynamicTanh.from_module(ref)
    assert fused.alpha is ref.alpha and fused.weight is ref.weight and fused.bias is None
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert fused.extra_repr() == ref.extra_repr()


@pytest.mark.parametrize("name", FAMILIES)
def test_use_kernels_swaps_every_dyt_and_keeps_outputs(name):
    model = small_model(name, "dyt").eval().to(DEVICE)
    dyt_sites = sum(type(m) is DynamicTanh for m in model.modules())
    keys = {k: v.data_ptr() for k, v in model.state_dict().items()}
    feeds = {k: v.to(DEVICE) for k, v in model.example_inputs(batch=2, seq=8).items()}
    with torch.no_grad():
        before = model(*feeds.values())
        swapped, count = K.use_kernels(model)
        after = swapped(*feeds.values())
    assert swapped is model and count == dyt_sites > 0
    assert not any(type(m) is DynamicTanh for m in model.modules())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == keys, "no parameter copied or renamed"
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_use_kernels_leaves_other_norms_and_takes_a_bare_module():
    ln_model = small_model("vit_tiny", "layernorm")
    assert K.use_kernels(ln_model)[1] == 0
    assert "forward" not in vars(ln_model), "nothing swapped, nothing traced: the model's own forward runs"
    bare, count = K.use_kernels(DynamicTanh(8))
    assert count == 1 and isinstance(bare, K.KernelDynamicTanh)


def fused_zoo_model(name: str) -> tuple[nn.Module, K.FusionReport]:
    """A zoo model with kernel norms, fused by the pass itself (to read its report)."""
    model = small_model(name, "dyt").eval()
    model, _ = K.use_kernels(model, fuse=False)
    return model, K.fuse_residual_adds(model)


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_zoo_models_equal_the_plain_ones_bit_for_bit_without_a_kernel_device(name, no_interpreter):
    """With kernel modules but no kernel device, the rewritten forward runs the same eager ops."""
    plain = small_model(name, "dyt").eval()
    model, report = fused_zoo_model(name)
    feeds = plain.example_inputs(batch=2, seq=12)
    with torch.no_grad():
        assert report.fused and torch.equal(model(**feeds), plain(**feeds))


def test_prenorm_fusion_sites_cross_blocks_and_end_in_the_sum_only_form():
    model, report = fused_zoo_model("llama_tiny")
    depth = model.config["depth"]
    norms = [f"layers.{i}.{n}" for i in range(depth) for n in ("attn_norm", "ffn_norm")][1:] + ["norm"]
    assert [(s.module, s.norm) for s in report.fused] == [("", n) for n in norms]
    # every add before a block's norm keeps the residual stream; the last one only feeds the final norm
    assert [s.form for s in report.fused] == ["add"] * (2 * depth - 1) + ["sum"]
    assert report.untraced == {}


def test_fused_residual_decoder_with_kernels_matches(launches):
    model = small_model("llama_tiny", "dyt").eval().to(DEVICE)
    ids = torch.randint(0, model.config["vocab_size"], (2, 12), device=DEVICE)
    with torch.no_grad():
        plain = model(ids)
        model, _ = K.use_kernels(model)
        torch.testing.assert_close(model(ids), plain, rtol=1e-4, atol=1e-4)
    depth = model.config["depth"]
    # the first norm reads the embeddings alone; every later one takes the residual add before it,
    # the final norm without writing the sum
    assert launches == {"plain": 1, "add": 2 * depth - 1, "sum": 1}


def test_broadcasting_residuals_are_refused_by_the_functions_and_added_unfused_by_the_module():
    fused = K.KernelDynamicTanh(8)
    x, r = torch.randn(2, 8), torch.randn(1, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="does not broadcast"):
            K.dyt_add(x, r, fused.alpha)
        with pytest.raises(ValueError, match="does not broadcast"):
            K.dyt_of_sum(x, r, fused.alpha)
        h, y = fused.forward_add(x, r)
        assert torch.equal(h, r + x) and torch.equal(y, fused(r + x))
        assert torch.equal(fused.forward_sum(x, r), fused(r + x))


def test_kernel_module_is_an_nn_module_drop_in():
    seq = nn.Sequential(nn.Linear(8, 8), K.KernelDynamicTanh(8))
    with torch.no_grad():
        assert seq(torch.randn(2, 8)).shape == (2, 8)


def test_vit_with_kernels_takes_the_fused_path_and_matches(launches):
    model = small_model("vit_tiny", "dyt").eval().to(DEVICE)
    pixels = model.example_inputs(batch=2)["pixel_values"].to(DEVICE)
    with torch.no_grad():
        plain = model(pixels)
        model, _ = K.use_kernels(model)
        torch.testing.assert_close(model(pixels), plain, rtol=1e-4, atol=1e-4)
    # the first norm's add broadcasts the position table over the batch: fused in the graph, unfused at run time
    assert launches == {"plain": 1, "add": 2 * model.config["depth"] - 1, "sum": 1}


def test_bert_with_kernels_runs_each_post_norm_as_one_pass(launches):
    model = small_model("bert_tiny", "dyt").eval().to(DEVICE)
    feeds = {k: v.to(DEVICE) for k, v in model.example_inputs(batch=2, seq=8).items()}
    with torch.no_grad():
        plain = model(*feeds.values())
        model, _ = K.use_kernels(model)
        torch.testing.assert_close(model(*feeds.values()), plain, rtol=1e-4, atol=1e-4)
    # the embedding norm adds a broadcast position table (unfused); each layer's two norms fuse
    assert launches == {"plain": 1, "add": 0, "sum": 2 * model.config["depth"]}


def test_bert_top_level_cannot_be_traced_so_its_layers_are_fused_one_by_one():
    model, report = fused_zoo_model("bert_tiny")
    assert set(report.untraced) == {""} and "finfo" in report.untraced[""]
    layers = [f"layers.{i}" for i in range(model.config["depth"])]
    expected = [(layer, f"{layer}.{norm}", "sum") for layer in layers for norm in ("attn_out_norm", "out_norm")]
    assert [(s.module, s.norm, s.form) for s in report.fused] == expected
    assert "forward" not in vars(model) and all("forward" in vars(model.get_submodule(n)) for n in layers)


def test_forward_sum_fused_and_plain_agree():
    ref = trained_like(DynamicTanh(24)).to(DEVICE)
    fused = K.KernelDynamicTanh.from_module(ref)
    x, r = torch.randn(3, 24, device=DEVICE), torch.randn(3, 24, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fused.forward_sum(x, r), ref(r + x), rtol=1e-6, atol=1e-6)
