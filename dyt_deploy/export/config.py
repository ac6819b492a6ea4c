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
        found += self._backend_problems() + self._task_problems()
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            found.append(("name", f"model folder name {self.name!r} must be a plain folder name"))
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
