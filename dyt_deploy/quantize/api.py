"""``quantize_model``: a checkpoint (anything dyt-export reads) or an fp32 .onnx -> a verified INT8 model.

Steps: the fp32 ONNX (exported, and DyT folded unless told not to), the plan (``quantize.plan``:
DyT-fed inputs at the scale the graph gives, the rest as ``--activations`` says), the calibration
file checked against the model's inputs, the QDQ passes (``quantize.qdq``), the INT8 verdict
(``quantize.verify``) in onnxruntime (and OpenVINO for an OpenVINO folder), then the write: a
file (staged beside it, renamed into place) or a repository folder (``1/model.onnx``, or the INT8
IR ``1/model.xml`` for backend openvino) with ``dyt.json`` recording what was quantized how.
Nothing is written when anything fails.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from ..errors import DytDeployError
from ..export.config import ExportConfig
from ..export.steps import Progress, Steps
from ..repository import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    config_pbtxt,
    library_versions,
    refuse_existing,
    sha256_file,
    staged_file,
    staged_folder,
    write_manifest,
)
from . import qdq
from .calibration import load_calibration, onnx_input_specs
from .config import QuantizeOptions
from .plan import Plan, make_plan
from .sites import counts, linear_sites, name_nodes
from .source import Fp32Source, fp32_source
from .verify import Int8Verdict, verdict


class Int8VerificationFailed(DytDeployError):
    """The INT8 model failed its verdict; ``result`` holds the figures. Nothing was written."""

    def __init__(self, message: str, result: QuantizeResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class QuantizeResult:
    """What ``quantize_model`` made: where, the plan, the verdicts, the manifest."""

    path: Path
    model_dir: Path | None
    plan: Plan
    fused: dict[str, int] = field(default_factory=dict)
    verdicts: list[Int8Verdict] = field(default_factory=list)
    openvino: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    source: str = ""
    reduce_range: bool = True

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def summary(self) -> dict[str, Any]:
        """The manifest's ``quantization`` entry: counts per input kind and how each was quantized."""
        weights = "int8 symmetric, per output channel (axis 1)" + (", 7-bit range" if self.reduce_range else "")
        return {"precision": "int8", "format": "QDQ", "weights": weights,
                "activations": self.plan.activations, "needs_data": self.plan.needs_data,
                "linear_inputs": counts(self.plan.sites), "how": self.plan.table(),
                "fixed_scales": sorted({round(s.scale, 8) for s in self.plan.fixed_sites()}),
                "notes": self.plan.notes, "onnxruntime_kernels": self.fused, "openvino": self.openvino,
                "verdicts": [v.to_dict() for v in self.verdicts]}


def quantize_model(model_path: str | Path, output: str | Path | None = None, export: ExportConfig | None = None,
                   options: QuantizeOptions | None = None, progress: Progress | None = None) -> QuantizeResult:
    """Quantize ``model_path`` to INT8 as ``options`` say, verify, then write ``output`` (default:
    beside the model, ``.int8.onnx``) or, with ``export.repository``, a model folder (default name
    ``ARCH-NORM-int8``).

    Raises:
        Int8VerificationFailed: the verdict failed; nothing is written.
        DytDeployError: bad input of any kind (a calibration file that does not fit the model, a
            LayerNorm model with no way to range its post-norm inputs, ...); nothing is written.
    """
    started = time.perf_counter()
    export = export or ExportConfig()
    options = options or QuantizeOptions()
    steps = Steps(progress)
    if export.repository is None or export.name is not None:
        refuse_existing(_target(Path(model_path), output, export, None)[0], export.force)
    with tempfile.TemporaryDirectory(prefix="dyt-quantize-") as tmp:
        work = Path(tmp)
        source = fp32_source(Path(model_path), export, options.fold, work, steps)
        target, model_dir = _target(Path(model_path), output, export, source)
        refuse_existing(target, export.force)
        model = onnx.load(str(source.onnx))
        name_nodes(model)
        onnx.save(model, str(source.onnx))
        specs = onnx_input_specs(model)
        calibration = None
        if options.calibration is not None:
            with steps(f"check the calibration file {options.calibration.name}"):
                calibration = load_calibration(options.calibration, specs)
        plan = make_plan(linear_sites(model), options.activations, calibration is not None)
        static, final = work / "static.onnx", work / "int8.onnx"
        with steps("quantize (onnxruntime QDQ, per-channel int8 weights)"):
            if not qdq.quantize_static_part(source.onnx, static, plan, calibration, options.reduce_range):
                shutil.copyfile(source.onnx, static)
            if not qdq.quantize_dynamic_part(static, final, plan, options.reduce_range):
                shutil.copyfile(static, final)
        result = QuantizeResult(target, model_dir, plan, qdq.fused_int8_ops(final), source=source.label,
                                reduce_range=options.reduce_range)
        data = options.data or source.test_data
        if options.verify:
            with steps("verify INT8 in onnxruntime against the fp32 reference"):
                result.verdicts.append(_verdict("onnxruntime", final, "ort", source, specs, data, options))
        artifacts = {"1/model.onnx": final}
        if export.backend == "openvino":
            artifacts = _openvino_artifacts(static, work, plan, source, specs, data, options, steps, result)
        if not result.passed:
            problems = "; ".join(f"{v.runtime}: {', '.join(v.problems)}" for v in result.verdicts if not v.passed)
            raise Int8VerificationFailed(f"{model_path}: the INT8 model fails its verdict ({problems})", result)
        result.seconds = time.perf_counter() - started
        result.manifest = _manifest(source, result, export, artifacts, model)
        _write(result, artifacts, export)
    return result


