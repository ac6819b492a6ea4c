"""Text generation with a key/value cache: greedy or sampled, with stop tokens, for any causal LM.

(The module is ``generation`` so that the package's public ``dyt_deploy.generate`` stays this
function, as ``dyt_deploy.optimize`` lives in ``optimize_model``.)

``generate(model, ids, max_new_tokens)`` takes the zoo's LLaMA-style decoder, a Hugging Face causal
LM (as :func:`dyt_deploy.hf.load_folder` loads it) or a :class:`Decoder` of your own (the ONNX one of
``dyt_deploy.export.decoder``): the prompt runs once (prefill), then one token at a time on the cache.
:class:`Generator` is the same as a per-token iterator with cancellation, for a server.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .errors import DytDeployError, OptionError
from .tokenizer import ByteTokenizer, TextStream, Tokenizer


class Decoder(Protocol):
    """One generation's model state: each call feeds new tokens and returns their last logits.

    ``__call__(input_ids, attention_mask, position_ids)``: ``input_ids`` and ``position_ids``
    (batch, seq) of the new tokens, ``attention_mask`` (batch, all tokens so far) 1 for real tokens;
    returns (batch, vocab) float logits of each row's last new token. The decoder keeps its cache.
    """

    vocab_size: int
    max_length: int | None  # the most tokens (prompt + new) it can hold; None: no limit known

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class GenerationSettings:
    """How to pick tokens.

    Attributes:
        max_new_tokens: the most tokens to generate per sequence.
        temperature: 0 (default): greedy, the most likely token each step; above 0: sample from the
            softmax of ``logits / temperature``, computed in float64 from the logits minus their row
            maximum, so every finite positive temperature works: as it tends to 0 (1e-8, 1e-45, the
            smallest float) sampling tends to greedy decoding, ties shared evenly.
        top_k: sampling keeps the ``top_k`` most likely tokens (0: all).
        top_p: sampling keeps the smallest set of most likely tokens whose probability reaches
            ``top_p`` (1.0: all).
        seed: the sampling generator's seed (None: a random one); the same seed, prompt and model
            give the same tokens.
        stop_tokens: ids that end a sequence (not included in its output).
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))
        problems = self.problems()
        if problems:
            raise OptionError(problems)

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field as ``(field, what is wrong)``."""
        found = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            found.append(("max_new_tokens", f"max_new_tokens must be a positive integer, not {self.max_new_tokens!r}"))
        if not 0 <= self.temperature < float("inf"):
            found.append(("temperature", f"temperature must be 0 (greedy) or a finite positive number, "
                                         f"not {self.temperature!r}"))
        if not isinstance(self.top_k, int) or self.top_k < 0:
            found.append(("top_k", f"top_k must be 0 (off) or a positive integer, not {self.top_k!r}"))
        if not 0 < self.top_p <= 1:
            found.append(("top_p", f"top_p must be in (0, 1], not {self.top_p!r}"))
        return found

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationResult:
    """The new tokens of each sequence (stop token excluded), why each ended ("stop", "length",
    "cancelled"), their text where a tokenizer was at hand, and timings in seconds."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    prompt_tokens: int
    text: list[str] | None = None
    time_to_first_token: float = 0.0
    seconds: float = 0.0
    step_logits: list[torch.Tensor] = field(default_factory=list)  # (batch, vocab) per step, with keep_logits

    @property
    def new_tokens(self) -> int:
        return sum(len(row) for row in self.tokens)


@dataclass(frozen=True)
class GeneratedToken:
    """One token of a stream: its id, the text it completes (may be empty), its index, the seconds
    since generation began; the last one of the stream carries ``finish_reason``."""

    id: int
    text: str
    index: int
    seconds: float
    finish_reason: str | None = None


class ZooDecoder:
    """The zoo's LLaMA-style decoder on its own cache (``forward_cached``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.vocab_size = int(model.config["vocab_size"])
        self.max_length = int(model.config["max_seq_len"])
        self.cache: Any = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> torch.Tensor:
        logits, self.cache = self.model.forward_cached(input_ids, self.cache, attention_mask, position_ids)
        return logits[:, -1].float()


class HFDecoder:
    """A Hugging Face causal LM on transformers' own cache (``past_key_values``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        config = model.config
        self.vocab_size = int(config.vocab_size)
        self.max_length = getattr(config, "max_position_embeddings", None)
        # transformers 5.x names the cache argument and output "cache"; earlier ones "past_key_values"
        self.cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache: Any = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, return_dict=True, **{self.cache_key: self.cache})
        self.cache = out[self.cache_key]
        return out["logits"][:, -1].float()


