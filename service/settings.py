"""Service settings: one pydantic-settings object, validated in one place.

Every field can come from the environment as ``DYT_<FIELD>`` (``DYT_THREADS=1``,
``DYT_BATCHING='{"*": {"max_batch_size": 8, "max_queue_delay_us": 500}}'``); the API key is
``$DYT_SERVE_API_KEY``. Keywords given in Python (and dyt-serve's flags) win over the environment.
``dyt-serve --workers N`` hands the same object to every worker process as JSON
(``$DYT_SERVE_SETTINGS``, see :meth:`Settings.to_json`).

Invalid values raise :class:`~dyt_deploy.errors.OptionError` naming each field, all at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError
from pydantic.dataclasses import dataclass
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from dyt_deploy.errors import OptionError

SETTINGS_ENV = "DYT_SERVE_SETTINGS"
API_KEY_ENV = "DYT_SERVE_API_KEY"
ENV_PREFIX = "DYT_"

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching of one model, as Triton's ``dynamic_batching``: requests arriving within
    ``max_queue_delay_us`` of the first one are run together, up to ``max_batch_size`` items."""

    max_batch_size: PositiveInt = 8
    max_queue_delay_us: NonNegativeInt = 1000


def option_error(err: ValidationError) -> OptionError:
    """Every problem of a pydantic ValidationError as ``(field, message)`` pairs."""
    problems = [(".".join(str(part) for part in e["loc"]) or "settings", f"{e['msg']}, got {e['input']!r}")
                for e in err.errors()]
    return OptionError(problems)


class Settings(BaseSettings):
    """How the service runs. Defaults suit one machine serving a handful of models.

    Attributes:
        repository: the model repository folder (Triton layout, one folder per model).
        provider: onnxruntime provider for .onnx models: "cpu", "cuda" or "tensorrt".
        backend: what runs the .onnx models: "onnxruntime" (default, on ``provider``) or "openvino"
            (OpenVINO on the CPU). A folder of OpenVINO IR (``1/model.xml``) always runs on OpenVINO.
        threads: onnxruntime intra-op threads per model (0: onnxruntime's default, one per core).
        workers: server processes (dyt-serve --workers), each loading every model.
        warmup_runs: inferences run on each model at load, before it is reported ready.
        max_body_bytes: request body limit (413 above it); 64 MiB is Triton's default.
        max_json_bytes: the memory budget of one all-JSON inference body: its limit is the model's
            largest valid request (max batch of every input, each number at its longest JSON
            text), at most this (413 above it, pointing to the binary tensor extension); decoding
            JSON costs a few times its size.
        max_inflate_ratio: a gzip or deflate body may inflate to at most this many times its
            compressed size (413 above it), and never past its kind's size limit.
        max_inflight_bytes: bound on the body bytes of the requests being received or handled (503
            with Retry-After above it); a JSON inference body counts 16 times its size (what decoding
            it costs: about 14 times, measured), and one request is admitted whatever its size when none
            is in flight.
        max_in_flight: requests handled at once, counted once their body is complete (503 with
            Retry-After above it); health and metrics routes are not counted.
        body_timeout_s: a request body must arrive completely within this (408 otherwise).
        max_body_reads: request bodies being received at once, from all clients; when all are taken,
            a new request takes the slot of the slowest one below ``min_body_rate`` (that one gets
            408), else it gets 503.
        min_body_rate: bytes per second a body must arrive at on average, once ``body_grace_s`` have
            passed (408 below it; 0: no minimum). Slow senders cannot hold the body-read slots.
        body_grace_s: seconds a body may take before its rate is checked.
        max_body_reads_per_client: request bodies being received at once from one client address.
        request_timeout_s: a request still unanswered after this gets 504 (processing).
        api_key: when set, every route but ``/v2/health/live`` and ``/v2/health/ready`` needs
            ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (environment: ``$DYT_SERVE_API_KEY``).
        public_metrics: with an API key set, leave ``/metrics`` open (for a Prometheus scraper).
        batching: dynamic batching per model name; key "*" applies to every batchable model.
            A model whose config.pbtxt has ``dynamic_batching`` gets it too.
        allow_nonfinite: accept NaN/Inf in floating-point inputs.
        stats_window: served requests per model kept for the live percentiles.
        compare_max_rounds: bound on the rounds of one controlled comparison.
        compare_max_batch: bound on the batch of one controlled comparison.
        compare_max_elements: bound on the elements of one input of a controlled comparison.
        retry_after_s: the Retry-After of a 503 over the in-flight bound.
        max_generate_tokens: the most tokens one generate request may ask for (``max_tokens``; 400 above).
        max_prompt_tokens: the longest prompt, in the model's tokens, a generate request may send (400 above).
        max_generations: generations running at once per model (503 with Retry-After above it); their
            steps take turns on the model's worker thread.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, populate_by_name=True, validate_default=True,
                                      extra="forbid")

    repository: str = "."
    provider: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    backend: Literal["onnxruntime", "openvino"] = "onnxruntime"
    threads: NonNegativeInt = 0
    workers: PositiveInt = 1
    warmup_runs: NonNegativeInt = 2
    max_body_bytes: PositiveInt = 64 << 20
    max_json_bytes: PositiveInt = 64 << 20
    max_inflate_ratio: PositiveInt = 100
    max_inflight_bytes: PositiveInt = 512 << 20
    max_in_flight: PositiveInt = 64
    body_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    max_body_reads: PositiveInt = 32
    min_body_rate: NonNegativeInt = 32 << 10
    body_grace_s: Annotated[float, Field(gt=0)] = 2.0
    max_body_reads_per_client: PositiveInt = 8
    request_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    api_key: str | None = Field(None, validation_alias=API_KEY_ENV)
    public_metrics: bool = False
    batching: dict[str, BatchingConfig] = Field(default_factory=dict)
    allow_nonfinite: bool = False
    stats_window: PositiveInt = 2048
    compare_max_rounds: PositiveInt = 200
    compare_max_batch: PositiveInt = 8
    compare_max_elements: PositiveInt = 1 << 22
    retry_after_s: NonNegativeInt = 1
    max_generate_tokens: PositiveInt = 512
    max_prompt_tokens: PositiveInt = 2048
    max_generations: PositiveInt = 4

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise option_error(err) from None
        except SettingsError as err:  # an environment variable that is not valid JSON, for a dict field
            field = re.search(r'field "(\w+)"', str(err))
            raise OptionError([(field.group(1) if field else "settings", f"{err.__cause__ or err}")]) from None

    @property
    def repository_path(self) -> Path:
        return Path(self.repository)

    def batching_for(self, model: str) -> BatchingConfig | None:
        """This model's batching config from the settings (None: not set here)."""
        return self.batching.get(model, self.batching.get("*"))

    def to_json(self) -> str:
        """Every field as JSON (what worker processes read back with :meth:`from_json`)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Settings from :meth:`to_json`'s text, validated like any other."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise option_error(err) from None
