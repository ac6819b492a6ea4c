"""``ExportConfig``: every choice of an export in one validated object.

The CLI, the Python API (``export_onnx(...)`` keywords are a thin wrapper) and the service build
one and hand it on; its checks live here and nowhere else. Errors name the field
(:class:`~dyt_deploy.errors.OptionError`); the CLI shows them as its flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import WEIGHTS
from ..errors import OptionError, choice_problem
from .forms import FORMS
from .signature import KNOWN_DYNAMIC

EXPORT_DTYPES = ("fp32", "fp16")
# what the written model computes in: fp32/fp16 as ``dtype`` says, or INT8 (``dyt_deploy.quantize``)
PRECISIONS = ("fp32", "int8")
INT8_ACTIVATIONS = ("dynamic", "static", "float")  # dyt_deploy.quantize.plan.ACTIVATIONS
# what a model folder is written for: onnxruntime (1/model.onnx) or OpenVINO (1/model.xml + model.bin, IR)
BACKENDS = ("onnxruntime", "openvino")
DEFAULT_OPSET = 20
# what the graph is for: one forward pass ("default"), or incremental decoding with past key/values
TASKS = ("default", "text-generation")
MIN_OPSET = 18  # torch.onnx's dynamo exporter emits opset 18 and newer


@dataclass(frozen=True)
class ExportConfig:
    """How to export one model.

    Attributes:
        arch: zoo architecture, for checkpoints that do not record it.
        form: DyT in ONNX: "pattern", "function" or "plugin" (see ``dyt_deploy.export.forms``).
        opset: ONNX opset of the graph.
        dynamic: dims left symbolic ("batch", "seq"); None: all the model has; (): a static model.
        input_shapes: ``NAME=d0,d1,...[:dtype]`` per input, for models outside the zoo.
        dtype: "fp32" or "fp16" (LayerNorm/RMSNorm compute in fp32 inside an fp16 model).
        fold: fold DyT gamma/beta into the linear layers that consume them where possible.
        atol, rtol: verification tolerances; None: per dtype (``parity.DEFAULT_TOLERANCES``).
        samples: verification inputs; sample 0 has the export's shape, the others other shapes.
        verify: run the ONNX model in onnxruntime (CPU) against PyTorch before writing it.
        repository, name, family: write a Triton-layout model folder ``repository/name`` (name
            default ``<arch>-<norm>``; family default the architecture) instead of one file.
        force: replace an existing output.
        trust_pickle: allow model.pt files holding pickled Python objects (runs code from them).
        weights: which weights of a training checkpoint: "model" or "ema"; None: the EMA weights
            when the checkpoint has them, else the model's.
        backend: the runtime a model folder is written for: "onnxruntime" (default: ``1/model.onnx``,
            platform onnxruntime_onnx) or "openvino" (``1/model.xml`` + ``model.bin``, OpenVINO IR
            converted from the verified ONNX and verified itself; Triton's ``backend: "openvino"``).
            OpenVINO needs ``repository``, fp32 (its inference precision is a runtime choice) and a
            form it can read (pattern or function).
        task: "default" (one forward pass, the model's own inputs) or "text-generation" (a zoo
            decoder with past key/values, verified by greedy decoding; see ``export.decoder``).
        precision: "fp32" (default: the model as ``dtype`` says) or "int8": the exported fp32 model,
            DyT folded, quantized by ``dyt_deploy.quantize`` (QDQ, DyT-fed inputs at the scale the
            graph gives, no data) and judged by the INT8 verdict; a folder's default name gets
            ``-int8`` (``ARCH-NORM-int8``), beside the fp32 one. Needs dtype fp32, the pattern form
            and task default.
        activations: int8 only: the inputs the DyT math does not bound, "dynamic" (default, no
            data), "static" (ranges from ``calibration``, a .npz of model inputs) or "float".
    """

    arch: str | None = None
    form: str = "pattern"
    opset: int = DEFAULT_OPSET
    dynamic: tuple[str, ...] | None = None
    input_shapes: tuple[str, ...] | None = None
    dtype: str = "fp32"
    fold: bool = False
    atol: float | None = None
    rtol: float | None = None
    samples: int = 3
    verify: bool = True
    repository: Path | None = None
    name: str | None = None
    family: str | None = None
    force: bool = False
    trust_pickle: bool = False
    weights: str | None = None
    backend: str = "onnxruntime"
    task: str = "default"
    precision: str = "fp32"
    activations: str = "dynamic"
    calibration: Path | None = None

    def __post_init__(self) -> None:
        if self.input_shapes is not None:
            object.__setattr__(self, "input_shapes", tuple(self.input_shapes) or None)
        if self.dynamic is not None:
            object.__setattr__(self, "dynamic", tuple(self.dynamic))
        if self.repository is not None:
            object.__setattr__(self, "repository", Path(self.repository))
        problems = self.problems()
        if problems:
            raise OptionError(problems)

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field as ``(field, what is wrong)``; all of them, not the first."""
        found = []
        found += choice_problem("form", self.form, FORMS)
        found += choice_problem("dtype", self.dtype, EXPORT_DTYPES)
        if self.samples < 1:
            found.append(("samples", f"verification needs at least 1 sample, not {self.samples}"))
        if self.opset < MIN_OPSET:
            found.append(("opset", f"opset {self.opset} is too old; the exporter writes opset {MIN_OPSET} or newer"))
        unknown = [d for d in self.dynamic or () if d not in KNOWN_DYNAMIC]
        if unknown:
            found.append(("dynamic", f"unknown dynamic dims {', '.join(unknown)}; known: {', '.join(KNOWN_DYNAMIC)}"))
        for field in ("atol", "rtol"):
            value = getattr(self, field)
            if value is not None and not value >= 0:
                found.append((field, f"{field} must be a non-negative number, not {value}"))
        if self.weights is not None:
            found += choice_problem("weights", self.weights, WEIGHTS)
        found += self._backend_problems() + self._task_problems() + self._precision_problems()
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            found.append(("name", f"model folder name {self.name!r} must be a plain folder name"))
        return found

    def _precision_problems(self) -> list[tuple[str, str]]:
        if self.precision not in PRECISIONS:
            return choice_problem("precision", self.precision, PRECISIONS)
        found = choice_problem("activations", self.activations, INT8_ACTIVATIONS)
        if self.precision == "fp32":
            if self.activations != "dynamic" or self.calibration is not None:
                found.append(("activations", "--activations and --calibration are for --precision int8"))
            return found
        for field, wrong, why in (("dtype", self.dtype != "fp32", "int8 starts from an fp32 export (not fp16)"),
                                  ("form", self.form != "pattern", "int8 writes the pattern form"),
                                  ("task", self.task != "default", "int8 takes task default")):
            if wrong:
                found.append((field, why))
        if (self.activations == "static") != (self.calibration is not None):
            found.append(("calibration", "--activations static takes --calibration FILE.npz (and only it does)"))
        return found

    def _task_problems(self) -> list[tuple[str, str]]:
        if self.task not in TASKS:
            return choice_problem("task", self.task, TASKS)
        if self.task == "default":
            return []
        found = []
        if self.backend != "onnxruntime":
            found.append(("backend", "task text-generation writes ONNX for onnxruntime (and onnxruntime-genai)"))
        if self.input_shapes or self.dynamic is not None:
            found.append(("dynamic", "task text-generation fixes its inputs (batch, sequence and past are dynamic)"))
        return found

    def _backend_problems(self) -> list[tuple[str, str]]:
        if self.backend not in BACKENDS:
            return choice_problem("backend", self.backend, BACKENDS)
        if self.backend != "openvino":
            return []
        found = []
        if self.repository is None:
            found.append(("backend", "backend openvino writes a model folder: pass a repository"))
        if self.form == "plugin":
            found.append(("form", "OpenVINO cannot run the plugin form (TensorRT only); use pattern or function"))
        if self.dtype != "fp32":
            found.append(("dtype", "backend openvino takes fp32 models (bf16/fp16 are OpenVINO runtime precisions)"))
        return found
