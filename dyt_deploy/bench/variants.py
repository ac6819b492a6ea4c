"""The variants a benchmark compares: one model with different norms, exported and optimized.

Variant names: ``layernorm``, ``rmsnorm``, ``dyt``, ``derf`` (the norm), and ``dyt-folded`` (DyT
with gamma/beta folded into the next linear layers by dyt-export ``--fold``). Every variant has the
same weights outside its norm layers:

- for a zoo architecture, each variant is built from the same seed (:func:`zoo_variants`);
- for the user's own model (a model.pt, an official training checkpoint, a Hugging Face folder),
  its own norm kind is the model as loaded, and the others are *twins*: copies whose norm layers
  :func:`~dyt_deploy.nn.convert_norms` replaced, every other weight shared (:func:`model_variants`).

ONNX optimizers (the setting that changes the answer most on onnxruntime):
``none`` (onnxruntime's own graph optimizations only), ``ort-transformers`` (onnxruntime's
transformer optimizer: SkipLayerNormalization/Attention/BiasGelu fusions, which anchor on
LayerNorm and so help LN models more; only for model types it knows) and ``onnxscript``
(onnxscript's ``optimize_for_ort``).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import DytDeployError, unknown_name
from ..models import create_model, get_arch
from ..nn.convert import convert_norms, norm_kind_of
from ..parity import ParityReport
from ..specs import TensorSpec

VARIANTS = {"layernorm": ("layernorm", False), "rmsnorm": ("rmsnorm", False), "dyt": ("dyt", False),
            "dyt-folded": ("dyt", True), "derf": ("derf", False)}
OPTIMIZERS = ("none", "ort-transformers", "onnxscript")
# model families -> the model_type onnxruntime's transformer optimizer fuses
_ORT_MODEL_TYPES = {"vit": "vit", "bert": "bert", "llama": "gpt2"}
_HF_ORT_MODEL_TYPES = {"bert": "bert", "vit": "vit"}


@dataclass
class VariantSet:
    """The modules to compare, one per variant (``dyt-folded`` shares ``dyt``'s module).

    Attributes:
        models: variant -> module, in eval mode.
        specs: the inputs every variant takes (names, dims; "batch"/"seq" dims are set per shape timed).
        output_names: names of the outputs, in order.
        source: what was benchmarked: ``zoo:ARCH`` or the model's path.
        own: the user's model's own norm kind (None for the zoo, where no variant is "the model").
        made: variant -> how its module was made, for the report.
        ort_model: ``(model_type, heads, hidden)`` for onnxruntime's transformer optimizer; None when
            it has no fusions for this kind of model.
    """

    models: dict[str, nn.Module]
    specs: list[TensorSpec]
    output_names: list[str]
    source: str
    own: str | None = None
    made: dict[str, str] = field(default_factory=dict)
    ort_model: tuple[str, int, int] | None = None


def zoo_variants(arch: str, variants: list[str], seed: int = 0, **overrides) -> VariantSet:
    """The variants of zoo architecture ``arch``, each built from ``seed`` (same weights outside the norms)."""
    models: dict[str, nn.Module] = {}
    for variant in variants:
        norm, _ = VARIANTS[variant]
        shared = next((m for v, m in models.items() if VARIANTS[v][0] == norm), None)
        models[variant] = shared if shared is not None else create_model(arch, norm=norm, seed=seed, **overrides)
    first = next(iter(models.values()))
    family, config = get_arch(arch).family, first.config
    ort_type = _ORT_MODEL_TYPES.get(family)
    return VariantSet(models, first.input_specs(), [s.name for s in first.output_specs()], f"zoo:{arch}",
                      made={v: f"zoo {arch}, {VARIANTS[v][0]}, seed {seed}" for v in models},
                      ort_model=(ort_type, config.get("heads", 0), config.get("dim", 0)) if ort_type else None)


def own_norm(model: nn.Module) -> str:
    """The norm kind of ``model``: the most common convertible norm layer in it (ties: DyT first)."""
    kinds = Counter(kind for m in model.modules() if (kind := norm_kind_of(m)) is not None)
    if not kinds:
        raise DytDeployError("the model has no LayerNorm, RMSNorm or DyT layers: there is no norm to compare")
    order = ("dyt", "derf", "layernorm", "rmsnorm")
    return max(kinds, key=lambda k: (kinds[k], -order.index(k)))


def model_variants(path: str | Path, variants: list[str], *, arch: str | None = None, weights: str | None = None,
                   trust_pickle: bool = False, input_shapes: list[str] | None = None) -> VariantSet:
    """The user's model at ``path`` and its twins: one per variant, by converting its norm layers.

    The variant of the model's own norm kind is the model as loaded; every other one is a copy
    whose norms :func:`convert_norms` replaced (LayerNorm/RMSNorm weights become DyT's gamma/beta
    and back; alpha starts at 0.5). Twins are for timing: converting changes what a model computes.
    """
    from ..checkpoint import load_checkpoint
    from ..export.signature import input_specs, output_names

    loaded = load_checkpoint(path, arch=arch, weights=weights, trust_pickle=trust_pickle)
    own = own_norm(loaded.model)
    models: dict[str, nn.Module] = {}
    made: dict[str, str] = {}
    for variant in variants:
        norm, _ = VARIANTS[variant]
        shared = next((m for v, m in models.items() if VARIANTS[v][0] == norm), None)
        if shared is not None:
            models[variant], made[variant] = shared, made[next(v for v in models if models[v] is shared)]
        elif norm == own:
            models[variant], made[variant] = loaded.model, f"the model ({own})"
        else:
            twin = copy.deepcopy(loaded.model)
            sites = len(convert_norms(twin, to=norm))
            models[variant], made[variant] = twin.eval(), f"twin: {sites} {own} layers converted to {norm}"
    specs = input_specs(loaded.model, input_shapes, None)
    return VariantSet(models, specs, _output_names(loaded.model, specs, output_names), str(path), own, made,
                      _ort_model_of(loaded.model))


def _output_names(model: nn.Module, specs: list[TensorSpec], names_of) -> list[str]:
    import torch

    from ..feeds import random_tensors
    from ..models.base import flatten_outputs

    with torch.no_grad():
        count = len(flatten_outputs(model(*random_tensors(specs, {"batch": 1, "seq": 8}, 0).values())))
    return names_of(model, count)


def _ort_model_of(model: nn.Module) -> tuple[str, int, int] | None:
    config = getattr(model, "config", None)
    config = config if isinstance(config, dict) else {}
    family = getattr(model, "family", "")
    model_type = _ORT_MODEL_TYPES.get(family) or _HF_ORT_MODEL_TYPES.get(str(config.get("model_type", "")))
    if model_type is None:
        return None
    heads = config.get("heads") or config.get("num_attention_heads") or 0
    hidden = config.get("dim") or config.get("hidden_size") or 0
    return model_type, int(heads), int(hidden)


@dataclass
class ExportedVariants:
    """Verified ONNX files per variant, and the variants whose export failed parity (not timed)."""

    files: dict[str, Path]
    failed: dict[str, str] = field(default_factory=dict)


def export_variants(variant_set: VariantSet, workdir: Path, samples: int = 1) -> ExportedVariants:
    """A verified pattern-form ONNX per variant, in ``workdir``. ``dyt-folded`` is the ``dyt`` export with
    gamma/beta folded (the same rewrite as ``dyt-export --fold``), verified on its own: one torch export
    serves both. A variant whose file does not match its module within tolerance is left out, with why."""
    exported = ExportedVariants({})
    plain_files: dict[int, Path] = {}
    stem = _file_stem(variant_set.source)
    for variant, module in variant_set.models.items():
        norm, folded = VARIANTS[variant]
        try:
            if id(module) not in plain_files:
                plain_files[id(module)] = _export_verified(module, variant_set.specs, workdir / f"{stem}-{norm}.onnx",
                                                           samples)
            path = plain_files[id(module)]
            exported.files[variant] = _folded_copy(path, module, variant_set.specs, samples) if folded else path
        except DytDeployError as err:
            exported.failed[variant] = str(err)
    return exported


def _file_stem(source: str) -> str:
    return source.removeprefix("zoo:") if source.startswith("zoo:") else Path(source).stem


def _export_verified(module: nn.Module, specs: list[TensorSpec], target: Path, samples: int) -> Path:
    from ..export.api import DEFAULT_OPSET, save_onnx, torch_to_onnx, verify_onnx

    if not target.exists():
        save_onnx(torch_to_onnx(module, specs, "fp32", DEFAULT_OPSET), target)
        _check_parity(target, verify_onnx(target, module, specs, "fp32", samples, None, None))
    return target


def _folded_copy(plain: Path, module: nn.Module, specs: list[TensorSpec], samples: int) -> Path:
    import onnx_ir as ir

    from ..export.api import save_onnx, verify_onnx
    from ..export.fold import fold_dyt_affine

    target = plain.with_name(f"{plain.stem}-folded.onnx")
    if not target.exists():
        model = ir.load(plain)
        fold_dyt_affine(model)
        save_onnx(model, target)
        _check_parity(target, verify_onnx(target, module, specs, "fp32", samples, None, None))
    return target


def _check_parity(path: Path, parity: ParityReport | None) -> None:
    if parity is None or not parity.passed:
        path.unlink(missing_ok=True)
        failed = [] if parity is None else [o for o in parity.outputs.values() if not o.passed]
        detail = "; ".join(f"{o.name}: max abs {o.max_abs:.3g} {o.problem}".strip() for o in failed)
        raise DytDeployError(f"{path.name}: the export does not match PyTorch within tolerance"
                             + (f" ({detail})" if detail else "") + "; not timing it")


def optimize(onnx_path: Path, optimizer: str, ort_model: tuple[str, int, int] | None) -> tuple[Path, dict[str, int]]:
    """An optimized copy of ``onnx_path`` (beside it) and the count of fused operators by type.

    ``ort_model``: ``VariantSet.ort_model``; ``ort-transformers`` needs it.
    """
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "none":
        return onnx_path, {}
    target = onnx_path.with_name(f"{onnx_path.stem}.{optimizer}.onnx")
    if optimizer == "ort-transformers":
        if ort_model is None:
            raise DytDeployError("optimizer ort-transformers has no fusions for this kind of model; "
                                 "use onnxscript or none")
        return target, _ort_transformers(onnx_path, target, ort_model)
    return target, _onnxscript(onnx_path, target)


def _ort_transformers(source: Path, target: Path, ort_model: tuple[str, int, int]) -> dict[str, int]:
    from onnxruntime.transformers import optimizer as ort_optimizer

    model_type, heads, hidden = ort_model
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = ort_optimizer.optimize_model(str(source), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                         opt_level=0)
    model.save_model_to_file(str(target))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def _onnxscript(source: Path, target: Path) -> dict[str, int]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, counts = optimize_for_ort(ir.load(source))
    ir.save(model, target)
    return {k: v for k, v in counts.items() if v}
