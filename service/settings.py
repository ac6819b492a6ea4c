"""Service settings: one dataclass, JSON-serialisable so ``dyt-serve --workers N`` can hand it to
every worker process through an environment variable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dyt_deploy.errors import DytDeployError

SETTINGS_ENV = "DYT_SERVE_SETTINGS"


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching of one model, as Triton's ``dynamic_batching``: requests arriving within
    ``max_queue_delay_us`` of the first one are run together, up to ``max_batch_size`` items."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 1000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0:
            raise DytDeployError("dynamic batching needs max_batch_size >= 1 and max_queue_delay_us >= 0")


@dataclass
class Settings:
    """How the service runs. Defaults suit one machine serving a handful of models.

    Attributes:
        repository: the model repository folder (Triton layout, one folder per model).
        provider: onnxruntime provider for .onnx models: "cpu", "cuda" or "tensorrt".
        threads: onnxruntime intra-op threads per model (0: onnxruntime's default, one per core).
        warmup_runs: inferences run on each model at load, before it is reported ready.
        max_body_bytes: request body limit (413 above it); 64 MiB is Triton's default.
        max_in_flight: requests handled at once (503 with Retry-After above it); health and
            metrics routes are not counted.
        request_timeout_s: a request still unanswered after this gets 408 (body not yet received)
            or 504 (processing).
        api_key: when set, inference and comparison routes need ``Authorization: Bearer KEY`` or
            ``X-API-Key: KEY``.
        batching: dynamic batching per model name; key "*" applies to every batchable model.
            A model whose config.pbtxt has ``dynamic_batching`` gets it too.
        allow_nonfinite: accept NaN/Inf in floating-point inputs.
        stats_window: served requests per model kept for the live percentiles.
        compare_max_rounds: bound on the rounds of one controlled comparison.
        compare_max_elements: bound on the elements of one input of a controlled comparison.
    """

    repository: str = "."
    provider: str = "cpu"
    threads: int = 0
    warmup_runs: int = 2
    max_body_bytes: int = 64 << 20
    max_in_flight: int = 64
    request_timeout_s: float = 60.0
    api_key: str | None = None
    batching: dict[str, BatchingConfig] = field(default_factory=dict)
    allow_nonfinite: bool = False
    stats_window: int = 2048
    compare_max_rounds: int = 1000
    compare_max_elements: int = 1 << 24
    retry_after_s: int = 1

    @property
    def repository_path(self) -> Path:
        return Path(self.repository)

    def batching_for(self, model: str) -> BatchingConfig | None:
        """This model's batching config from the settings (None: not set here)."""
        return self.batching.get(model, self.batching.get("*"))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data: dict[str, Any] = json.loads(text)
        data["batching"] = {k: BatchingConfig(**v) for k, v in data.get("batching", {}).items()}
        return cls(**data)