def decoder_factory(model: Any) -> Callable[[], Decoder]:
    """A maker of fresh :class:`Decoder` states for ``model``: the zoo decoder, a Hugging Face causal
    LM (bare, or wrapped by ``dyt_deploy.hf``), or a callable that already makes decoders."""
    if hasattr(model, "forward_cached") and hasattr(model, "config"):
        return lambda: ZooDecoder(model)
    inner = getattr(model, "model", model)  # dyt_deploy.hf wraps the transformers model
    if isinstance(inner, nn.Module) and hasattr(inner, "generation_config") or _is_hf_causal_lm(inner):
        return lambda: HFDecoder(inner)
    if callable(model) and not isinstance(model, nn.Module):
        return model
    raise DytDeployError(f"{type(model).__name__} cannot generate: pass the zoo's llama decoder, a Hugging Face "
                         "causal LM (…ForCausalLM) or a decoder factory such as the ONNX one")


def _is_hf_causal_lm(model: Any) -> bool:
    return isinstance(model, nn.Module) and type(model).__name__.endswith("ForCausalLM")


class Generator:
    """Generation for one model: ``generate`` for whole results, ``stream`` for one token at a time.

    Args:
        model: what :func:`decoder_factory` takes.
        tokenizer: for text prompts and text out (default: bytes, as the zoo's decoders use).
    """

    def __init__(self, model: Any, tokenizer: Tokenizer | None = None) -> None:
        self.new_decoder = decoder_factory(model)
        self.tokenizer = tokenizer or ByteTokenizer()

    def generate(self, prompts: str | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
                 settings: GenerationSettings | None = None, keep_logits: bool = False,
                 cancel: threading.Event | None = None) -> GenerationResult:
        """Generate for each prompt (texts are encoded with the tokenizer; shorter prompts are
        padded on the left); ``keep_logits`` records each step's logits."""
        settings = settings or GenerationSettings()
        ids, mask = self._batch(prompts)
        rows: list[list[int]] = [[] for _ in range(ids.shape[0])]
        reasons: list[str | None] = [None] * ids.shape[0]
        result = GenerationResult(rows, [], int(mask.sum()))
        started = time.perf_counter()
        for step, (tokens, logits) in enumerate(self._steps(ids, mask, settings, cancel)):
            if step == 0:
                result.time_to_first_token = time.perf_counter() - started
            if keep_logits:
                result.step_logits.append(logits)
            for row, token in enumerate(tokens):
                if reasons[row] is None:
                    if token in settings.stop_tokens:
                        reasons[row] = "stop"
                    else:
                        rows[row].append(token)
            if all(reasons):
                break
        cancelled = cancel is not None and cancel.is_set()
        result.finish_reasons = [r or ("cancelled" if cancelled else "length") for r in reasons]
        result.seconds = time.perf_counter() - started
        if isinstance(prompts, str) or _is_texts(prompts):
            result.text = [self.tokenizer.decode(row) for row in rows]
        return result

    def stream(self, prompt: str | Sequence[int], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> Iterator[GeneratedToken]:
        """The tokens of one prompt as they come; stops at a stop token, ``max_new_tokens``, or
        when ``cancel`` is set (checked before each step). The last token says why it ended."""
        settings = settings or GenerationSettings()
        if not isinstance(prompt, str) and prompt and not isinstance(prompt[0], int):
            raise DytDeployError("stream takes one prompt (a text or a list of token ids)")
        ids, mask = self._batch([prompt] if isinstance(prompt, str) else [list(prompt)])
        text = TextStream(self.tokenizer)
        started, previous, index = time.perf_counter(), None, 0
        for tokens, _ in self._steps(ids, mask, settings, cancel):
            token = tokens[0]
            if token in settings.stop_tokens:
                break
            if previous is not None:
                yield previous
            previous = GeneratedToken(token, text.push(token), index, time.perf_counter() - started)
            index += 1
        if previous is None:
            return
        reason = "stop" if index < settings.max_new_tokens else "length"
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
        yield GeneratedToken(previous.id, previous.text + text.flush(), previous.index, previous.seconds, reason)

    def tokens(self, prompt: str | Sequence[int], settings: GenerationSettings | None = None,
               cancel: threading.Event | None = None) -> Iterator[int]:
        """The new token ids of one prompt, each as soon as it is chosen (no look-ahead, unlike
        :meth:`stream`): every ``next`` is one model call (the prompt's prefill first). Ends at a stop
        token (not yielded), after ``max_new_tokens``, or when ``cancel`` is set (checked before each
        step). For a caller that decodes text and tells finish reasons itself, such as a server."""
        settings = settings or GenerationSettings()
        ids, mask = self._batch([prompt] if isinstance(prompt, str) else [list(prompt)])
        for tokens, _ in self._steps(ids, mask, settings, cancel):
            if tokens[0] in settings.stop_tokens:
                return
            yield tokens[0]

    def _steps(self, ids: torch.Tensor, mask: torch.Tensor, settings: GenerationSettings,
               cancel: threading.Event | None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Each step's chosen tokens (one per row) and logits, the prompt first, then one token at a time.

        Every call gets its own decoder state, and no lock or grad mode is held across a ``yield``:
        a server may advance the iterator from different threads and drop it at any point.
        """
        decoder = self.new_decoder()
        self._check_fits(decoder, ids, settings)
        sampler = Sampler(settings)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = decoder(ids, mask, positions)
        for step in range(settings.max_new_tokens):
            with torch.inference_mode():
                tokens = sampler(logits)
            yield tokens.tolist(), logits
            if step + 1 == settings.max_new_tokens or (cancel is not None and cancel.is_set()):
                return
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            with torch.inference_mode():
                logits = decoder(tokens.unsqueeze(1), mask, positions)

    def _batch(self, prompts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (batch, seq), left-padded with 0, and their attention mask."""
        rows = _as_rows(prompts, self.tokenizer)
        if not rows or any(not row for row in rows):
            raise DytDeployError("a prompt is empty: give at least one token (or one character) per prompt")
        width = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.int64)
        mask = torch.zeros(len(rows), width, dtype=torch.int64)
        for index, row in enumerate(rows):
            ids[index, width - len(row):] = torch.tensor(row, dtype=torch.int64)
            mask[index, width - len(row):] = 1
        return ids, mask

    @staticmethod
    def _check_fits(decoder: Decoder, ids: torch.Tensor, settings: GenerationSettings) -> None:
        bad = [t for t in ids.unique().tolist() if not 0 <= t < decoder.vocab_size]
        if bad:
            raise DytDeployError(f"token ids {bad[:5]} are outside the model's vocabulary "
                                 f"(0..{decoder.vocab_size - 1})")
        total = ids.shape[1] + settings.max_new_tokens
        if decoder.max_length is not None and total > decoder.max_length:
            raise DytDeployError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({settings.max_new_tokens}) = "
                                 f"{total} is more than the model's {decoder.max_length} positions; shorten either")


