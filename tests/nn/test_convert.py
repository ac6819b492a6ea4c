"""convert_norms: LayerNorm/RMSNorm <-> DyT/Derf on zoo models, hand-built modules and transformers models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyt_deploy.errors import ConversionError, DytDeployError, UnknownNameError
from dyt_deploy.models import create_model
from dyt_deploy.nn import Derf, DynamicTanh, LayerNorm2d, RMSNorm2d, convert_norms, site_role
from dyt_deploy.nn.convert import is_channels_first


def _vit(norm: str = "layernorm", **overrides: object) -> nn.Module:
    return create_model("vit_tiny", norm=norm, depth=2, img_size=32, **overrides)


def _llama(norm: str = "rmsnorm", **overrides: object) -> nn.Module:
    return create_model("llama_tiny", norm=norm, depth=2, **overrides)


def _layers_of(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def _randomize_affine(model: nn.Module, cls: type, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Set weight/bias of every ``cls`` layer to random values; return copies by layer name."""
    generator = torch.Generator().manual_seed(seed)
    saved = {}
    with torch.no_grad():
        for name, layer in _layers_of(model, cls).items():
            saved[name] = {}
            for attr in ("weight", "bias"):
                param = getattr(layer, attr, None)
                if param is not None:
                    param.copy_(torch.randn(param.shape, generator=generator))
                    saved[name][attr] = param.detach().clone()
    return saved


def _run(model: nn.Module, **sizes: int) -> torch.Tensor:
    inputs = model.example_inputs(**sizes)
    dtype = next(model.parameters()).dtype
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        return model(**inputs)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(width)
        self.ffn_norm = nn.RMSNorm(width)


class _Decoder(nn.Module):
    """Only the norm sites of a LLaMA-style decoder, at a paper width."""

    def __init__(self, width: int, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(width) for _ in range(depth))
        self.norm = nn.RMSNorm(width)


# --- LayerNorm -> DyT on a zoo model ---------------------------------------------------------------


def test_layernorm_to_dyt_converts_every_layernorm() -> None:
    model = _vit()
    ln_names = list(_layers_of(model, nn.LayerNorm))
    assert len(ln_names) == 2 * 2 + 1  # two per block, plus the final norm
    before = _run(model)

    report = convert_norms(model, "dyt")

    assert not _layers_of(model, nn.LayerNorm)
    assert list(_layers_of(model, DynamicTanh)) == ln_names
    assert len(report) == len(ln_names)
    assert report.to == "dyt"
    assert [site.name for site in report] == ln_names
    for site in report:
        assert (site.old_type, site.new_type, site.alpha_init) == ("LayerNorm", "DynamicTanh", 0.5)
    assert [d["name"] for d in report.as_dicts()] == ln_names
    assert "DynamicTanh" in report.table() and ln_names[0] in report.table()
    after = _run(model)
    assert after.shape == before.shape
    assert not torch.allclose(after, before)  # conversion changes the function


def test_layernorm_affine_is_copied_into_dyt() -> None:
    model = _vit()
    saved = _randomize_affine(model, nn.LayerNorm, seed=1)
    convert_norms(model, "dyt", alpha_init=0.3)
    converted = _layers_of(model, DynamicTanh)
    assert set(converted) == set(saved)
    for name, layer in converted.items():
        assert torch.equal(layer.weight.detach(), saved[name]["weight"]), name
        assert torch.equal(layer.bias.detach(), saved[name]["bias"]), name
        assert layer.alpha.item() == pytest.approx(0.3)
        assert layer.channels_last


def test_layernorm_to_derf() -> None:
    model = _vit()
    saved = _randomize_affine(model, nn.LayerNorm, seed=2)
    report = convert_norms(model, "derf")
    converted = _layers_of(model, Derf)
    assert len(converted) == len(report) == 5
    for name, layer in converted.items():
        assert torch.equal(layer.weight.detach(), saved[name]["weight"])
    assert _run(model).isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_conversion_keeps_dtype(dtype: torch.dtype) -> None:
    model = _vit().to(dtype)
    saved = _randomize_affine(model, nn.LayerNorm, seed=3)
    convert_norms(model, "dyt")
    for name, layer in _layers_of(model, DynamicTanh).items():
        for pname, param in layer.named_parameters():
            assert param.dtype == dtype, (name, pname)
        assert torch.equal(layer.weight.detach(), saved[name]["weight"])
    assert _run(model).dtype == dtype


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
        ),
    ],
)
def test_conversion_keeps_device(device: str) -> None:
    model = _vit().to(device)
    convert_norms(model, "dyt")
    for layer in _layers_of(model, DynamicTanh).values():
        assert all(p.device.type == device for p in layer.parameters())


