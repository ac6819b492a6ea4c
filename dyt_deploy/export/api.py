"""``export_onnx``: model.pt -> verified ONNX (a file, or a model folder of a repository)."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from ..checkpoint import LoadedModel, load_checkpoint, source_label
from ..dtypes import torch_dtype
from ..errors import DytDeployError, first_line
from ..feeds import random_feed, random_tensors
from ..parity import ParityReport, default_tolerances
from ..repository import (
    config_pbtxt,
    library_versions,
    refuse_existing,
    sha256_file,
    staged_file,
    staged_folder,
    write_manifest,
)
from ..specs import TensorSpec
from . import signature as sig
from .config import DEFAULT_OPSET, ExportConfig
from .fold import fold_dyt_affine
from .forms import site_counts, to_form
from .steps import (
    ExportError,
    ExportResult,
    Progress,
    Steps,
    VerificationFailed,
    guess_norm,
    prepare_for_dtype,
    save_onnx,
)


def export_onnx(
    model_path: str | Path,
    output: str | Path | None = None,
    *,
    arch: str | None = None,
    form: str = "pattern",
    opset: int = DEFAULT_OPSET,
    dynamic: tuple[str, ...] | None = None,
    input_shapes: list[str] | None = None,
    dtype: str = "fp32",
    fold: bool = False,
    atol: float | None = None,
    rtol: float | None = None,
    samples: int = 3,
    verify: bool = True,
    repository: str | Path | None = None,
    name: str | None = None,
    family: str | None = None,
    force: bool = False,
    trust_pickle: bool = False,
    weights: str | None = None,
    backend: str = "onnxruntime",
    task: str = "default",
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model_path`` to ONNX with DyT in ``form``, verify it against PyTorch, then write it.

    The keywords are :class:`ExportConfig`'s fields (see there what each means and defaults to);
    this is :func:`export_model` with the config built from them. ``output``: the .onnx file to
    write (default: beside the model, ``.onnx`` suffix); ignored with ``repository``.
    """
    config = ExportConfig(arch=arch, form=form, opset=opset, dynamic=dynamic, input_shapes=input_shapes,
                          dtype=dtype, fold=fold, atol=atol, rtol=rtol, samples=samples, verify=verify,
                          repository=repository, name=name, family=family, force=force, trust_pickle=trust_pickle,
                          weights=weights, backend=backend, task=task)
    return export_model(model_path, output, config, progress)


