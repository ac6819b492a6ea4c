"""Every backend behind one interface: ``Runner.activate() / infer(feed) / deactivate()``.

Kinds: ``torch`` (eager), ``torch-compile``, ``torch-triton`` (eager with the Triton DyT
kernels), ``ort`` (onnxruntime CPU), ``ort-cuda`` and
``ort-trt`` (onnxruntime's CUDA / TensorRT execution providers, ``gpu`` extra), ``trt``
(a TensorRT engine, ``tensorrt`` extra). Backends are imported when a runner is made.
"""

from .base import MissingBackendError, Runner, RunnerError, Timer

RUNNER_KINDS = ("torch", "torch-compile", "torch-triton", "ort", "ort-cuda", "ort-trt", "trt")

__all__ = ["RUNNER_KINDS", "MissingBackendError", "Runner", "RunnerError", "Timer"]