# --- back to LayerNorm, RMSNorm sources ------------------------------------------------------------------


def test_dyt_to_layernorm_copies_affine() -> None:
    model = _vit("dyt")
    saved = _randomize_affine(model, DynamicTanh, seed=4)
    report = convert_norms(model, to="layernorm")
    restored = _layers_of(model, nn.LayerNorm)
    assert not _layers_of(model, DynamicTanh)
    assert set(restored) == set(saved) and len(restored) == 5
    for name, layer in restored.items():
        assert torch.equal(layer.weight.detach(), saved[name]["weight"])
        assert torch.equal(layer.bias.detach(), saved[name]["bias"])
    assert all(site.alpha_init is None and site.new_type == "LayerNorm" for site in report)


def test_layernorm_dyt_layernorm_round_trip_keeps_affine() -> None:
    model = _vit()
    saved = _randomize_affine(model, nn.LayerNorm, seed=5)
    reference = _run(model)
    convert_norms(model, "dyt")
    convert_norms(model, "layernorm", eps=1e-6)  # DyT has no eps; the zoo's ViT uses 1e-6
    for name, layer in _layers_of(model, nn.LayerNorm).items():
        assert layer.eps == 1e-6
        assert torch.equal(layer.weight.detach(), saved[name]["weight"])
        assert torch.equal(layer.bias.detach(), saved[name]["bias"])
    torch.testing.assert_close(_run(model), reference)


def test_rmsnorm_to_dyt_has_no_bias() -> None:
    model = _llama()
    saved = _randomize_affine(model, nn.RMSNorm, seed=6)
    report = convert_norms(model, "dyt")
    converted = _layers_of(model, DynamicTanh)
    assert len(converted) == len(report) == 2 * 2 + 1
    for name, layer in converted.items():
        assert layer.bias is None
        assert "bias" not in dict(layer.named_parameters())
        assert torch.equal(layer.weight.detach(), saved[name]["weight"])
    assert all(site.old_type == "RMSNorm" and site.note == "" for site in report)
    assert _run(model).shape == (2, 16, 1024)


def test_layernorm_to_rmsnorm_reports_dropped_bias() -> None:
    model = _vit()
    report = convert_norms(model, "rmsnorm")
    assert len(_layers_of(model, nn.RMSNorm)) == 5
    assert all(layer.eps == 1e-6 for layer in _layers_of(model, nn.RMSNorm).values())  # the source's eps
    assert all("bias dropped" in site.note for site in report)


def test_converting_to_the_same_kind_changes_nothing() -> None:
    model = _vit("dyt")
    layers = _layers_of(model, DynamicTanh)
    report = convert_norms(model, "dyt")
    assert len(report) == 0
    assert _layers_of(model, DynamicTanh) == layers


def test_layernorm_without_affine_to_dyt() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4, elementwise_affine=False))
    convert_norms(model, "dyt")
    dyt = model[1]
    assert isinstance(dyt, DynamicTanh)
    assert torch.equal(dyt.weight.detach(), torch.ones(4)) and torch.equal(dyt.bias.detach(), torch.zeros(4))


# --- per-site alpha ----------------------------------------------------------------------------------


def test_site_role() -> None:
    assert site_role("layers.0.attn_norm") == "attention"
    assert site_role("layers.3.ffn_norm") == "ffn"
    assert site_role("norm") == "final"
    assert site_role("model.layers.0.input_layernorm") == "attention"
    assert site_role("model.layers.0.post_attention_layernorm") == "ffn"
    assert site_role("model.norm") == "final"
    assert site_role("fc_norm") == "final"  # timm ViT with global_pool="avg"
    assert site_role("transformer.h.0.ln_2") == "ffn"
    assert site_role("embeddings.LayerNorm") is None


def test_site_alpha_paper_on_llama_tiny() -> None:
    model = _llama()  # width 256: the paper's smallest row, 1.0 everywhere
    report = convert_norms(model, "dyt", site_alpha="paper")
    roles = {site.name: site.role for site in report}
    assert roles == {
        "layers.0.attn_norm": "attention",
        "layers.0.ffn_norm": "ffn",
        "layers.1.attn_norm": "attention",
        "layers.1.ffn_norm": "ffn",
        "norm": "final",
    }
    for name, layer in _layers_of(model, DynamicTanh).items():
        assert layer.alpha.item() == pytest.approx(1.0), name
    assert all(site.alpha_init == 1.0 for site in report)