def export_model(model_path: str | Path, output: str | Path | None = None, config: ExportConfig | None = None,
                 progress: Progress | None = None) -> ExportResult:
    """Export ``model_path`` as ``config`` says (default: ``ExportConfig()``), verify, then write.

    ``config.precision`` "int8" is :func:`dyt_deploy.quantize.quantize_model`'s (above this layer).

    Raises:
        VerificationFailed: outputs out of tolerance; nothing is written.
        DytDeployError: bad input of any kind; nothing is written.
    """
    started = time.perf_counter()
    config = config or ExportConfig()
    if config.precision == "int8":  # quantize sits above export (it exports the fp32 model first)
        raise DytDeployError("export_model writes fp32/fp16 models; for precision int8 call "
                             "dyt_deploy.quantize.quantize_model(model, output, config), as dyt-export --precision "
                             "int8 does")
    if config.task == "text-generation":
        from .decoder import export_decoder

        return export_decoder(model_path, output, config, progress)
    steps = Steps(progress)
    if config.repository is None or config.name is not None:  # the target is known before loading: fail fast
        early_dir, early_file = _targets(None, model_path, output, config)
        refuse_existing(early_dir or early_file, config.force)
    with steps(f"load {source_label(model_path)}"):
        loaded = load_checkpoint(model_path, arch=config.arch, trust_pickle=config.trust_pickle,
                                 weights=config.weights)
    target_dir, onnx_path = _targets(loaded, model_path, output, config)
    refuse_existing(target_dir or onnx_path, config.force)
    specs = sig.input_specs(loaded.model, list(config.input_shapes or []), config.dynamic)
    with steps(f"export to ONNX (opset {config.opset}, {config.dtype})"):
        onnx_model = torch_to_onnx(loaded.model, specs, config.dtype, config.opset)
    fold_report = None
    if config.fold:
        with steps("fold DyT gamma/beta into linear layers"):
            fold_report = fold_dyt_affine(onnx_model)
    with steps(f"rewrite DyT into the {config.form} form"):
        counts = site_counts(onnx_model, config.form, to_form(onnx_model, config.form))
    result = ExportResult(onnx_path, target_dir, config.form, dict(counts), fold_report, None, weights=loaded.weights,
                          backend=config.backend)
    stager = staged_folder(target_dir, config.force) if target_dir else staged_file(onnx_path, config.force)
    with stager as stage:
        staged_onnx = stage / "1" / "model.onnx" if target_dir else stage / onnx_path.name
        with steps("save ONNX"):
            save_onnx(onnx_model, staged_onnx)
        if config.verify and config.form != "plugin":
            with steps(f"verify against PyTorch ({config.samples} samples, onnxruntime CPU)"):
                result.parity = verify_onnx(staged_onnx, loaded.model, specs, config.dtype, config.samples,
                                            config.atol, config.rtol)
        if result.parity is not None and not result.parity.passed:
            raise VerificationFailed(f"{model_path}: ONNX outputs differ from PyTorch beyond tolerance", result)
        artifacts = {"1/model.onnx": staged_onnx}
        if config.backend == "openvino":
            artifacts = _to_openvino(staged_onnx, loaded.model, specs, config, steps, result)
            if result.ir_parity is not None and not result.ir_parity.passed:
                raise VerificationFailed(f"{model_path}: OpenVINO IR outputs differ from PyTorch beyond tolerance",
                                         result)
        result.seconds = time.perf_counter() - started
        result.manifest = build_manifest(loaded, onnx_model, result, config, target_dir, artifacts)
        if target_dir is not None:
            _write_model_folder(stage, target_dir.name, onnx_model, result.manifest, config.backend)
    return result


def _to_openvino(staged_onnx: Path, reference: nn.Module, specs: list[TensorSpec], config: ExportConfig,
                 steps: Steps, result: ExportResult) -> dict[str, Path]:
    """Convert the verified ONNX beside it into OpenVINO IR (``model.xml`` + ``model.bin``, fp32
    weights), remove the ONNX, and verify the IR in OpenVINO against PyTorch; the IR's files."""
    from ..runners.openvino_runner import convert_onnx_to_ir

    xml = staged_onnx.with_name("model.xml")
    with steps("convert to OpenVINO IR"):
        convert_onnx_to_ir(staged_onnx, xml)
    for onnx_file in (staged_onnx, staged_onnx.with_name(staged_onnx.name + ".data")):
        onnx_file.unlink(missing_ok=True)
    result.ir_path = result.model_dir / "1" / xml.name if result.model_dir else xml
    if config.verify:
        with steps(f"verify the IR against PyTorch ({config.samples} samples, OpenVINO CPU)"):
            result.ir_parity = verify_onnx(xml, reference, specs, config.dtype, config.samples, config.atol,
                                           config.rtol, kind="openvino")
    return {"1/model.xml": xml, "1/model.bin": xml.with_suffix(".bin")}


def _targets(loaded: LoadedModel | None, model_path: str | Path, output: str | Path | None,
             config: ExportConfig) -> tuple[Path | None, Path]:
    repository, name = config.repository, config.name
    if repository is None:
        return None, Path(output) if output else _default_onnx_path(Path(model_path))
    if name is None:
        name = f"{loaded.arch}-{loaded.norm}" if loaded is not None and loaded.arch else Path(model_path).stem
    model_dir = Path(repository) / name
    return model_dir, model_dir / "1" / "model.onnx"


def _default_onnx_path(model_path: Path) -> Path:
    """Beside the model: ``model.pt`` -> ``model.onnx``; a folder ``Qwen2.5-0.5B`` -> ``Qwen2.5-0.5B.onnx``."""
    return model_path.with_name(model_path.name + ".onnx") if model_path.is_dir() else model_path.with_suffix(".onnx")


