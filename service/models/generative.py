"""A text-generation model folder (``dyt-export --task text-generation``) as the service serves it.

Its ONNX decoder (past key/values in, presents out) runs in the folder's runner (onnxruntime on
``--provider``), driven by :class:`dyt_deploy.generation.Generator` through
:class:`~dyt_deploy.export.decoder.OnnxDecoder`, with the folder's ``tokenizer.json`` or, without
one, UTF-8 bytes. Each step of a generation (the prompt's prefill, then one token) is one job on the
model's worker thread, so the event loop never waits for the model, and several generations (and
/infer calls) on one model take turns step by step; other models run on their own threads.

``/infer`` keeps working on such a model as on any ONNX model (the raw decoder graph, as Triton
serves the same folder); ``/generate`` and ``/generate_stream`` are :mod:`service.http.generate_routes`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyt_deploy.errors import DytDeployError
from dyt_deploy.repository import MANIFEST_NAME, latest_version, read_manifest
from dyt_deploy.runners import runner_for_folder
from dyt_deploy.tokenizer import TOKENIZER_FILE, ByteTokenizer, FileTokenizer, TextStream, Tokenizer

from ..errors import BadRequest, Unavailable
from ..protocol.generate import EMPTY_PROMPT, GenerateRequest, GenerationFailed, StopSequences
from ..protocol.oip import Signature
from ..settings import Settings
from ..telemetry.generation_stats import GenerationRecord, GenerationStats
from ..telemetry.metrics import ServiceMetrics
from .config import read_serving_config
from .served import ServedModel

if TYPE_CHECKING:  # torch comes with them: imported when a text-generation model loads, not with the service
    from dyt_deploy.export.decoder import DecoderSpec
    from dyt_deploy.generation import GenerationSettings, Generator

log = logging.getLogger("dyt_deploy.service")

TASK = "text-generation"
WARMUP_TOKENS = 2
PREFILL_TOKENS = 16  # a comparison's prompt length unless its dims say ``sequence``


def is_generative(folder: Path) -> bool:
    """Whether the folder's dyt.json says task text-generation (an unreadable one: no; its load
    reports what is wrong)."""
    try:
        return json.loads((folder / MANIFEST_NAME).read_text()).get("task") == TASK
    except (OSError, ValueError, AttributeError):
        return False


class GenerativeModel(ServedModel):
    """A served model that generates text; see the module docstring."""

    generative = True

    def __init__(self, folder: Path, settings: Settings, metrics: ServiceMetrics) -> None:
        super().__init__(folder, settings, metrics)
        self.generation_stats = GenerationStats(settings.stats_window)
        self.tokenizer: Tokenizer = ByteTokenizer()
        self.generator: Generator | None = None
        self.spec: DecoderSpec | None = None
        self.running = 0

    def _load(self) -> None:
        from dyt_deploy.export.decoder import OnnxDecoder
        from dyt_deploy.generation import GenerationSettings, Generator

        self.manifest = read_manifest(self.folder)
        self.config = read_serving_config(self.folder)
        self.signature = Signature.from_manifest(self.manifest, self.config.max_batch_size)
        self.version = latest_version(self.folder)
        self.batching = None  # a decoder's requests differ in length: never batched together
        self.spec = decoder_spec_of(self.manifest)
        runner = runner_for_folder(self.folder, self.version, provider=self.settings.provider,
                                   backend=self.settings.backend, threads=self.settings.threads, spin=False)
        self.runtime = runner.name
        runner.activate()
        self.worker.attach(runner, self.signature.batched)
        self.tokenizer = self._tokenizer()
        spec, dtype = self.spec, str(self.manifest.get("dtype", "fp32"))
        self.generator = Generator(lambda: OnnxDecoder(runner, spec, dtype), self.tokenizer)
        warmup = GenerationSettings(max_new_tokens=WARMUP_TOKENS, stop_tokens=self.stop_tokens)
        for _ in range(self.settings.warmup_runs):
            list(self.generator.tokens(self._warmup_prompt(), warmup))

    def _tokenizer(self) -> Tokenizer:
        """The version folder's tokenizer.json, else the model folder's, else bytes."""
        for folder in (self.folder / str(self.version), self.folder):
            if (folder / TOKENIZER_FILE).is_file():
                return FileTokenizer(folder / TOKENIZER_FILE)
        return ByteTokenizer()

    def _warmup_prompt(self) -> list[int]:
        ids = self.tokenizer.encode("Hello") or [0]
        return [i % self.spec.vocab_size for i in ids] if self.spec else ids

    @property
    def stop_tokens(self) -> tuple[int, ...]:
        """The model's end-of-text token, when it has one (the zoo's decoders have none)."""
        eos = self.spec.eos_token_id if self.spec else None
        return () if eos is None else (int(eos),)

    def metadata(self) -> dict[str, Any]:
        """Model metadata (the decoder graph's inputs and outputs), with ``task`` text-generation
        among the parameters: the model answers the generate routes."""
        answer = super().metadata()
        answer["parameters"]["task"] = TASK
        return answer

    def example_feed(self, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """A decoder feed of consistent shapes (what a controlled comparison times): ``batch``
        rows of ``sequence`` new tokens (default 16) after ``past_sequence`` cached ones (default 0:
        a prefill); the other dims follow from these."""
        spec = self.spec
        assert spec is not None
        batch, seq, past = dims.get("batch", 1), dims.get("sequence", PREFILL_TOKENS), dims.get("past_sequence", 0)
        rng = np.random.default_rng(seed)
        dtype = np.float16 if self.manifest.get("dtype") == "fp16" else np.float32
        feed = {"input_ids": rng.integers(0, spec.vocab_size, (batch, seq), dtype=np.int64),
                "attention_mask": np.ones((batch, past + seq), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq)).copy()}
        shape = (batch, spec.kv_heads, past, spec.head_dim)
        for name in (t["name"] for t in self.manifest["inputs"][3:]):
            feed[name] = rng.standard_normal(shape).astype(dtype)
        return feed

    # ---------------------------------------------------------------------------------------
    # Generation

    async def start(self, request: GenerateRequest) -> GenerationRun:
        """A generation of ``request``, checked against the limits (every problem in one 400) and
        admitted (503 with Retry-After when ``max_generations`` run already)."""
        self.require_ready()
        prompt, settings = self.check(request)
        if self.running >= self.settings.max_generations:
            raise Unavailable(f"model {self.name!r} is generating for {self.running} requests (limit "
                              f"{self.settings.max_generations}, --max-generations); retry later",
                              self.settings.retry_after_s)
        return GenerationRun(self, prompt, settings, request.parameters.stop_sequences)

    def check(self, request: GenerateRequest) -> tuple[list[int], GenerationSettings]:
        """The prompt's token ids and the generation settings; a 400 naming each limit passed."""
        params, limits, spec = request.parameters, self.settings, self.spec
        assert spec is not None
        prompt = self.tokenizer.encode(request.text_input)
        problems = []
        if params.max_tokens > limits.max_generate_tokens:
            problems.append(f"max_tokens {params.max_tokens} is over this server's limit of "
                            f"{limits.max_generate_tokens} (--max-generate-tokens); ask for fewer")
        if not prompt:
            problems.append(EMPTY_PROMPT)
        elif len(prompt) > limits.max_prompt_tokens:
            problems.append(f"the prompt is {len(prompt)} tokens, over this server's limit of "
                            f"{limits.max_prompt_tokens} (--max-prompt-tokens); shorten it")
        elif len(prompt) + params.max_tokens > spec.max_length:
            problems.append(f"the prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) = "
                            f"{len(prompt) + params.max_tokens} is more than model {self.name!r}'s context of "
                            f"{spec.max_length} tokens; shorten the prompt or lower max_tokens")
        outside = sorted({t for t in prompt if not 0 <= t < spec.vocab_size})
        if outside:
            problems.append(f"the prompt has token ids {outside[:5]} outside model {self.name!r}'s vocabulary of "
                            f"{spec.vocab_size}; the byte tokenizer needs at least 256 ids")
        if problems:
            raise BadRequest("; ".join(problems))
        from dyt_deploy.generation import GenerationSettings

        return prompt, GenerationSettings(params.max_tokens, params.temperature, params.top_k, params.top_p,
                                          params.seed, self.stop_tokens)

    def finished(self, record: GenerationRecord, failed: bool) -> None:
        """A generation ended: statistics and metrics."""
        self.generation_stats.record(record, failed)
        self.metrics.observe_generation(self.labels, "error" if failed else record.finish_reason,
                                        record.prompt_tokens, record.output_tokens, record.time_to_first_token_s,
                                        record.gaps_s)
        self.metrics.generations_running.labels(*self.labels).dec()


def decoder_spec_of(manifest: dict[str, Any]) -> DecoderSpec:
    """The decoder's sizes from dyt.json (written by dyt-export --task text-generation)."""
    from dyt_deploy.export.decoder import DecoderSpec

    found = manifest.get("decoder")
    if not isinstance(found, dict):
        raise DytDeployError("dyt.json has no 'decoder' entry (an export older than serving generation); export "
                         "the model again with dyt-export --task text-generation")
    return DecoderSpec(**found)


class GenerationTrack:
    """What every generation keeps, wherever its tokens are made: its model's slot (``running``),
    its record (prompt and output tokens, time to first token, gaps), why it ended, and the
    statistics and metrics written once when it closes (:meth:`_finish`). :class:`GenerationRun`
    makes the tokens here; a Ray model's run receives them from a replica
    (``service.engines.ray.RemoteGenerationRun``). Routes use :meth:`pieces`, :meth:`rest`,
    :meth:`summary`, :meth:`stop` and :meth:`close`."""

    def __init__(self, model: GenerativeModel, prompt_tokens: int) -> None:
        self.model = model
        self.record = GenerationRecord(prompt_tokens)
        self.finish_reason: str | None = None
        self.started = time.perf_counter()
        self.last_token_at: float | None = None
        self.failed = self.closed = False
        model.running += 1
        model.generation_stats.started()
        model.metrics.generations_running.labels(*model.labels).inc()

    def pieces(self) -> AsyncIterator[tuple[int, str]]:
        raise NotImplementedError

    def rest(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        """A token came: its time, and one more output token."""
        now = time.perf_counter()
        if self.last_token_at is None:
            self.record.time_to_first_token_s = now - self.started
        else:
            self.record.gaps_s.append(now - self.last_token_at)
        self.last_token_at = now
        self.record.output_tokens += 1

    def _finish(self) -> None:
        """Free the model's slot and record the generation (once, from :meth:`close`)."""
        self.model.running -= 1
        end = self.last_token_at if self.last_token_at is not None else time.perf_counter()
        self.record.seconds = end - self.started
        self.record.finish_reason = self.finish_reason or "cancelled"
        self.model.finished(self.record, self.failed)

    def summary(self) -> dict[str, Any]:
        """Why it ended, token counts and timings (the answer's fields besides the text)."""
        first = self.record.time_to_first_token_s
        return {"finish_reason": self.finish_reason or "cancelled", "prompt_tokens": self.record.prompt_tokens,
                "output_tokens": self.record.output_tokens,
                "time_to_first_token_ms": None if first is None else round(first * 1e3, 3),
                "tokens_per_s": round(self.record.tokens_per_s, 3)}


class GenerationRun(GenerationTrack):
    """One generation made here: its steps on the model's worker, its text (stop sequences cut).

    :meth:`pieces` yields ``(index, text)`` per token; :meth:`close` (idempotent, also run when
    :meth:`pieces` ends in any way) stops the decoding, frees the model's slot and records the
    statistics. Once ``finish_reason`` is set, :meth:`rest` is the text still held back.
    """

    def __init__(self, model: GenerativeModel, prompt: list[int], settings: GenerationSettings,
                 stops: list[str]) -> None:
        assert model.generator is not None
        super().__init__(model, len(prompt))
        self.settings = settings
        self.cancel = threading.Event()
        self.tokens = model.generator.tokens(prompt, settings, self.cancel)
        self.text, self.stops = TextStream(model.tokenizer), StopSequences(stops)

    async def pieces(self) -> AsyncIterator[tuple[int, str]]:
        """``(index, text piece)`` of each token as it comes; a piece may be empty while a character
        or a possible stop sequence is incomplete. Ends with ``finish_reason`` set."""
        try:
            while self.finish_reason is None:
                try:
                    token = await self.model.worker.executor.call(next, self.tokens, None)
                except Exception as err:
                    self.failed = True
                    log.exception("generation on model %s failed", self.model.name)
                    raise GenerationFailed(f"model {self.model.name!r} failed while generating: "
                                           f"{type(err).__name__}: {err}") from err
                if token is None:  # the model's end-of-text token
                    self.finish_reason = "stop"
                    break
                piece = self._took(token)
                yield self.record.output_tokens - 1, piece
        finally:
            self.close()

    def _took(self, token: int) -> str:
        self._tick()
        piece = self.stops.push(self.text.push(token))
        if self.stops.stopped:
            self.finish_reason = "stop"
        elif self.record.output_tokens >= self.settings.max_new_tokens:
            self.finish_reason = "length"
        return piece

    def rest(self) -> str:
        """The text held back at the end (an incomplete character, a tail that could have begun a
        stop sequence); empty after a stop sequence or a cancellation."""
        if self.stops.stopped or self.finish_reason == "cancelled":
            return ""
        return self.stops.push(self.text.flush()) + self.stops.flush()

    def stop(self) -> None:
        """The client went away: no further step."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self.cancel.set()

    def close(self) -> None:
        """Stop decoding (a step under way finishes, unseen), free the model's slot, record."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        try:  # after the step under way, on the worker that runs the decoder's steps
            self.model.worker.executor.submit(self.tokens.close)
        except RuntimeError:  # the worker is shut down (the server is stopping)
            pass
        self._finish()
