"""The one place runners are made: ``create_runner(kind, source, **options)`` and
``runner_for_folder(model_dir)``.

Every kind is one :class:`RunnerKind` entry: what it runs (``takes``: an ``nn.Module``, an
.onnx file, a TensorRT .plan or an AOTInductor .pt2 package) and a builder that imports its
backend only when called. A new backend is one module in ``runners/`` and one entry in :data:`RUNNERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DytDeployError, unknown_name
from .base import Runner

MODULE, ONNX, PLAN, PT2 = "module", "onnx", "plan", "pt2"


@dataclass(frozen=True)
class RunnerKind:
    """One registered kind: what its source is, how to build it, and a line for help texts."""

    name: str
    takes: str
    build: Callable[..., Runner]
    help: str


def _torch(**fixed: Any) -> Callable[..., Runner]:
    def build(model: Any, **options: Any) -> Runner:
        from .torch_runner import TorchRunner

        return TorchRunner(model, **{**fixed, **options})

    return build


def _torch_triton(model: Any, **options: Any) -> Runner:
    import torch

    from .torch_runner import TorchRunner

    options.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    return TorchRunner(model, kernels=True, **options)


def _torch_optimize(model: Any, optimize: str | None = None, **options: Any) -> Runner:
    """``optimize``: the mode (default: reduce-overhead, i.e. CUDA graphs, on a GPU; default on the CPU)."""
    from .torch_runner import TorchRunner

    device = options.get("device", "cpu")
    return TorchRunner(model, optimize=optimize or ("reduce-overhead" if device.startswith("cuda") else "default"),
                       **options)


def _onnxruntime(provider: str) -> Callable[..., Runner]:
    def build(path: str | Path, **options: Any) -> Runner:
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, provider=provider, **options)

    return build


def _openvino(path: str | Path, spin: bool | None = None, **options: Any) -> Runner:
    """``spin`` is onnxruntime's thread setting (callers that pass it to any runner): OpenVINO has none."""
    from .openvino_runner import OpenVinoRunner

    return OpenVinoRunner(path, **options)


def _aoti(path: str | Path, spin: bool | None = None, **options: Any) -> Runner:
    """``spin`` is onnxruntime's thread setting (callers that pass it to any runner): AOTInductor has none."""
    from .aoti_runner import AotiRunner

    return AotiRunner(path, **options)


def _tensorrt(path: str | Path, **options: Any) -> Runner:
    from .tensorrt import TensorRTRunner

    return TensorRTRunner(path, **options)


RUNNERS: dict[str, RunnerKind] = {kind.name: kind for kind in (
    RunnerKind("torch", MODULE, _torch(), "PyTorch eager"),
    RunnerKind("torch-compile", MODULE, _torch(compile=True), "torch.compile (Inductor)"),
    RunnerKind("torch-triton", MODULE, _torch_triton, "PyTorch eager with the Triton DyT kernels"),
    RunnerKind("torch-optimize", MODULE, _torch_optimize, "dyt_deploy.optimize: DyT folded, the kernels, "
               "compiled (CUDA graphs on a GPU)"),
    RunnerKind("ort", ONNX, _onnxruntime("cpu"), "onnxruntime, CPU"),
    RunnerKind("ort-cuda", ONNX, _onnxruntime("cuda"), "onnxruntime-gpu, CUDA execution provider"),
    RunnerKind("ort-trt", ONNX, _onnxruntime("tensorrt"), "onnxruntime-gpu, TensorRT execution provider"),
    RunnerKind("openvino", ONNX, _openvino, "OpenVINO, CPU (an .onnx file or an IR model.xml)"),
    RunnerKind("trt", PLAN, _tensorrt, "a TensorRT engine (model.plan)"),
    RunnerKind("aoti", PT2, _aoti, "an AOTInductor package (model.pt2, dyt-build --backend aoti), CPU or CUDA"),
)}
RUNNER_KINDS = tuple(RUNNERS)
# onnxruntime provider name (as dyt-serve's --provider takes it) -> runner kind
ORT_KIND_BY_PROVIDER = {"cpu": "ort", "cuda": "ort-cuda", "tensorrt": "ort-trt"}
# what runs a folder's model.onnx (dyt-serve --backend): onnxruntime (on --provider) or OpenVINO
ONNX_BACKENDS = ("onnxruntime", "openvino")


def runner_kind(kind: str) -> RunnerKind:
    """The registry entry of ``kind``; an unknown kind lists the known ones."""
    try:
        return RUNNERS[kind]
    except KeyError:
        raise unknown_name("runner", kind, RUNNER_KINDS) from None


def create_runner(kind: str, source: Any, **options: Any) -> Runner:
    """A runner of ``kind`` over ``source`` (not yet activated).

    ``source`` is what the kind takes (``runner_kind(kind).takes``): an ``nn.Module`` for the torch
    kinds (with ``input_names`` and ``output_names`` options), an .onnx path for the onnxruntime
    kinds, an .onnx or IR .xml path for ``openvino``, a .plan path for ``trt``, a .pt2 path for
    ``aoti``. ``options`` go to the runner's constructor.
    """
    return runner_kind(kind).build(source, **options)


def runner_for_folder(model_dir: str | Path, version: str | None = None, *, provider: str = "cpu",
                      backend: str = "onnxruntime", **options: Any) -> Runner:
    """A runner for a repository model folder: ``VERSION/model.pt2`` (an AOTInductor folder) in the
    ``aoti`` runner; ``VERSION/model.xml`` (an OpenVINO folder) in OpenVINO;
    ``VERSION/model.onnx`` in onnxruntime on ``provider`` ("cpu", "cuda", "tensorrt"), or in OpenVINO
    with ``backend="openvino"``; else ``VERSION/model.plan`` in TensorRT. ``version`` defaults to the
    latest numeric version folder (Triton's default policy). ``options`` go to the runner."""
    from ..repository import latest_version

    if backend not in ONNX_BACKENDS:
        raise unknown_name("backend for model.onnx", backend, ONNX_BACKENDS)
    model_dir = Path(model_dir)
    version_dir = model_dir / (version or latest_version(model_dir))
    if (version_dir / "model.pt2").is_file():
        return create_runner("aoti", version_dir / "model.pt2", **options)
    if (version_dir / "model.xml").is_file():
        return create_runner("openvino", version_dir / "model.xml", **options)
    if (version_dir / "model.onnx").is_file():
        if backend == "openvino":
            return create_runner("openvino", version_dir / "model.onnx", **options)
        if provider not in ORT_KIND_BY_PROVIDER:
            raise unknown_name("onnxruntime provider", provider, tuple(ORT_KIND_BY_PROVIDER))
        return create_runner(ORT_KIND_BY_PROVIDER[provider], version_dir / "model.onnx", **options)
    if (version_dir / "model.plan").is_file():
        return create_runner("trt", version_dir / "model.plan")
    raise DytDeployError(f"{version_dir}: no model.onnx, model.xml, model.plan or model.pt2")