def example_feed(specs: list[TensorSpec], sizes: dict[str, int], seed: int, dtype: str) -> list[torch.Tensor]:
    """Seeded inputs for ``specs`` at ``sizes``; float inputs in the export dtype."""
    return [_cast(t, dtype) for t in random_tensors(specs, sizes, seed).values()]


def torch_to_onnx(model: nn.Module, specs: list[TensorSpec], dtype: str, opset: int) -> ir.Model:
    """``model`` captured by torch.onnx.export (dynamo) with inputs ``specs``, in memory, pattern form.

    The dims ``specs`` name stay symbolic; ``dtype`` "fp16" exports an fp16 copy with fp32 LayerNorm/RMSNorm.
    """
    module = prepare_for_dtype(model, dtype)
    args = tuple(example_feed(specs, sig.EXPORT_SIZES, 0, dtype))
    try:
        with torch.no_grad():
            outputs = module(*args)
    except Exception as err:  # the model's own error on inputs it cannot take (a shape, a dtype)
        shapes = ", ".join(f"{s.name}={tuple(a.shape)}" for s, a in zip(specs, args, strict=True))
        raise ExportError(f"the model failed on example inputs {shapes}: {first_line(err)}. "
                          "Check --input-shape") from None
    count = len(sig.flatten_outputs(outputs))
    dynamic_shapes = tuple(spec.dynamic_dims or None for spec in specs)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=[s.name for s in specs],
                output_names=sig.output_names(model, count), opset_version=opset, verbose=False, optimize=True,
            )
    except Exception as err:  # torch.export raises many types; all mean "could not capture"
        raise ExportError(f"torch.onnx.export failed: {first_line(err)}. Check --input-shape and --dynamic") from None
    return program.model


def verify_onnx(onnx_path: Path, reference: nn.Module, specs: list[TensorSpec], dtype: str, samples: int,
                atol: float | None, rtol: float | None, kind: str = "ort") -> ParityReport:
    """Run the model file in a runner of ``kind`` (default: onnxruntime CPU; "openvino" also takes
    IR .xml) and PyTorch (fp32) on ``samples`` seeded inputs."""
    from ..runners import create_runner

    report = ParityReport(*default_tolerances(dtype, atol, rtol))
    with create_runner(kind, onnx_path) as runner:
        for index in range(samples):
            feed = example_feed(specs, sig.sample_sizes(index, specs), seed=index, dtype="fp32")
            onnx_feed = {s.name: _cast(t, dtype).numpy() for s, t in zip(specs, feed, strict=True)}
            try:
                with torch.no_grad():
                    expected = [t.float().numpy() for t in sig.flatten_outputs(reference(*feed))]
                got = runner.infer(onnx_feed)
            except Exception as err:  # the model (either side) cannot take this verification shape
                shapes = ", ".join(f"{k}={v.shape}" for k, v in onnx_feed.items())
                raise ExportError(f"verification sample {index} ({shapes}) failed to run: {first_line(err)}. "
                                  "If the model only takes some sizes, fix them with --dynamic") from None
            report.add_sample(dict(zip(got, expected, strict=False)),
                              {n: np.asarray(g, dtype=np.float32) for n, g in got.items()},
                              {k: v.shape for k, v in onnx_feed.items()})
    return report


def _cast(t: torch.Tensor, dtype: str) -> torch.Tensor:
    return t.to(torch_dtype(dtype)) if t.is_floating_point() else t


