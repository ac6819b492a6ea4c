"""TensorRT runner: a serialized engine (``model.plan``, built by dyt-build) on a CUDA device.

Activation checks the engine manifest first (``model.plan.json``: TensorRT version, compute
capability, ONNX sha256) and refuses an engine built elsewhere with a message saying how to
rebuild it; then it deserializes the engine and creates one execution context.

Each ``infer`` sets every input's shape (``set_input_shape``; dynamic shapes must lie inside the
engine's optimization profile), binds torch CUDA tensors by address (``set_tensor_address``),
copies the inputs to the device, and then times ``execute_async_v3`` on the runner's CUDA stream
plus that stream's synchronisation: ``last_inference_time`` excludes the host<->device copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Runner, RunnerError, Timer


class TensorRTRunner(Runner):
    """Runs a TensorRT engine.

    Args:
        plan_path: the engine (its manifest ``PLAN.json`` must sit beside it).
        onnx_path: the ONNX file the engine must have been built from (default: the one its
            manifest records, when it still exists; a changed file means a stale engine).
        device: CUDA device index (default: the current device).
    """

    name = "trt"

    def __init__(self, plan_path: str | Path, onnx_path: str | Path | None = None, device: int | None = None) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        self.device = device
        self.manifest: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def _activate(self) -> None:
        from ..tensorrt.backend import create_runtime, import_tensorrt, make_logger, require_cuda_torch
        from ..tensorrt.manifest import check_engine_file, gather_host_facts

        self._trt = import_tensorrt()
        self._torch = require_cuda_torch()
        self.manifest, _ = check_engine_file(self.plan_path, gather_host_facts(self.device), self.onnx_path)
        if self.manifest.plugin:
            from ..tensorrt.plugin import register_plugin

            register_plugin()
        self._device = self._torch.device("cuda", self.device if self.device is not None else
                                          self._torch.cuda.current_device())
        runtime = create_runtime(self._trt, make_logger(self._trt))
        self.engine = self._deserialize(runtime)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunnerError(f"{self.name}: TensorRT could not create an execution context for {self.plan_path} "
                              "(out of device memory?)")
        self._split_io_names()
        self._stream = self._torch.cuda.Stream(device=self._device)

    def _deserialize(self, runtime: Any) -> Any:
        with self._torch.cuda.device(self._device):
            engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise RunnerError(f"{self.name}: TensorRT could not load {self.plan_path} (its log above says why); "
                              f"rebuild it on this host: {self.manifest.rebuild_command()}")
        return engine

    def _split_io_names(self) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise RunnerError(f"{self.name}: feed lacks input(s) {', '.join(missing)}")
        with self._torch.cuda.device(self._device), self._torch.cuda.stream(self._stream):
            inputs = {name: self._bind_input(name, feed[name]) for name in self.input_names}
            self._check_shapes_resolved()
            outputs = {name: self._bind_output(name) for name in self.output_names}
            self._stream.synchronize()
            with Timer() as timer:
                ok = self.context.execute_async_v3(self._stream.cuda_stream)
                self._stream.synchronize()
        if not ok:
            raise RunnerError(f"{self.name}: execute_async_v3 failed for {self.plan_path} (see TensorRT's log)")
        self.last_inference_time = timer.seconds
        del inputs  # kept alive until the engine ran
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    def _bind_input(self, name: str, array: np.ndarray) -> Any:
        """Copy one input to the device in the engine's dtype, set its shape and address."""
        host = np.ascontiguousarray(np.asarray(array), dtype=self._numpy_dtype(name))
        if not self.context.set_input_shape(name, host.shape):
            raise RunnerError(f"{self.name}: input {name!r} of shape {list(host.shape)} is outside the engine's "
                              f"profile ({self._profile_text(name)}); rebuild with a wider --profile")
        tensor = self._torch.from_numpy(host).to(self._device, non_blocking=True)
        self.context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def _numpy_dtype(self, name: str) -> np.dtype:
        trt_dtype = self.engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(trt_dtype))
        except TypeError:
            raise RunnerError(f"{self.name}: tensor {name!r} has type {trt_dtype}, which numpy cannot hold; "
                              "export the model with fp32 or fp16 inputs and outputs") from None

    def _profile_text(self, name: str) -> str:
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return f"min {list(low)}, opt {list(opt)}, max {list(high)}"

    def _check_shapes_resolved(self) -> None:
        unresolved = self.context.infer_shapes()
        if unresolved:
            raise RunnerError(f"{self.name}: TensorRT could not infer shapes for {', '.join(unresolved)}")

    def _bind_output(self, name: str) -> Any:
        """A device buffer of the output's shape (known once all input shapes are set), bound by address."""
        shape = tuple(self.context.get_tensor_shape(name))
        torch_dtype = self._torch.from_numpy(np.empty(0, dtype=self._numpy_dtype(name))).dtype
        tensor = self._torch.empty(shape, dtype=torch_dtype, device=self._device)
        self.context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def _deactivate(self) -> None:
        self.context = None
        self.engine = None