@pytest.mark.parametrize(("width", "attention", "other"), [(2048, 1.0, 0.5), (4096, 0.8, 0.2)])
def test_site_alpha_paper_by_role(width: int, attention: float, other: float) -> None:
    model = _Decoder(width)
    convert_norms(model, "dyt", site_alpha="paper")
    for block in model.layers:
        assert block.attn_norm.alpha.item() == pytest.approx(attention)
        assert block.ffn_norm.alpha.item() == pytest.approx(other)
    assert model.norm.alpha.item() == pytest.approx(other)


def test_site_alpha_dict() -> None:
    model = _llama()
    report = convert_norms(model, "dyt", alpha_init=0.25, site_alpha={"attention": 0.9, "ffn": 0.3})
    for block in model.layers:
        assert block.attn_norm.alpha.item() == pytest.approx(0.9)
        assert block.ffn_norm.alpha.item() == pytest.approx(0.3)
    assert model.norm.alpha.item() == pytest.approx(0.25)  # no "final" entry: alpha_init
    assert {site.name: site.alpha_init for site in report}["norm"] == pytest.approx(0.25)


def test_site_alpha_callable() -> None:
    model = _llama()
    calls = []

    def choose(name: str, module: nn.Module) -> float | None:
        calls.append((name, type(module)))
        return 0.7 if name.startswith("layers.0.") else None

    convert_norms(model, "dyt", alpha_init=0.1, site_alpha=choose)
    assert [name for name, _ in calls] == [
        "layers.0.attn_norm", "layers.0.ffn_norm", "layers.1.attn_norm", "layers.1.ffn_norm", "norm",
    ]
    assert all(cls is nn.RMSNorm for _, cls in calls)  # the callable sees the layer being replaced
    assert model.layers[0].attn_norm.alpha.item() == pytest.approx(0.7)
    assert model.layers[0].ffn_norm.alpha.item() == pytest.approx(0.7)
    assert model.layers[1].attn_norm.alpha.item() == pytest.approx(0.1)
    assert model.norm.alpha.item() == pytest.approx(0.1)


@pytest.mark.parametrize("bad", ["nonsense", 3])
def test_bad_site_alpha(bad: object) -> None:
    with pytest.raises(ConversionError, match="site_alpha"):
        convert_norms(_Decoder(16), "dyt", site_alpha=bad)


# --- errors and special structures ---------------------------------------------------------------


def test_unknown_target() -> None:
    with pytest.raises(UnknownNameError) as info:
        convert_norms(_vit(), "batchnorm")
    for kind in ("layernorm", "rmsnorm", "dyt", "derf"):
        assert kind in str(info.value)


def test_channels_first_dyt_to_layernorm2d_and_back_keeps_weight_and_bias() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), DynamicTanh(8, channels_last=False, alpha_init=0.7))
    saved = _randomize_affine(model, DynamicTanh)["1"]
    report = convert_norms(model, "layernorm", eps=1e-6)
    assert type(model[1]) is LayerNorm2d and model[1].eps == 1e-6
    assert [(s.old_type, s.new_type) for s in report] == [("DynamicTanh", "LayerNorm2d")]
    assert torch.equal(model[1].weight, saved["weight"]) and torch.equal(model[1].bias, saved["bias"])
    x = torch.randn(2, 3, 5, 6)
    features = model[0](x)
    mean = features.mean(1, keepdim=True)
    var = features.var(1, keepdim=True, unbiased=False)
    normalized = (features - mean) / torch.sqrt(var + 1e-6)
    expected = normalized * saved["weight"].view(-1, 1, 1) + saved["bias"].view(-1, 1, 1)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    convert_norms(model, "dyt", alpha_init=0.3)
    assert type(model[1]) is DynamicTanh and model[1].channels_last is False
    assert torch.equal(model[1].weight, saved["weight"]) and torch.equal(model[1].bias, saved["bias"])
    assert model[1].alpha.item() == pytest.approx(0.3)
    assert model(x).shape == (2, 8, 5, 6)


def test_channels_first_dyt_to_rmsnorm2d_drops_bias() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Derf(8, channels_last=False))
    saved = _randomize_affine(model, Derf)["1"]
    report = convert_norms(model, "rmsnorm")
    assert type(model[1]) is RMSNorm2d and report.sites[0].note == "bias dropped (target has none)"
    assert torch.equal(model[1].weight, saved["weight"])
    convert_norms(model, "dyt")
    assert model[1].channels_last is False and model[1].bias is None