def _verdict(runtime: str, path: Path, kind: str, source: Fp32Source, specs, data: Path | None,
             options: QuantizeOptions) -> Int8Verdict:
    from ..runners import create_runner

    with create_runner(kind, path) as runner:
        return verdict(runtime, runner.infer, source.reference, specs, options.samples, data, options.min_cosine,
                       options.min_agreement, options.max_accuracy_drop)


def _openvino_artifacts(static: Path, work: Path, plan: Plan, source: Fp32Source, specs, data: Path | None,
                        options: QuantizeOptions, steps: Steps, result: QuantizeResult) -> dict[str, Path]:
    from .openvino import runtime_report, write_ir

    xml = work / "ir" / "model.xml"
    with steps("write the OpenVINO INT8 IR"):
        done = write_ir(static, xml, compress_rest=bool(plan.nodes("dynamic")))
    result.openvino = {**done, **runtime_report(xml)}
    if options.verify:
        with steps("verify the INT8 IR in OpenVINO against the fp32 reference"):
            result.verdicts.append(_verdict("openvino", xml, "openvino", source, specs, data, options))
    return {"1/model.xml": xml, "1/model.bin": xml.with_suffix(".bin")}


def _target(model_path: Path, output: str | Path | None, export: ExportConfig,
            source: Fp32Source | None) -> tuple[Path, Path | None]:
    """(the file or folder written, the model folder or None)."""
    if export.repository is None:
        if output is not None:
            return Path(output), None
        stem = model_path.name if model_path.is_dir() else model_path.stem
        return model_path.with_name(f"{stem}.int8.onnx"), None
    name = export.name or (f"{source.arch}-{source.norm}-int8" if source is not None and source.arch
                           else f"{model_path.stem}-int8")
    folder = Path(export.repository) / name
    return folder, folder


def _write(result: QuantizeResult, artifacts: dict[str, Path], export: ExportConfig) -> None:
    if result.model_dir is None:
        with staged_file(result.path, export.force) as stage:
            shutil.copyfile(artifacts["1/model.onnx"], stage / result.path.name)
        return
    with staged_folder(result.model_dir, export.force) as stage:
        for name, path in artifacts.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, stage / name)
        manifest = result.manifest
        where = {"platform": None, "backend": "openvino"} if export.backend == "openvino" else {}
        (stage / "config.pbtxt").write_text(config_pbtxt(result.model_dir.name, manifest["inputs"],
                                                         manifest["outputs"], **where))
        write_manifest(stage, manifest)


def _signature(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def describe(value: onnx.ValueInfoProto) -> dict:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": shape}

    initializers = {i.name for i in model.graph.initializer}
    return ([describe(v) for v in model.graph.input if v.name not in initializers],
            [describe(v) for v in model.graph.output])


def _manifest(source: Fp32Source, result: QuantizeResult, export: ExportConfig, artifacts: dict[str, Path],
              model: onnx.ModelProto) -> dict[str, Any]:
    """dyt.json: the export manifest's fields (inputs fp32: QDQ models take float) plus ``quantization``."""
    inputs, outputs = _signature(model)
    name = result.model_dir.name if result.model_dir else result.path.stem
    ort_verdict = next((v for v in result.verdicts if v.runtime == "onnxruntime"), None)
    served = next((v for v in result.verdicts if v.runtime == "openvino"), ort_verdict) \
        if export.backend == "openvino" else ort_verdict
    return {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "name": name,
        "family": export.family or (f"{source.arch}-int8" if source.arch else "model-int8"),
        "arch": source.arch, "config": source.config, "norm": source.norm, "form": "pattern",
        "dyt_sites": {}, "folded": source.fold, "opset": export.opset, "dtype": "fp32", "precision": "int8",
        "inputs": inputs, "outputs": outputs,
        "source": {"path": str(source.path.resolve()), "format": source.format,
                   "sha256": sha256_file(source.path), "weights": source.weights},
        "backend": export.backend,
        "parity": None if served is None else served.parity.to_dict(),
        "quantization": result.summary(),
        "versions": library_versions(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_seconds": round(result.seconds, 3),
        "artifacts": {n: sha256_file(p) for n, p in artifacts.items()},
    }
