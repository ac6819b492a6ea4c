"""onnxruntime runner: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import MissingBackendError, Runner, RunnerError, Timer

# short name -> onnxruntime execution providers, in preference order
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
OPT_LEVELS = ("disable", "basic", "extended", "all")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingBackendError("onnxruntime is not installed: pip install onnxruntime "
                                  "(or the gpu extra: pip install 'dyt-deploy[gpu]')") from None
    return onnxruntime


# onnxruntime rewrites MatMul + bias Add into Gemm before its QDQ fusions run, and a DQ -> Gemm then
# stays unfused (slower than fp32) or, for int8 3-D inputs, fails at session creation: INT8 (QDQ)
# models run without that rewrite, so their DQ -> MatMul fuse into MatMulIntegerToFloat.
QDQ_DISABLED_OPTIMIZERS = ["MatMulAddFusion"]


def _disabled_optimizers(path: Path) -> list[str]:
    """The graph rewrites to turn off for the model at ``path``: :data:`QDQ_DISABLED_OPTIMIZERS` for a
    QDQ model (one with DequantizeLinear nodes), none otherwise."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # onnxruntime reports an unreadable file itself, in its own words
        return []
    return list(QDQ_DISABLED_OPTIMIZERS) if any(n.op_type == "DequantizeLinear" for n in graph.node) else []


class OnnxRuntimeRunner(Runner):
    """Runs an .onnx file in onnxruntime.

    Args:
        provider: "cpu", "cuda" or "tensorrt" (the GPU ones need the ``gpu`` extra, which replaces
            the ``onnxruntime`` package with ``onnxruntime-gpu``).
        opt_level: graph optimisation level: "disable", "basic", "extended" or "all" (default).
        threads: intra-op threads (0: onnxruntime's default, one per core).
        profile: write an onnxruntime profile (``end_profiling()`` returns its path).
        spin: let idle intra-op threads spin (onnxruntime's default; lowest latency for one
            session alone). Turn it off when several sessions take turns on the same cores, as
            in a benchmark or a server with several models: spinning threads of one session
            steal the cores the next one needs.

    On GPU providers inputs and outputs go through IOBinding, so ``last_inference_time`` times
    ``run_with_iobinding`` alone and not the host<->device copies.
    """

    def __init__(self, path: str | Path, provider: str = "cpu", opt_level: str = "all", threads: int = 0,
                 profile: bool = False, spin: bool = True) -> None:
        super().__init__()
        if provider not in PROVIDERS:
            raise RunnerError(f"unknown onnxruntime provider {provider!r}; known: {', '.join(PROVIDERS)}")
        if opt_level not in OPT_LEVELS:
            raise RunnerError(f"unknown opt_level {opt_level!r}; known: {', '.join(OPT_LEVELS)}")
        self.name = "ort" if provider == "cpu" else f"ort-{provider}"
        self.path, self.provider, self.opt_level = Path(path), provider, opt_level
        self.threads, self.profile, self.spin = threads, profile, spin
        self.session: Any = None

    def _activate(self) -> None:
        ort = _import_ort()
        wanted = PROVIDERS[self.provider]
        if wanted[0] not in ort.get_available_providers():
            raise MissingBackendError(
                f"{self.name}: onnxruntime has no {wanted[0]} here (available: "
                f"{', '.join(ort.get_available_providers())}); install the gpu extra on an NVIDIA host"
            )
        if not self.path.is_file():
            raise RunnerError(f"{self.path}: no such ONNX file")
        self.session = ort.InferenceSession(str(self.path), self._options(ort), providers=wanted,
                                            disabled_optimizers=_disabled_optimizers(self.path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.opt_level]
        options.intra_op_num_threads = self.threads
        options.enable_profiling = self.profile
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name}: feed lacks input(s) {', '.join(missing)}")
        feed = {n: np.ascontiguousarray(feed[n]) for n in self.input_names}
        if self.provider == "cpu":
            with Timer() as timer:
                outputs = self.session.run(self.output_names, feed)
        else:
            outputs, timer = self._run_bound(feed)
        self.last_inference_time = timer.seconds
        return dict(zip(self.output_names, outputs, strict=True))

    def _run_bound(self, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray], Timer]:
        """GPU path: copy inputs to the device first, then time the run alone."""
        ort = _import_ort()
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        binding.synchronize_inputs()
        with Timer() as timer:
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return binding.copy_outputs_to_cpu(), timer

    def end_profiling(self) -> str:
        """Stop profiling and return the Chrome-trace JSON path (``profile=True`` only)."""
        return self.session.end_profiling()

    def _deactivate(self) -> None:
        self.session = None
