"""The variants a benchmark compares: one architecture, different norms, exported and optimized.

Variant names: ``layernorm``, ``rmsnorm``, ``dyt``, ``derf`` (the norm), and ``dyt-folded`` (DyT
with gamma/beta folded into the next linear layers by dyt-export ``--fold``). Every variant of an
architecture has the same weights outside its norm layers (same seed).

ONNX optimizers (the setting that changes the answer most on onnxruntime):
``none`` (onnxruntime's own graph optimizations only), ``ort-transformers`` (onnxruntime's
transformer optimizer: SkipLayerNormalization/Attention/BiasGelu fusions, which anchor on
LayerNorm and so help LN models more) and ``onnxscript`` (onnxscript's ``optimize_for_ort``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import save_checkpoint
from ..errors import DytDeployError, unknown_name
from ..models import create_model, get_arch

VARIANTS = {"layernorm": ("layernorm", False), "rmsnorm": ("rmsnorm", False), "dyt": ("dyt", False),
            "dyt-folded": ("dyt", True), "derf": ("derf", False)}
OPTIMIZERS = ("none", "ort-transformers", "onnxscript")
_ORT_MODEL_TYPES = {"vit": "vit", "bert": "bert", "llama": "gpt2"}


def write_checkpoints(arch: str, variants: list[str], workdir: Path, seed: int = 0, **overrides) -> dict[str, Path]:
    """One model.pt per variant (``dyt-folded`` shares ``dyt``'s)."""
    paths: dict[str, Path] = {}
    for variant in variants:
        norm, _ = VARIANTS[variant]
        path = workdir / f"{arch}-{norm}.pt"
        if not path.exists():
            save_checkpoint(create_model(arch, norm=norm, seed=seed, **overrides), path)
        paths[variant] = path
    return paths


def export_variants(checkpoints: dict[str, Path], workdir: Path, samples: int = 1) -> dict[str, Path]:
    """A verified pattern-form ONNX per variant. ``dyt-folded`` is the ``dyt`` export with gamma/beta
    folded (the same rewrite as ``dyt-export --fold``), verified on its own: one torch export serves both."""
    from ..export import export_onnx

    exported = {}
    for variant, checkpoint in checkpoints.items():
        plain = workdir / f"{checkpoint.stem}.onnx"
        if not plain.exists():
            _check_parity(variant, export_onnx(checkpoint, plain, samples=samples).parity)
        exported[variant] = plain
        if VARIANTS[variant][1]:
            exported[variant] = _folded_copy(variant, plain, checkpoint, samples)
    return exported


def _folded_copy(variant: str, plain: Path, checkpoint: Path, samples: int) -> Path:
    import onnx_ir as ir

    from ..checkpoint import load_checkpoint
    from ..export.api import save_onnx, verify_onnx
    from ..export.fold import fold_dyt_affine
    from ..export.signature import input_specs

    target = plain.with_name(f"{plain.stem}-folded.onnx")
    if not target.exists():
        model = ir.load(plain)
        fold_dyt_affine(model)
        save_onnx(model, target)
        reference = load_checkpoint(checkpoint).model
        _check_parity(variant, verify_onnx(target, reference, input_specs(reference, None, None), "fp32", samples,
                                           None, None))
    return target


def _check_parity(variant: str, parity) -> None:
    if parity is None or not parity.passed:
        raise DytDeployError(f"{variant}: the export does not match PyTorch; not benchmarking it")


def optimize(onnx_path: Path, optimizer: str, arch: str) -> tuple[Path, dict[str, int]]:
    """An optimized copy of ``onnx_path`` (beside it) and the count of fused operators by type."""
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if optimizer == "none":
        return onnx_path, {}
    target = onnx_path.with_name(f"{onnx_path.stem}.{optimizer}.onnx")
    if optimizer == "ort-transformers":
        return target, _ort_transformers(onnx_path, target, arch)
    return target, _onnxscript(onnx_path, target)


def _ort_transformers(source: Path, target: Path, arch: str) -> dict[str, int]:
    from onnxruntime.transformers import optimizer as ort_optimizer

    config = get_arch(arch).config
    family = get_arch(arch).family
    if family not in _ORT_MODEL_TYPES:
        raise DytDeployError(f"optimizer ort-transformers has no fusions for {family} models; "
                             "use onnxscript or none")
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = ort_optimizer.optimize_model(str(source), model_type=_ORT_MODEL_TYPES[family],
                                         num_heads=config.get("heads", 0), hidden_size=config.get("dim", 0),
                                         opt_level=0)
    model.save_model_to_file(str(target))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def _onnxscript(source: Path, target: Path) -> dict[str, int]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, counts = optimize_for_ort(ir.load(source))
    ir.save(model, target)
    return {k: v for k, v in counts.items() if v}
