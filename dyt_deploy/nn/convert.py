"""Swap the normalization layers of a model: LayerNorm/RMSNorm <-> DyT/Derf.

Converting changes the function the model computes: DyT is not a re-parameterisation of
LayerNorm. Use it to build the DyT variant of an architecture (to train, or to measure latency),
or the LayerNorm twin of a DyT model for the comparison; never to "speed up" a trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ConversionError, unknown_name
from .dyt import Derf, DynamicTanh
from .norms import create_norm, paper_alpha_init

TARGET_KINDS = ("layernorm", "rmsnorm", "dyt", "derf")
SiteAlpha = None | str | dict[str, float] | Callable[[str, nn.Module], float | None]

# Names of norm sites in pre-norm decoders of common code bases (ours, Hugging Face, GPT-2, fms).
_ATTENTION_SITES = {"input_layernorm", "attn_norm", "attention_norm", "ln_1", "ln", "norm1", "self_attn_layer_norm"}
_FFN_SITES = {"post_attention_layernorm", "ffn_norm", "ln_2", "ff_ln", "norm2", "mlp_norm", "pre_feedforward_layernorm"}
_FINAL_SITES = {"norm", "fc_norm", "ln_f", "final_layernorm", "final_layer_norm", "dec_norm", "final_norm", "norm_f"}


@dataclass(frozen=True)
class ConvertedSite:
    """One replaced layer: its dotted name, the class names before and after, and alpha's init."""

    name: str
    old_type: str
    new_type: str
    alpha_init: float | None
    role: str | None = None
    note: str = ""


@dataclass
class ConversionReport:
    """Every site ``convert_norms`` replaced, in model order."""

    to: str
    sites: list[ConvertedSite] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[ConvertedSite]:
        return iter(self.sites)

    def as_dicts(self) -> list[dict]:
        return [asdict(site) for site in self.sites]

    def table(self) -> str:
        """A plain-text table, one line per site."""
        lines = [f"{'site':40} {'from':18} {'to':14} {'alpha':>6}  role"]
        for s in self.sites:
            alpha = "" if s.alpha_init is None else f"{s.alpha_init:g}"
            lines.append(f"{s.name:40} {s.old_type:18} {s.new_type:14} {alpha:>6}  {s.role or ''} {s.note}".rstrip())
        return "\n".join(lines)


def site_role(name: str) -> str | None:
    """The decoder role of a norm site from its name: "attention", "ffn", "final", or None."""
    leaf = name.rsplit(".", 1)[-1].lower()
    if leaf in _FFN_SITES:
        return "ffn"
    if leaf in _ATTENTION_SITES:
        return "attention"
    if leaf in _FINAL_SITES:
        return "final"
    if any(key in leaf for key in ("mlp", "ffn", "feed_forward")):
        return "ffn"
    if "attn" in leaf or "attention" in leaf:
        return "attention"
    return None


def norm_kind_of(module: nn.Module) -> str | None:
    """"layernorm", "rmsnorm", "dyt" or "derf" for a convertible norm layer, else None.

    Channels-first layers count as their kind (:class:`LayerNorm2d` is "layernorm"; see
    :func:`is_channels_first`). RMSNorm-like layers of other libraries (``transformers``'
    ``LlamaRMSNorm``, ...) are recognised by duck typing: a leaf module whose class name contains
    "RMSNorm" and that holds a 1-D ``weight``. (Layers that scale by ``1 + weight``, like Gemma's,
    are not special-cased.)
    """
    if isinstance(module, DynamicTanh):
        return "dyt"
    if isinstance(module, Derf):
        return "derf"
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return "layernorm"
    if isinstance(module, nn.RMSNorm) and len(module.normalized_shape) == 1:
        return "rmsnorm"
    weight = getattr(module, "weight", None)
    looks_rms = "rmsnorm" in type(module).__name__.lower() and not list(module.children())
    if looks_rms and isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return "rmsnorm"
    return None


def is_channels_first(module: nn.Module) -> bool:
    """Whether norm layer ``module`` normalizes dim 1 of ``(N, C, H, W)`` tensors rather than the last dim.

    Read from a ``channels_last`` attribute (dyt-deploy's layers, the official DynamicTanh), a
    ``data_format`` of "channels_first" (``transformers``' ConvNeXt), or a class name ending in
    "2d" (timm's ``LayerNorm2d``/``RmsNorm2d``). Anything else is channels-last.
    """
    if hasattr(module, "channels_last"):
        return not module.channels_last
    if getattr(module, "data_format", None) == "channels_first":
        return True
    return type(module).__name__.lower().endswith("2d")