def _is_texts(prompts: Any) -> bool:
    return isinstance(prompts, list | tuple) and bool(prompts) and all(isinstance(p, str) for p in prompts)


def _as_rows(prompts: Any, tokenizer: Tokenizer) -> list[list[int]]:
    if isinstance(prompts, str):
        return [tokenizer.encode(prompts)]
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() not in (1, 2) or prompts.is_floating_point():
            raise DytDeployError(f"token ids must be an integer tensor (seq) or (batch, seq), not "
                                 f"{tuple(prompts.shape)} {prompts.dtype}")
        return prompts.reshape(-1, prompts.shape[-1]).tolist()
    if _is_texts(prompts):
        return [tokenizer.encode(p) for p in prompts]
    if isinstance(prompts, list | tuple) and prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]
    if isinstance(prompts, list | tuple) and all(isinstance(r, list | tuple) for r in prompts):
        return [list(map(int, row)) for row in prompts]
    raise DytDeployError(f"prompts must be a text, a list of texts, token ids or rows of token ids, "
                         f"not {type(prompts).__name__}")


class Sampler:
    """Picks one token per row from (batch, vocab) logits as ``settings`` say."""

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self.generator = torch.Generator()
        if settings.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(settings.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.settings.greedy:
            return logits.float().argmax(dim=-1)
        logits = scaled_logits(logits, self.settings.temperature)
        if self.settings.top_k:
            kth = logits.topk(min(self.settings.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.settings.top_p < 1:
            logits = _top_p(logits, self.settings.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


def scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` in float64, shifted so each row's maximum is 0: finite for every
    finite positive temperature (float32 ``logits / 1e-45`` overflows to inf, and softmax to NaN).
    Tokens below the maximum go to large negative numbers or -inf, so a tiny temperature puts all
    the probability on the most likely token(s)."""
    logits = logits.double()
    return (logits - logits.amax(dim=-1, keepdim=True)) / temperature


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the nucleus of probability ``top_p`` at -inf (the most
    likely token always stays)."""
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(ordered, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    ordered = ordered.masked_fill(before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)


def generate(model: Any, ids: str | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor, max_new_tokens: int = 32,
             *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop_tokens: Sequence[int] = (), tokenizer: Tokenizer | None = None,
             keep_logits: bool = False) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after ``ids`` (a text, token ids, rows of them, or a
    (batch, seq) tensor) with ``model`` (see :func:`decoder_factory`).

    The keywords are :class:`GenerationSettings` (defaults: greedy, no stop tokens);
    ``tokenizer`` encodes texts and decodes the result's ``text`` (default: bytes).
    """
    settings = GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_tokens))
    return Generator(model, tokenizer).generate(ids, settings, keep_logits=keep_logits)