def build_manifest(loaded: LoadedModel, onnx_model: ir.Model, result: ExportResult, config: ExportConfig,
                   target_dir: Path | None, artifacts: dict[str, Path]) -> dict[str, Any]:
    """The dyt.json content (see DESIGN.md: model repository). ``artifacts``: the folder's model
    files by their path in the folder. ``parity`` is that of the files served (the IR for backend
    openvino, which also records the ONNX's it was converted from as ``onnx_parity``)."""
    from ..repository import MANIFEST_FORMAT, MANIFEST_VERSION

    inputs, outputs = sig.graph_signature(onnx_model)
    norm = loaded.norm or guess_norm(loaded.model)
    source = Path(loaded.path).resolve() if loaded.path else None
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "name": target_dir.name if target_dir else result.onnx_path.stem,
        "family": config.family or loaded.arch or (source.stem if source else "model"),
        "arch": loaded.arch,
        "config": loaded.config,
        "norm": norm,
        "form": result.form,
        "dyt_sites": result.form_counts,
        "folded": None if result.fold is None else vars(result.fold),
        "opset": config.opset,
        "dtype": config.dtype,
        "inputs": inputs,
        "outputs": outputs,
        "source": {"path": str(source) if source else None, "format": loaded.source_format,
                   "sha256": sha256_file(source) if source else None, "weights": loaded.weights},
        "backend": config.backend,
        "parity": _to_dict(result.ir_parity if config.backend == "openvino" else result.parity),
        **({"onnx_parity": _to_dict(result.parity)} if config.backend == "openvino" else {}),
        "versions": library_versions(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(result.seconds, 3),
        "artifacts": {name: sha256_file(path) for name, path in artifacts.items()},
    }


def _to_dict(parity: ParityReport | None) -> dict[str, Any] | None:
    return None if parity is None else parity.to_dict()


def _write_model_folder(stage: Path, name: str, onnx_model: ir.Model, manifest: dict[str, Any],
                        backend: str = "onnxruntime") -> None:
    """config.pbtxt (platform onnxruntime_onnx, or Triton's ``backend: "openvino"``) and dyt.json."""
    inputs, outputs = sig.graph_signature(onnx_model)
    where = {"platform": None, "backend": "openvino"} if backend == "openvino" else {}
    (stage / "config.pbtxt").write_text(config_pbtxt(name, inputs, outputs, **where))
    write_manifest(stage, manifest)


@dataclass
class FormConversion:
    """What ``convert_form_file`` did: forms before/after, DyT sites per overload, output drift."""

    source: Path
    output: Path
    before: str
    after: str
    counts: dict[str, int]
    max_abs_diff: float | None


def convert_form_file(source: str | Path, output: str | Path | None, form: str, *, force: bool = False,
                      check: bool = True) -> FormConversion:
    """Rewrite the DyT form of an existing ONNX file (``output`` default: in place, needs ``force``).

    With ``check``, both files run in onnxruntime on the same seeded inputs and any difference in
    outputs is an error (the rewrite must not change them). Plugin-form files cannot run in
    onnxruntime, so a conversion from or to ``plugin`` is not checked.
    """
    from .forms import current_form

    source = Path(source)
    output = Path(output) if output else source
    if not source.is_file():
        raise DytDeployError(f"{source}: no such file; pass an .onnx file")
    try:
        model = ir.load(source)
    except Exception as err:  # protobuf and IR errors: the file is not ONNX
        raise DytDeployError(f"{source}: not a readable ONNX model ({err})") from None
    if output.exists() and not force:
        raise DytDeployError(f"{output} exists; pass -o OUT for a new file, or --force to replace it")
    before = current_form(model)
    counts = dict(to_form(model, form))
    with staged_file(output, force=True) as stage:
        save_onnx(model, stage / output.name)
        diff = None
        if check and "plugin" not in (before, form):
            diff = _max_output_diff(source, stage / output.name)
            if diff > 1e-5:
                raise DytDeployError(f"the {form} form changed the outputs (max abs diff {diff:.3g}); not written")
    return FormConversion(source, output, before, form, counts, diff)


def _max_output_diff(first: Path, second: Path) -> float:
    """The largest output difference of two ONNX files on one seeded feed (named dims at export sizes)."""
    from ..runners import create_runner

    inputs, _ = sig.graph_signature(ir.load(first))
    specs = [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in inputs]
    feed = random_feed(specs, sig.EXPORT_SIZES, seed=0, default_dim=2)
    outputs = []
    for path in (first, second):
        with create_runner("ort", path) as runner:
            outputs.append(runner.infer(feed))
    return max(float(np.max(np.abs(a.astype(np.float64) - outputs[1][n]))) for n, a in outputs[0].items())
