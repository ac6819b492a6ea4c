"""The Triton DyT kernel itself (plain, no-bias, tanh-only, fused residual add) against the reference math."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton not installed (pip install 'dyt-deploy[test]')")
from kernel_testlib import DEVICE, FAST_TANH_ULPS, ULP, kernel_ulps, within_ulps  # noqa: E402

from dyt_deploy.kernels import dyt_add_reference, dyt_reference, interpreting, uses_fast_tanh  # noqa: E402
from dyt_deploy.kernels import triton_dyt as T  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FORMS = {"plain": (True, True), "no_bias": (True, False), "tanh_only": (False, False)}


def params(width: int, dtype: torch.dtype, form: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    has_w, has_b = FORMS[form]
    alpha = torch.tensor([0.8]).to(DEVICE, dtype)
    w = (torch.randn(width, generator=g) * 2).to(DEVICE, dtype) if has_w else None
    b = torch.randn(width, generator=g).to(DEVICE, dtype) if has_b else None
    return alpha, w, b


def data(shape, dtype, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(DEVICE, dtype)


def term_scale(x, alpha, w, b):
    """|w * tanh(alpha x)| + |b|: the size of the terms, which bounds rounding where they cancel."""
    t = torch.tanh(alpha.double() * x.double()).abs()
    t = t * w.double().abs() if w is not None else t
    return t + b.double().abs() if b is not None else t


def exact(x, alpha, w, b):
    """The float64 reference, rounded once to x's dtype: what a correctly rounded kernel returns."""
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return dyt_reference(x.double(), d(alpha), d(w), d(b)).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape", [(37, 200), (2, 3, 64), (5, 4100), (1, 1)], ids=str)
def test_kernel_matches_reference_within_one_ulp(dtype, form, shape):
    x = data(shape, dtype)
    alpha, w, b = params(shape[-1], dtype, form)
    y = T.dyt_forward(x, alpha, w, b)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    scale = term_scale(x, alpha, w, b)
    within_ulps(y, exact(x, alpha, w, b), dtype, ulps=kernel_ulps(dtype), scale=scale)
    # eager PyTorch in that dtype rounds after every op, so it sits a few ulps off as well
    within_ulps(y, dyt_reference(x, alpha, w, b), dtype, ulps=16, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", list(FORMS))
def test_fused_residual_add_writes_the_stream_and_the_norm(dtype, form):
    x, residual = data((23, 96), dtype, seed=2), data((23, 96), dtype, seed=3)
    alpha, w, b = params(96, dtype, form)
    h, y = T.dyt_forward(x, alpha, w, b, residual=residual)
    h_eager, _ = dyt_add_reference(x, residual, alpha, w, b)
    if dtype == torch.bfloat16 and interpreting():
        within_ulps(h, h_eager, dtype)  # the interpreter truncates to bf16; a GPU rounds to nearest
    else:
        assert torch.equal(h, h_eager), "h must equal eager residual + x bit for bit"
    within_ulps(y, exact(h, alpha, w, b), dtype, ulps=kernel_ulps(dtype), scale=term_scale(h, alpha, w, b))


def test_mixed_precision_follows_eager_type_promotion():
    """bf16 activations with fp32 parameters: eager DyT returns fp32, and so does the kernel."""
    x = data((8, 64), torch.bfloat16)
    alpha, w, b = params(64, torch.float32, "plain")
    y = T.dyt_forward(x, alpha, w, b)
    expected = dyt_reference(x, alpha, w, b)
    assert y.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


def test_out_buffer_sets_the_stored_dtype():
    """The TensorRT plugin's case: fp32 parameters, fp16 x, output in x's dtype, written in place."""
    x = data((6, 32), torch.float16)
    alpha, w, b = params(32, torch.float32, "plain")
    out = torch.full_like(x, float("nan"))
    returned = T.dyt_forward(x, alpha, w, b, out=out)
    assert returned is out
    within_ulps(out, dyt_reference(x.float(), alpha, w, b).to(torch.float16), torch.float16,
                ulps=kernel_ulps(torch.float16) + 0.5, scale=term_scale(x, alpha, w, b))


def test_saturation_zero_and_nan_behave_like_tanh():
    x = torch.tensor([[-1e30, -80.0, -0.0, 0.0, 1e-30, 80.0, 1e30, float("inf"), float("-inf"), float("nan")]],
                     device=DEVICE)
    alpha = torch.tensor([1.0], device=DEVICE)
    y = T.dyt_forward(x, alpha)
    expected = torch.tanh(x)
    assert torch.equal(y[:, :-1], expected[:, :-1])
    assert torch.isnan(y[0, -1])


def test_non_contiguous_input_and_scalar_parameters():
    x = data((64, 48), torch.float32).t()  # (48, 64), column stride 48
    assert not x.is_contiguous()
    alpha = torch.tensor([0.3], device=DEVICE)
    w, b = torch.tensor([1.5], device=DEVICE), torch.tensor([-0.25], device=DEVICE)
    y = T.dyt_forward(x, alpha, w, b)
    torch.testing.assert_close(y, dyt_reference(x, alpha, w, b), rtol=1e-6, atol=1e-6)


def test_empty_input_launches_nothing():
    x = torch.empty((0, 16), device=DEVICE)
    y = T.dyt_forward(x, torch.tensor([0.5], device=DEVICE))
    assert y.shape == (0, 16)


@pytest.mark.parametrize("config", [T.LaunchConfig(1, 16, 1), T.LaunchConfig(4, 32, 2), T.LaunchConfig(64, 256, 8)],
                         ids=str)
def test_tiles_do_not_change_results(config):
    x, residual = data((33, 100), torch.float16), data((33, 100), torch.float16, seed=9)
    alpha, w, b = params(100, torch.float16, "plain")
    h0, y0 = T.dyt_forward(x, alpha, w, b, residual=residual)
    h1, y1 = T.dyt_forward(x, alpha, w, b, residual=residual, config=config)
    assert torch.equal(h0, h1) and torch.equal(y0, y1)


@pytest.mark.parametrize(("rows", "cols", "size"), [(4096, 4096, 2), (4096, 4096, 4), (7, 100, 2), (1, 20000, 4)])
def test_default_config_covers_rows_with_bounded_tiles(rows, cols, size):
    cfg = T.default_config(rows, cols, size)
    assert cfg.block_n & (cfg.block_n - 1) == 0 and cfg.block_m & (cfg.block_m - 1) == 0
    assert cfg.block_n >= min(cols, 4096), "a row up to 4096 wide is one tile across"
    assert cfg.block_m <= max(rows, 1) * 2 - 1, "no more tile rows than the input has (rounded up)"
    assert cfg.block_m * cfg.block_n * size <= 32 * 1024
    assert cfg.num_warps in (4, 8)


def test_bad_parameters_are_refused_with_the_reason():
    x = data((4, 8), torch.float32)
    with pytest.raises(ValueError, match="alpha must hold one value"):
        T.dyt_forward(x, torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="weight has 5 values"):
        T.dyt_forward(x, torch.ones(1, device=DEVICE), torch.ones(5, device=DEVICE))
    with pytest.raises(ValueError, match="residual shape"):
        T.dyt_forward(x, torch.ones(1, device=DEVICE), residual=torch.ones(4, 9, device=DEVICE))
    with pytest.raises(ValueError, match="out must be contiguous"):
        T.dyt_forward(x, torch.ones(1, device=DEVICE), out=torch.empty(8, 4, device=DEVICE).t())


def test_ulp_table_matches_the_dtypes():
    for dtype, ulp in ULP.items():
        assert torch.finfo(dtype).eps == ulp


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_post_norm_form_gives_the_same_output_without_the_sum(dtype):
    x, residual = data((9, 72), dtype, seed=4), data((9, 72), dtype, seed=5)
    alpha, w, b = params(72, dtype, "plain")
    _, y_pre = T.dyt_forward(x, alpha, w, b, residual=residual)
    y_post = T.dyt_forward(x, alpha, w, b, residual=residual, keep_sum=False)
    assert isinstance(y_post, torch.Tensor) and torch.equal(y_post, y_pre)


def test_post_norm_form_with_mixed_storage_types_still_rounds_the_sum_like_eager():
    """fp16 + bf16 sums to fp32 in eager PyTorch; the kernel then keeps an fp32 h internally."""
    x, residual = data((4, 32), torch.float16), data((4, 32), torch.bfloat16, seed=6)
    alpha, w, b = params(32, torch.float32, "plain")
    y = T.dyt_forward(x, alpha, w, b, residual=residual, keep_sum=False)
    expected = dyt_reference(residual + x, alpha, w, b)
    assert y.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


# ---- the hardware tanh: when it is chosen, and its error on a GPU ----


@pytest.fixture
def compiled_launches(monkeypatch):
    """As on a GPU: no interpreter, no DYT_PRECISE_TANH (only uses_fast_tanh's choice is asked here)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("DYT_PRECISE_TANH", raising=False)


def test_the_hardware_tanh_is_chosen_for_16_bit_results_only(compiled_launches, monkeypatch):
    assert uses_fast_tanh(torch.bfloat16) and uses_fast_tanh(torch.float16)
    assert not uses_fast_tanh(torch.float32) and not uses_fast_tanh(torch.float64)
    assert not uses_fast_tanh(torch.bfloat16, precise=True)
    monkeypatch.setenv("DYT_PRECISE_TANH", "1")
    assert not uses_fast_tanh(torch.float16)
    monkeypatch.setenv("DYT_PRECISE_TANH", "0")
    assert uses_fast_tanh(torch.float16)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter cannot run inline PTX
    assert not uses_fast_tanh(torch.float16)


@pytest.fixture
def tanh_choices(monkeypatch):
    """Every (stored dtype, precise) a launch asked uses_fast_tanh about; the real answer is returned."""
    seen: list[tuple[torch.dtype, bool]] = []
    real = T.uses_fast_tanh

    def recording(out_dtype, precise=False):
        seen.append((out_dtype, precise))
        return real(out_dtype, precise)

    monkeypatch.setattr(T, "uses_fast_tanh", recording)
    return seen


@pytest.mark.parametrize("precise", [False, True])
def test_precise_reaches_every_launch_from_the_module_path(tanh_choices, precise):
    from dyt_deploy.kernels import use_kernels
    from dyt_deploy.models import create_model

    model = create_model("llama_tiny", "dyt", seed=0, depth=2).eval().to(DEVICE, torch.bfloat16)
    use_kernels(model, precise=precise)
    ids = torch.randint(0, model.config["vocab_size"], (2, 6), device=DEVICE)
    with torch.no_grad():
        model(ids)
        torch.compile(model, fullgraph=True, backend="eager")(ids)  # through the custom ops
    assert len(tanh_choices) == 2 * (2 * 2 + 1)  # every norm, eager then compiled
    assert set(tanh_choices) == {(torch.bfloat16, precise)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or interpreting(),
                    reason="needs a CUDA GPU: the hardware tanh runs only in compiled kernels")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_hardware_tanh_stays_within_its_documented_bound(dtype):
    """Against float64, over a dense sweep of alpha * x (saturation included) and random gamma/beta."""
    x = torch.linspace(-8, 8, 256 * 4096, device=DEVICE).reshape(256, 4096).to(dtype)
    x = torch.cat([x, data((256, 4096), dtype, seed=7)])
    alpha, w, b = params(4096, dtype, "plain")
    assert uses_fast_tanh(dtype) and not uses_fast_tanh(dtype, precise=True)
    fast = T.dyt_forward(x, alpha, w, b)
    precise = T.dyt_forward(x, alpha, w, b, precise=True)
    expected, scale = exact(x, alpha, w, b), term_scale(x, alpha, w, b)
    err = ((fast.double() - expected.double()).abs() / (ULP[dtype] * scale.clamp(min=1.0))).max().item()
    print(f"hardware tanh, {dtype}: max error {err:.2f} eps (bound {FAST_TANH_ULPS[dtype]})")
    within_ulps(fast, expected, dtype, ulps=FAST_TANH_ULPS[dtype], scale=scale)
    within_ulps(precise, expected, dtype, ulps=1, scale=scale)
    assert not torch.equal(fast, precise), "the hardware instruction ran (its rounding differs somewhere)"
    t_only = T.dyt_forward(x, alpha)  # the folded form: tanh alone, relative to |tanh| (absolute below 1)
    within_ulps(t_only, exact(x, alpha, None, None), dtype, ulps=FAST_TANH_ULPS[dtype])


def test_row_strided_inputs_are_read_in_place_and_outputs_are_contiguous():
    """Slices of wider rows (x and residual) need no copy: the kernel takes their row stride."""
    wide, wide_r = data((2, 3, 80), torch.float32), data((2, 3, 80), torch.float32, seed=8)
    x, residual = wide[..., :64], wide_r[..., 16:]
    assert not x.is_contiguous() and x.reshape(-1, 64).data_ptr() == x.data_ptr()
    alpha, w, b = params(64, torch.float32, "plain")
    h, y = T.dyt_forward(x, alpha, w, b, residual=residual)
    h_eager, y_eager = dyt_add_reference(x, residual, alpha, w, b)
    assert h.is_contiguous() and y.is_contiguous() and torch.equal(h, h_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-6, atol=1e-6)