def convert_norms(
    model: nn.Module,
    to: str = "dyt",
    alpha_init: float = 0.5,
    site_alpha: SiteAlpha = None,
    eps: float | None = None,
) -> ConversionReport:
    """Replace, in place, every norm layer of ``model`` by one of kind ``to``.

    Converted: ``nn.LayerNorm`` (1-D), ``nn.RMSNorm``, RMSNorm-like layers of other libraries,
    ``DynamicTanh`` and ``Derf``. The affine weight becomes gamma (``weight``) and the bias beta
    (``bias``); a source without a bias (RMSNorm) gives a DyT without ``bias``, as in the paper's
    LLaMA. Device and dtype are kept. Layers already of kind ``to`` are left alone. Channels-first
    layers (:func:`is_channels_first`) stay channels-first: a ``channels_last=False`` DyT becomes a
    :class:`~dyt_deploy.nn.LayerNorm2d` and back.

    This changes what the model computes (see the module docstring); it is not an equivalent
    rewrite.

    Args:
        to: "dyt", "derf", "layernorm" or "rmsnorm".
        alpha_init: alpha's init for DyT/Derf sites ``site_alpha`` does not set.
        site_alpha: per-site alpha init for decoders. None: ``alpha_init`` everywhere.
            "paper": the DyT paper's width-dependent values by role (``paper_alpha_init``).
            A dict ``{"attention": a, "ffn": b, "final": c}`` keyed by :func:`site_role`.
            A callable ``(name, module) -> float | None`` (None means ``alpha_init``).
        eps: eps of new LayerNorm/RMSNorm layers; default: the source's eps if it has one,
            else the layer's own default.

    Returns:
        A :class:`ConversionReport` listing every site converted.
    """
    to = to.lower()
    if to not in TARGET_KINDS:
        raise unknown_name("conversion target", to, TARGET_KINDS)
    if norm_kind_of(model) is not None:
        raise ConversionError("the model itself is a norm layer; wrap it in a container module to convert it")
    report = ConversionReport(to=to)
    replaced: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        kind = norm_kind_of(module)
        if kind is None or kind == to:
            continue
        if id(module) not in replaced:
            alpha = _alpha_for(name, module, to, alpha_init, site_alpha)
            replaced[id(module)] = _rebuild(module, kind, to, alpha, eps)
            report.sites.append(_site(name, module, replaced[id(module)], alpha))
        _set_submodule(model, name, replaced[id(module)])
    return report


def _alpha_for(name: str, module: nn.Module, to: str, default: float, site_alpha: SiteAlpha) -> float | None:
    if to not in ("dyt", "derf"):
        return None
    if site_alpha is None:
        return default
    if callable(site_alpha):
        chosen = site_alpha(name, module)
        return default if chosen is None else float(chosen)
    if site_alpha == "paper":
        table = paper_alpha_init(_width(module))
    elif isinstance(site_alpha, dict):
        table = site_alpha
    else:
        raise ConversionError(f"site_alpha must be None, 'paper', a dict or a callable, not {site_alpha!r}")
    return float(table.get(site_role(name) or "", default))


def _width(module: nn.Module) -> int:
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(tuple(shape)[-1])
    return int(module.weight.shape[-1])


def _rebuild(old: nn.Module, kind: str, to: str, alpha: float | None, eps: float | None) -> nn.Module:
    weight, bias = getattr(old, "weight", None), getattr(old, "bias", None)
    if not isinstance(bias, torch.Tensor):
        bias = None
    # A LayerNorm without affine parameters becomes a DyT with default gamma and beta.
    has_bias = bias is not None or (kind == "layernorm" and weight is None)
    kwargs: dict = {"bias": has_bias, "channels_last": not is_channels_first(old)}
    if alpha is not None:
        kwargs["alpha_init"] = alpha
    old_eps = eps if eps is not None else getattr(old, "eps", None) or getattr(old, "variance_epsilon", None)
    if old_eps is not None and to in ("layernorm", "rmsnorm"):
        kwargs["eps"] = float(old_eps)
    new = create_norm(to, _width(old), **kwargs)
    _copy_affine(new, weight, bias)
    return new.to(**_placement(old))


def _copy_affine(new: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        if weight is not None and getattr(new, "weight", None) is not None:
            new.weight.copy_(weight.reshape(new.weight.shape))
        if bias is not None and getattr(new, "bias", None) is not None:
            new.bias.copy_(bias.reshape(new.bias.shape))


def _placement(module: nn.Module) -> dict:
    tensors = list(module.parameters()) + list(module.buffers())
    floats = [t for t in tensors if t.is_floating_point()]
    if not floats:
        return {}
    return {"device": floats[0].device, "dtype": floats[0].dtype}


def _site(name: str, old: nn.Module, new: nn.Module, alpha: float | None) -> ConvertedSite:
    old_bias = isinstance(getattr(old, "bias", None), torch.Tensor)
    dropped = old_bias and getattr(new, "bias", None) is None
    note = "bias dropped (target has none)" if dropped else ""
    return ConvertedSite(name, type(old).__name__, type(new).__name__, alpha, site_role(name), note)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
