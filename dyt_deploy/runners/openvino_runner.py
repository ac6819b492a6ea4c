"""OpenVINO runner (CPU): an .onnx file read by OpenVINO's ONNX frontend, or an IR ``model.xml``.

DyT forms: the ``pattern`` form reads as is. OpenVINO's ONNX frontend does not inline ONNX local
functions in a custom domain (it reports "No conversion rule found for operations:
dyt_deploy.DynamicTanh"), so a ``function``-form file is inlined here before it is read; a
``plugin``-form file (DynamicTanh nodes without a body) is refused: only TensorRT runs it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .base import MissingBackendError, Runner, RunnerError, Timer

HINTS = ("latency", "throughput")
# precision option -> (OpenVINO element type name, the CPU capability it needs; None: every CPU has it)
PRECISIONS = {"fp32": ("f32", None), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}
DEVICE = "CPU"
_CUSTOM_DOMAIN = "dyt_deploy"  # dyt_deploy.export.forms.DOMAIN (runners may not import export)


def import_openvino() -> Any:
    """The ``openvino`` module; a missing install is a MissingBackendError naming the package."""
    try:
        import openvino
    except ImportError:
        raise MissingBackendError("openvino is not installed: pip install openvino") from None
    return openvino


def cpu_capabilities(core: Any) -> list[str]:
    """The CPU's OPTIMIZATION_CAPABILITIES as OpenVINO reports them ("FP32", "BF16", "FP16", ...)."""
    return list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def read_model(core: Any, path: str | Path) -> Any:
    """An ``ov.Model`` from ``model.xml`` (IR, with its ``model.bin``) or an .onnx file.

    A function-form ONNX file is inlined first (OpenVINO does not inline custom-domain local
    functions); a plugin-form file is refused with the way out.
    """
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"{path}: no such model file (an .onnx file or an OpenVINO model.xml)")
    if path.suffix == ".xml":
        return _wrap_read(lambda: core.read_model(str(path)), path)
    inlined = _inlined_onnx_bytes(path)
    if inlined is None:
        return _wrap_read(lambda: core.read_model(str(path)), path)
    openvino = import_openvino()
    return _wrap_read(lambda: core.read_model(inlined, openvino.Tensor(np.empty(0, np.uint8))), path)


def _wrap_read(read: Any, path: Path) -> Any:
    try:
        return read()
    except (RuntimeError, ValueError) as err:  # OpenVINO's frontends raise these with a long report
        reason = " ".join(line.strip() for line in str(err).splitlines() if "conversion rule" in line or
                          "Unsupported" in line) or str(err).strip().splitlines()[-1]
        raise RunnerError(f"{path}: OpenVINO cannot read this model ({reason})") from None


def _inlined_onnx_bytes(path: Path) -> bytes | None:
    """The ONNX model with its local functions inlined, serialized; None when it has none (read the
    file as is). DynamicTanh nodes without a function body (the plugin form) are refused."""
    import onnx
    from onnx import inliner

    header = onnx.load(str(path), load_external_data=False)
    bodies = {(f.domain, f.name) for f in header.functions}
    bare = [n for n in header.graph.node if n.domain == _CUSTOM_DOMAIN and (n.domain, n.op_type) not in bodies]
    if bare:
        raise RunnerError(f"{path}: {len(bare)} {bare[0].op_type} node(s) without a function body (the plugin "
                          "form, which only TensorRT runs); convert it for OpenVINO: dyt-form FILE --to pattern")
    if not header.functions:
        return None
    return inliner.inline_local_functions(onnx.load(str(path))).SerializeToString()


def onnx_output_names(path: Path) -> list[str] | None:
    """The graph output names of an .onnx file (None for other files)."""
    if path.suffix != ".onnx":
        return None
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def convert_onnx_to_ir(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Write OpenVINO IR (``xml_path`` and the ``.bin`` beside it) for an .onnx file with
    ``ov.convert_model`` (function form inlined first), weights kept in their precision
    (``compress_to_fp16=False``: OpenVINO's default would halve fp32 weights)."""
    openvino = import_openvino()
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if not onnx_path.is_file():
        raise RunnerError(f"{onnx_path}: no such ONNX file")
    inlined = _inlined_onnx_bytes(onnx_path)
    source = io.BytesIO(inlined) if inlined is not None else str(onnx_path)
    model = _wrap_read(lambda: openvino.convert_model(source), onnx_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


class OpenVinoRunner(Runner):
    """Runs an .onnx file or an OpenVINO IR ``model.xml`` on the CPU with OpenVINO.

    Args:
        threads: inference threads (``inference_num_threads``; 0: OpenVINO's default, every core).
        hint: performance hint, "latency" (default: one stream, the lowest time per call) or
            "throughput" (several streams, for many requests in flight).
        precision: inference precision, "fp32" (default: exact against PyTorch; OpenVINO's own
            default on a CPU with bf16 units is bf16), "bf16" or "fp16" where the CPU has them
            (its OPTIMIZATION_CAPABILITIES); elsewhere a clear error at activation.

    Output names are the ONNX graph's (an IR keeps the names it was converted with).
    """

    name = "openvino"

    def __init__(self, path: str | Path, threads: int = 0, hint: str = "latency", precision: str = "fp32") -> None:
        super().__init__()
        if hint not in HINTS:
            raise RunnerError(f"unknown OpenVINO performance hint {hint!r}; known: {', '.join(HINTS)}")
        if precision not in PRECISIONS:
            raise RunnerError(f"unknown OpenVINO precision {precision!r}; known: {', '.join(PRECISIONS)}")
        if threads < 0:
            raise RunnerError(f"threads must be 0 (OpenVINO's default) or more, not {threads}")
        self.path, self.threads, self.hint, self.precision = Path(path), threads, hint, precision
        self.compiled: Any = None
        self.request: Any = None

    def _activate(self) -> None:
        openvino = import_openvino()
        core = openvino.Core()
        config = self._compile_config(openvino, core)
        model = read_model(core, self.path)
        self.compiled = core.compile_model(model, DEVICE, config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        names = onnx_output_names(self.path) or [port.get_any_name() for port in self.compiled.outputs]
        self.output_names = names

    def _compile_config(self, openvino: Any, core: Any) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        element, capability = PRECISIONS[self.precision]
        if capability is not None and capability not in cpu_capabilities(core):
            raise MissingBackendError(f"openvino: this CPU has no {self.precision} support (capabilities: "
                                      f"{', '.join(cpu_capabilities(core))}); use precision fp32")
        mode = hints.PerformanceMode.LATENCY if self.hint == "latency" else hints.PerformanceMode.THROUGHPUT
        config = {hints.performance_mode: mode, hints.inference_precision: getattr(openvino.Type, element)}
        if self.threads:
            config[props.inference_num_threads] = self.threads
        return config

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name}: feed lacks input(s) {', '.join(missing)}")
        inputs = {n: np.ascontiguousarray(feed[n]) for n in self.input_names}
        with Timer() as timer:
            self.request.infer(inputs)
        self.last_inference_time = timer.seconds
        return {name: self.request.get_output_tensor(index).data.copy()
                for index, name in enumerate(self.output_names)}

    def _deactivate(self) -> None:
        self.request = self.compiled = None
