"""The engine manifest: a JSON file beside each plan (``model.plan.json``) saying what the engine was built with.

A TensorRT engine runs only with the TensorRT version that built it and on GPUs of the compute
capability it was built for; it is also only as current as the ONNX it came from. The manifest
records those facts (plus profiles, precision and build settings) and :func:`check_compatibility`
decides, as a pure function of the manifest and the host's facts, whether the engine may load:

- refused: another TensorRT major.minor, another compute capability, or an ONNX file whose sha256
  is not the one the engine was built from; the message says how to rebuild (``dyt-build ...``);
- allowed with a warning: another GPU name of the same compute capability (e.g. A10 vs A10G),
  or a fact this host could not determine.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DytDeployError
from ..repository import sha256_file

ENGINE_MANIFEST_FORMAT = "dyt-deploy/engine-manifest"
ENGINE_MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".json"
log = logging.getLogger("dyt_deploy.tensorrt")


class EngineManifestError(DytDeployError):
    """An engine manifest is missing, unreadable, or does not match its plan."""


class EngineIncompatibleError(DytDeployError):
    """An engine was built for another TensorRT version, GPU architecture or ONNX file; rebuild it."""


@dataclass
class EngineManifest:
    """What an engine was built with. ``compute_capability`` is "major.minor" (e.g. "8.6")."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    plan_sha256: str
    profiles: dict[str, dict[str, list[int]]]
    precision: str
    onnx_path: str | None = None  # relative to the plan's folder where possible
    plugin: bool = False  # the engine holds dyt_deploy::DynamicTanh plugin layers (register before loading)
    cuda_version: str | None = None
    build: dict[str, Any] = field(default_factory=dict)  # settings, timing, the dyt-build command line

    def to_dict(self) -> dict[str, Any]:
        return {"format": ENGINE_MANIFEST_FORMAT, "format_version": ENGINE_MANIFEST_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "engine manifest") -> EngineManifest:
        if data.get("format") != ENGINE_MANIFEST_FORMAT:
            raise EngineManifestError(f"{source}: not a dyt-deploy engine manifest (format {data.get('format')!r})")
        names = set(cls.__dataclass_fields__)
        missing = [n for n, f in cls.__dataclass_fields__.items() if n not in data and _required(f)]
        if missing:
            raise EngineManifestError(f"{source}: missing {', '.join(missing)}; rebuild the engine with dyt-build")
        return cls(**{k: v for k, v in data.items() if k in names})

    def rebuild_command(self) -> str:
        """The dyt-build command line that built this engine (a generic one if not recorded)."""
        command = self.build.get("command")
        return shlex.join(command) if command else "dyt-build MODEL.onnx|REPO/NAME -o model.plan"


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def manifest_path_for(plan_path: str | os.PathLike) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + MANIFEST_SUFFIX)