class LayerNorm2dOfTimm(nn.LayerNorm):
    """As timm's LayerNorm2d: an nn.LayerNorm subclass, channels-first, without a channels_last attribute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


LayerNorm2dOfTimm.__name__ = "LayerNorm2d"


class ChannelsFirstLayerNormOfTransformers(nn.LayerNorm):
    """As transformers' ConvNextLayerNorm with data_format="channels_first"."""

    def __init__(self, width: int) -> None:
        super().__init__(width, eps=1e-6)
        self.data_format = "channels_first"


@pytest.mark.parametrize("cls", [LayerNorm2dOfTimm, ChannelsFirstLayerNormOfTransformers])
def test_channels_first_layers_of_other_libraries_become_channels_first_dyt(cls: type) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), cls(8))
    assert is_channels_first(model[1])
    convert_norms(model, "dyt")
    assert model[1].channels_last is False
    assert model(torch.randn(2, 3, 5, 6)).shape == (2, 8, 5, 6)
    assert not is_channels_first(nn.LayerNorm(8)) and not is_channels_first(DynamicTanh(8))


def test_channels_first_dyt_to_derf_stays_channels_first() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), DynamicTanh(8, channels_last=False))
    convert_norms(model, "derf")
    assert isinstance(model[1], Derf) and model[1].channels_last is False
    assert model(torch.randn(2, 3, 5, 6)).shape == (2, 8, 5, 6)


def test_shared_norm_stays_shared() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            norm = nn.LayerNorm(8)
            self.first = norm
            self.second = norm

    model = Shared()
    report = convert_norms(model, "dyt")
    assert isinstance(model.first, DynamicTanh)
    assert model.first is model.second
    assert len(report) == 1
    assert len(list(model.parameters())) == 3  # alpha, weight, bias once


@pytest.mark.parametrize("layer", [nn.LayerNorm(8), nn.RMSNorm(8), DynamicTanh(8)], ids=["ln", "rms", "dyt"])
def test_model_that_is_a_norm_is_refused(layer: nn.Module) -> None:
    with pytest.raises(ConversionError, match="itself"):
        convert_norms(layer, "derf")
    wrapped = nn.Sequential(layer)
    assert len(convert_norms(wrapped, "derf")) == 1  # wrapped in a container it converts
    assert isinstance(wrapped[0], Derf)


# --- Hugging Face transformers models (random weights from small configs, no hub access) ---------


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def _hf_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=100,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_transformers_bert_layernorms_to_dyt() -> None:
    model = _bert()
    ln_names = list(_layers_of(model, nn.LayerNorm))
    assert len(ln_names) == 1 + 2 * 2  # embeddings, then attention output and output per layer
    input_ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=input_ids).last_hidden_state

    report = convert_norms(model, "dyt")

    assert [site.name for site in report] == ln_names
    assert not _layers_of(model, nn.LayerNorm)
    assert list(_layers_of(model, DynamicTanh)) == ln_names
    with torch.no_grad():
        after = model(input_ids=input_ids).last_hidden_state
    assert after.shape == before.shape == (2, 8, 32)
    assert after.isfinite().all()
    assert not torch.allclose(after, before)


def test_transformers_llama_rmsnorms_to_dyt() -> None:
    model = _hf_llama()
    rms = {name: m for name, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
    assert len(rms) == 2 * 2 + 1
    assert not isinstance(next(iter(rms.values())), nn.RMSNorm)  # recognised by duck typing only
    with torch.no_grad():
        for layer in rms.values():
            layer.weight.uniform_(0.5, 1.5)
    saved = {name: m.weight.detach().clone() for name, m in rms.items()}
    input_ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=input_ids).logits

    report = convert_norms(model, "dyt", site_alpha="paper")

    assert {site.name for site in report} == set(rms)
    assert all(site.old_type == "LlamaRMSNorm" for site in report)
    assert {site.name: site.role for site in report}["model.norm"] == "final"
    assert not [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    converted = _layers_of(model, DynamicTanh)
    assert set(converted) == set(rms)
    for name, layer in converted.items():
        assert layer.bias is None
        assert torch.equal(layer.weight.detach(), saved[name])
    with torch.no_grad():
        after = model(input_ids=input_ids).logits
    assert after.shape == before.shape == (2, 8, 100)
    assert after.isfinite().all()
    assert not torch.allclose(after, before)


def test_conversion_errors_are_project_errors() -> None:
    assert issubclass(ConversionError, DytDeployError)
    assert issubclass(UnknownNameError, DytDeployError)
