"""The module path: KernelDynamicTanh / use_kernels / add_and_norm, kernel where it can run, reference elsewhere."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton not installed (pip install 'dyt-deploy[test]')")
from kernel_testlib import DEVICE  # noqa: E402
from torch import nn  # noqa: E402

from dyt_deploy import kernels as K  # noqa: E402
from dyt_deploy.models import create_model  # noqa: E402
from dyt_deploy.nn import DynamicTanh, add_and_norm, create_norm  # noqa: E402


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


@pytest.mark.parametrize("name", ["vit_tiny", "llama_tiny", "bert_tiny"])
def test_use_kernels_swaps_every_dyt_and_keeps_outputs(name):
    model = create_model(name, "dyt", seed=0).eval().to(DEVICE)
    dyt_sites = sum(type(m) is DynamicTanh for m in model.modules())
    keys = {k: v.data_ptr() for k, v in model.state_dict().items()}
    feeds = {k: v.to(DEVICE) for k, v in model.example_inputs(batch=2, seq=8).items()}
    with torch.no_grad():
        before = model(*feeds.values())
        model, count = K.use_kernels(model)
        after = model(*feeds.values())
    assert count == dyt_sites > 0
    assert not any(type(m) is DynamicTanh for m in model.modules())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == keys, "no parameter copied or renamed"
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_use_kernels_leaves_other_norms_and_takes_a_bare_module():
    ln_model = create_model("vit_tiny", "layernorm", seed=0)
    assert K.use_kernels(ln_model)[1] == 0
    bare, count = K.use_kernels(DynamicTanh(8))
    assert count == 1 and isinstance(bare, K.KernelDynamicTanh)


def test_add_and_norm_without_a_fused_norm_is_the_two_eager_ops():
    norm = create_norm("rmsnorm", 16, eps=1e-6)
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    h, y = add_and_norm(norm, x, r)
    assert torch.equal(h, r + x) and torch.equal(y, norm(r + x))


def test_fused_residual_decoder_equals_the_plain_decoder_bit_for_bit(no_interpreter):
    """With kernel modules but no kernel device, the restructured forward runs the same eager ops."""
    model = create_model("llama_tiny", "dyt", seed=0).eval()
    ids = torch.randint(0, model.config["vocab_size"], (2, 12))
    with torch.no_grad():
        plain = model(ids)
        assert not model.fused_residual
        model, _ = K.use_kernels(model)
        assert model.fused_residual
        assert torch.equal(model(ids), plain)


def test_fused_residual_decoder_with_kernels_matches(launches):
    model = create_model("llama_tiny", "dyt", seed=0).eval().to(DEVICE)
    ids = torch.randint(0, model.config["vocab_size"], (2, 12), device=DEVICE)
    with torch.no_grad():
        plain = model(ids)
        model, _ = K.use_kernels(model)
        torch.testing.assert_close(model(ids), plain, rtol=1e-4, atol=1e-4)
    depth = model.config["depth"]
    # the first norm reads the embeddings alone; every later one takes the residual add before it
    assert launches == {"plain": 1, "add": 2 * depth, "sum": 0}


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


@pytest.mark.parametrize("name", ["llama_tiny", "vit_tiny"])
def test_fused_prenorm_with_plain_norms_is_the_blocks_own_forward_bit_for_bit(name):
    """fused_prenorm runs the same eager ops as the blocks when no norm fuses (checked per family)."""
    from dyt_deploy.models.prenorm import fused_prenorm

    model = create_model(name, "dyt", seed=0).eval()
    feeds = model.example_inputs(batch=2, seq=8)
    with torch.no_grad():
        plain = model(*feeds.values())
        if name == "vit_tiny":
            x = model.patch_embed(feeds["pixel_values"]).flatten(2).transpose(1, 2)
            x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
            steps = [s for block in model.blocks for s in block.steps()]
            fused = model.head(fused_prenorm(x, steps, model.norm)[:, 0])
        else:
            ids = feeds["input_ids"]
            cos, sin = model.rope_cos[: ids.shape[1]], model.rope_sin[: ids.shape[1]]
            steps = [s for layer in model.layers for s in layer.steps(cos, sin)]
            fused = model.lm_head(fused_prenorm(model.embed(ids), steps, model.norm))
    assert torch.equal(fused, plain)


def test_vit_with_kernels_takes_the_fused_path_and_matches(launches):
    model = create_model("vit_tiny", "dyt", seed=0).eval().to(DEVICE)
    pixels = model.example_inputs(batch=2)["pixel_values"].to(DEVICE)
    with torch.no_grad():
        plain = model(pixels)
        model, _ = K.use_kernels(model)
        assert model.fused_residual
        torch.testing.assert_close(model(pixels), plain, rtol=1e-4, atol=1e-4)
    assert launches == {"plain": 1, "add": 2 * model.config["depth"], "sum": 0}


def test_bert_with_kernels_runs_each_post_norm_as_one_pass(launches):
    model = create_model("bert_tiny", "dyt", seed=0).eval().to(DEVICE)
    feeds = {k: v.to(DEVICE) for k, v in model.example_inputs(batch=2, seq=8).items()}
    with torch.no_grad():
        plain = model(*feeds.values())
        model, _ = K.use_kernels(model)
        torch.testing.assert_close(model(*feeds.values()), plain, rtol=1e-4, atol=1e-4)
    # the embedding norm adds a broadcast position table (unfused); each layer's two norms fuse
    assert launches == {"plain": 1, "add": 0, "sum": 2 * model.config["depth"]}


def test_norm_of_sum_fused_and_plain_agree():
    from dyt_deploy.nn import norm_of_sum

    ref = trained_like(DynamicTanh(24)).to(DEVICE)
    fused = K.KernelDynamicTanh.from_module(ref)
    x, r = torch.randn(3, 24, device=DEVICE), torch.randn(3, 24, device=DEVICE)
    with torch.no_grad():
        assert torch.equal(norm_of_sum(ref, x, r), ref(r + x))
        torch.testing.assert_close(norm_of_sum(fused, x, r), ref(r + x), rtol=1e-6, atol=1e-6)