def write_engine_manifest(path: str | os.PathLike, manifest: EngineManifest) -> None:
    Path(path).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def read_engine_manifest(plan_path: str | os.PathLike) -> EngineManifest:
    """The manifest beside ``plan_path``; an engine without one is refused (its origin is unknown)."""
    path = manifest_path_for(plan_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineManifestError(f"{plan_path} has no engine manifest ({path.name}); engines are tied to the "
                                  "TensorRT version and GPU that built them: rebuild it with dyt-build") from None
    except json.JSONDecodeError as err:
        raise EngineManifestError(f"{path}: not valid JSON ({err}); rebuild the engine with dyt-build") from None
    return EngineManifest.from_dict(data, source=str(path))


# ---- host facts and the compatibility decision ----


@dataclass(frozen=True)
class HostFacts:
    """What this host offers; None where it could not be determined (no TensorRT, no CUDA device)."""

    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    cuda_version: str | None = None


@dataclass
class Compatibility:
    """The decision: ``refusals`` (any -> the engine must not load) and ``warnings`` (it may load)."""

    plan: str
    refusals: list[str]
    warnings: list[str]
    rebuild: str

    @property
    def ok(self) -> bool:
        return not self.refusals

    def message(self) -> str:
        return (f"engine {self.plan} cannot be loaded here: {'; '.join(self.refusals)}. "
                f"Rebuild it on this host: {self.rebuild}")

    def raise_if_refused(self) -> None:
        if self.refusals:
            raise EngineIncompatibleError(self.message())


def major_minor(version: str) -> tuple[int, ...] | None:
    """"10.13.0.35" -> (10, 13); None when it does not start with two integers."""
    parts = version.split(".")[:2]
    return tuple(int(p) for p in parts) if len(parts) == 2 and all(p.isdigit() for p in parts) else None


def check_compatibility(manifest: EngineManifest, host: HostFacts, onnx_sha256: str | None = None,
                        plan: str = "model.plan") -> Compatibility:
    """May the engine described by ``manifest`` load on ``host``? A pure function; see the module docstring.

    ``onnx_sha256`` is the current hash of the model's ONNX file (None: not available, not checked).
    """
    refusals: list[str] = []
    warnings: list[str] = []
    _check_tensorrt(manifest, host, refusals, warnings)
    _check_gpu(manifest, host, refusals, warnings)
    if onnx_sha256 is not None and onnx_sha256 != manifest.onnx_sha256:
        refusals.append(f"its ONNX file changed since the build (sha256 {manifest.onnx_sha256[:12]}… in the "
                        f"manifest, {onnx_sha256[:12]}… now)")
    return Compatibility(plan, refusals, warnings, manifest.rebuild_command())


def _check_tensorrt(manifest: EngineManifest, host: HostFacts, refusals: list[str], warnings: list[str]) -> None:
    if host.tensorrt_version is None:
        warnings.append("this host's TensorRT version is unknown")
        return
    built, here = major_minor(manifest.tensorrt_version), major_minor(host.tensorrt_version)
    if built is None or built != here:
        refusals.append(f"it was built with TensorRT {manifest.tensorrt_version}, this host has "
                        f"{host.tensorrt_version}")


def _check_gpu(manifest: EngineManifest, host: HostFacts, refusals: list[str], warnings: list[str]) -> None:
    if host.compute_capability is None:
        warnings.append("this host's GPU compute capability is unknown")
        return
    if host.compute_capability != manifest.compute_capability:
        refusals.append(f"it was built for compute capability {manifest.compute_capability} "
                        f"({manifest.gpu_name}), this GPU is {host.compute_capability} ({host.gpu_name})")
    elif host.gpu_name is not None and host.gpu_name != manifest.gpu_name:
        warnings.append(f"it was built on a {manifest.gpu_name} and runs on a {host.gpu_name} (same compute "
                        f"capability {host.compute_capability}); rebuild here for the best kernels")


def gather_host_facts(device: int | None = None) -> HostFacts:
    """This host's facts: TensorRT from ``tensorrt.__version__``; the GPU from torch.cuda (``device``: the
    current CUDA device by default), else from ``nvidia-smi``. Imports lazily; what is missing stays None."""
    return HostFacts(_installed_tensorrt_version(), *_cuda_device_facts(device))


def _installed_tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(getattr(tensorrt, "__version__", None) or "unknown")


def _cuda_device_facts(device: int | None) -> tuple[str | None, str | None, str | None]:
    """(GPU name, compute capability, CUDA version of torch)."""
    try:
        import torch
    except ImportError:
        return (*nvidia_smi_facts(device), None)
    if not torch.cuda.is_available():
        return (*nvidia_smi_facts(device), torch.version.cuda)
    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}", torch.version.cuda


def nvidia_smi_facts(device: int | None = None) -> tuple[str | None, str | None]:
    """(name, compute capability) of a GPU from ``nvidia-smi`` (for hosts whose torch has no CUDA); Nones if absent.

    ``device`` defaults to the first GPU CUDA_VISIBLE_DEVICES names (nvidia-smi ignores that variable).
    """
    import subprocess

    index = str(device) if device is not None else _first_visible_device()
    command = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", index]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return parse_nvidia_smi(result.stdout)


def _first_visible_device() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def parse_nvidia_smi(text: str) -> tuple[str | None, str | None]:
    """``"NVIDIA A10G, 8.6"`` -> ("NVIDIA A10G", "8.6"); Nones when the line does not look like that."""
    name, _, capability = text.strip().splitlines()[0].rpartition(",") if text.strip() else ("", "", "")
    capability = capability.strip()
    if not name.strip() or major_minor(capability) is None:
        return None, None
    return name.strip(), capability


# ---- checking a plan file before loading it ----


def recorded_onnx_path(plan_path: Path, manifest: EngineManifest) -> Path | None:
    """The ONNX file the manifest names, resolved against the plan's folder; None if not recorded or gone."""
    if not manifest.onnx_path:
        return None
    path = plan_path.parent / manifest.onnx_path
    return path if path.is_file() else None


def check_engine_file(plan_path: str | os.PathLike, host: HostFacts, onnx_path: str | os.PathLike | None = None
                      ) -> tuple[EngineManifest, Compatibility]:
    """Read ``plan_path``'s manifest, check the plan is the one it describes, and decide compatibility.

    The ONNX hash is checked against ``onnx_path`` when given, else the ONNX file the manifest
    records (when it still exists). Raises EngineManifestError / EngineIncompatibleError; warnings
    are logged on the ``dyt_deploy.tensorrt`` logger and returned.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise EngineManifestError(f"no engine at {plan_path}; build one with dyt-build MODEL.onnx|REPO/NAME -o PLAN")
    manifest = read_engine_manifest(plan_path)
    if sha256_file(plan_path) != manifest.plan_sha256:
        raise EngineManifestError(f"{plan_path} is not the engine its manifest describes (sha256 differs); "
                                  f"rebuild it: {manifest.rebuild_command()}")
    onnx_file = Path(onnx_path) if onnx_path is not None else recorded_onnx_path(plan_path, manifest)
    decision = check_compatibility(manifest, host, sha256_file(onnx_file) if onnx_file else None, str(plan_path))
    decision.raise_if_refused()
    for warning in decision.warnings:
        log.warning("engine %s: %s", plan_path, warning)
    return manifest, decision
