"""What the service takes from a model's config.pbtxt, and the ``/config`` answer it gives.

Both go through Triton's own ``ModelConfig`` protobuf (:mod:`dyt_deploy.triton_config`), so a
nested block such as ``dynamic_batching { default_queue_policy { ... } max_queue_delay_microseconds:
5000 }`` reads back as Triton reads it, and ``/config`` has the shape Triton's has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyt_deploy.errors import DytDeployError
from dyt_deploy.repository import latest_version, read_manifest
from dyt_deploy.triton_config import DEFAULT_MAX_BATCH_SIZE, build_config, config_to_dict, is_batched, read_config

from ..settings import BatchingConfig

DEFAULT_PLATFORM = "onnxruntime_onnx"
# AOTInductor folders (1/model.pt2) have no config.pbtxt (Triton has no backend for them): served as "aoti"
AOTI_BACKEND, AOTI_FILE = "aoti", "model.pt2"


@dataclass(frozen=True)
class ServingConfig:
    """The parts of config.pbtxt the service serves by: ``batching`` is the file's
    ``dynamic_batching`` (None without it, or for a model that does not batch)."""

    platform: str = DEFAULT_PLATFORM
    max_batch_size: int = 0
    batching: BatchingConfig | None = None
    backend: str = ""  # Triton's ``backend`` for models named by backend, not platform ("openvino")


def read_serving_config(folder: Path) -> ServingConfig:
    """Platform, max_batch_size and dynamic_batching of ``folder/config.pbtxt``, as Triton reads them
    (absent fields are Triton's defaults; no file: an AOTInductor folder's config, else an onnxruntime
    model that does not batch)."""
    config = read_config(folder)
    if config is None:
        return _aoti_config(folder) or ServingConfig()
    batching = None
    if config.HasField("dynamic_batching") and config.max_batch_size > 0:
        batching = BatchingConfig(config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds)
    if config.backend and not config.platform:  # an OpenVINO folder: backend "openvino", no platform
        return ServingConfig(config.backend, config.max_batch_size, batching, config.backend)
    return ServingConfig(config.platform or DEFAULT_PLATFORM, config.max_batch_size, batching, config.backend)


def _aoti_config(folder: Path) -> ServingConfig | None:
    """An AOTInductor folder's serving config: backend "aoti", batched up to Triton's default
    max_batch_size when its signature is batched; None for other folders."""
    try:
        if not (folder / latest_version(folder) / AOTI_FILE).is_file():
            return None
        manifest = read_manifest(folder)
    except (DytDeployError, OSError):
        return None  # the model's load reports what is wrong with the folder
    batched = is_batched(manifest.get("inputs", []), manifest.get("outputs", []))
    return ServingConfig(AOTI_BACKEND, DEFAULT_MAX_BATCH_SIZE if batched else 0, None, AOTI_BACKEND)


def config_answer(name: str, manifest: dict[str, Any], platform: str, max_batch_size: int,
                  batching: BatchingConfig | None, gpu: bool, backend: str = "") -> dict[str, Any]:
    """The model configuration as Triton's ``GET /v2/models/{m}/config`` returns it (what perf_analyzer
    reads): the IO signature of ``manifest`` (dyt.json), the batching in force, one instance. A model
    named by ``backend`` (OpenVINO, AOTInductor) has that and no platform, as in its config.pbtxt.
    An AOTInductor package runs where it was compiled for (dyt.json ``device``), whatever ``gpu`` says."""
    if manifest.get("backend") == AOTI_BACKEND:
        gpu = manifest.get("device") == "cuda"
    platform_field = None if backend and platform == backend else platform
    config = build_config(name, manifest["inputs"], manifest["outputs"], platform=platform_field, backend=backend,
                          max_batch_size=max_batch_size, instance_kind="KIND_GPU" if gpu else "KIND_CPU",
                          max_queue_delay_us=batching.max_queue_delay_us if batching is not None else None)
    if batching is not None:
        config.dynamic_batching.preferred_batch_size.append(batching.max_batch_size)
    return config_to_dict(config)
