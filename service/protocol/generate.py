"""Triton's generate extension: the request and answer of ``POST /v2/models/{m}/generate`` and
``/generate_stream``, stop sequences in the text, and the server-sent events of a stream.

Request (JSON)::

    {"id": "optional, echoed", "text_input": "the prompt",
     "parameters": {"max_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": null,
                    "stop": "a string, or a list of them"}}

Every parameter is optional (defaults: 32 tokens, greedy). Types are strict (``"5"`` is not a
number, ``true`` is not an integer) and an unknown field is refused, naming the known ones.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadRequest, ServiceError
from .oip import parse_json_header

DEFAULT_MAX_TOKENS = 32
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_SEED = (1 << 63) - 1
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class GenerateParameters(BaseModel):
    """How to generate (Triton's ``parameters`` of a generate request)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, description="the most tokens to generate (the server's "
                            "--max-generate-tokens bounds it)")
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False, description="0: greedy; above 0: sample from "
                               "softmax(logits / temperature)")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: all)")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="sample from the smallest set of "
                         "most likely tokens whose probability reaches top_p (1: all)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="sampling seed: the same seed, prompt and "
                             "model give the same text (null: a random one)")
    stop: StopText | list[StopText] | None = Field(None, description="stop sequences: the text ends before "
                                                   "the first of them (which is not included)")

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class GenerateRequest(BaseModel):
    """A generate request's body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, max_length=256, description="echoed in the answer")
    # not empty: checked with the other limits, all reported at once (GenerativeModel.start)
    text_input: str = Field(description="the prompt (not empty)", json_schema_extra={"minLength": 1})
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class GenerateResponse(BaseModel):
    """The answer of ``/generate`` (and, less ``text_output``'s whole text, the last event of a stream)."""

    id: str | None = Field(None, description="the request's id, when it gave one")
    model_name: str
    model_version: str
    text_output: str = Field(description="the generated text (the prompt not included)")
    finish_reason: str = Field(description="stop (a stop sequence or the model's end-of-text token), length "
                               "(max_tokens reached) or cancelled (the client went away)")
    prompt_tokens: int = Field(description="tokens of the prompt, in the model's tokenizer")
    output_tokens: int = Field(description="tokens generated (those of a stop sequence included)")
    time_to_first_token_ms: float | None = Field(description="from the generation's start (its admission) to "
                                                 "its first token; null when none came")
    tokens_per_s: float = Field(description="output_tokens over the seconds from the start to the last token")


class GenerateTokenEvent(BaseModel):
    """An event of ``/generate_stream`` per token (the last event is a :class:`GenerateResponse` with
    the rest of the text; an error after the stream began is ``{"error": ...}``)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="the request's id, when it gave one")
    model_name: str
    model_version: str
    text_output: str = Field(description="this token's text (may be empty while a character is incomplete "
                             "or a stop sequence may begin)")
    index: int = Field(ge=0, description="the token's position in the output, from 0")


class StreamError(BaseModel):
    """The event of a stream that failed after it began."""

    model_config = ConfigDict(extra="forbid")

    error: str


class GenerationFailed(ServiceError):
    """The model failed while generating (500)."""

    status = 500


EMPTY_PROMPT = "text_input is empty: give a prompt of at least one token"
KNOWN_FIELDS = {"body": list(GenerateRequest.model_fields), "parameters": list(GenerateParameters.model_fields)}
LIMIT_FIELDS = {"seed": f"an integer from 0 to {MAX_SEED}", "stop": f"a string or a list of at most "
                f"{MAX_STOP_SEQUENCES} strings of 1 to {MAX_STOP_CHARS} characters"}


def parse_generate_request(body: bytes) -> GenerateRequest:
    """The body as a :class:`GenerateRequest`; every problem at once in one 400 (an unknown field
    names the known ones)."""
    raw = parse_json_header(body)
    for field, text in _texts(raw):
        if not is_unicode(text):
            raise BadRequest(f"invalid generate request: {field} is not valid Unicode text (it holds a lone "
                             "surrogate, such as \\ud800, that no UTF-8 can carry); send text")
    try:
        request = GenerateRequest.model_validate(raw)
    except ValidationError as err:
        raise BadRequest("invalid generate request: " + "; ".join(_problem(e) for e in _merged(err))) from None
    if len(request.parameters.stop_sequences) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"invalid generate request: parameters.stop: {len(request.parameters.stop_sequences)} "
                         f"stop sequences, at most {MAX_STOP_SEQUENCES}")
    return request


def _texts(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's strings by field (id, text_input, each stop sequence), whatever else is wrong."""
    parameters = raw.get("parameters")
    stop = parameters.get("stop") if isinstance(parameters, dict) else None
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    found = [("id", raw.get("id")), ("text_input", raw.get("text_input")), *(("parameters.stop", s) for s in stops)]
    return [(field, text) for field, text in found if isinstance(text, str)]


def is_unicode(text: str) -> bool:
    """Whether ``text`` is Unicode text UTF-8 can carry (JSON's ``\\ud800`` escapes decode to lone
    surrogates, which it cannot: a tokenizer, or the answer, would fail on them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _merged(err: ValidationError) -> list[dict[str, Any]]:
    """The errors, one per field (``stop``'s union gives one per member type: reported once)."""
    seen: dict[tuple, dict[str, Any]] = {}
    for error in err.errors():
        location = tuple(error["loc"])
        location = location[:2] if location[:2] == ("parameters", "stop") else location
        seen.setdefault(location, {**error, "loc": location})
    return list(seen.values())


def _problem(error: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in error["loc"]) or "body"
    if error["type"] == "extra_forbidden" and error["loc"][0] == "parameters":
        return f"unknown parameter {error['loc'][-1]!r}; known parameters: {', '.join(KNOWN_FIELDS['parameters'])}"
    if error["type"] == "extra_forbidden":
        return f"unknown field {location!r}; known fields: {', '.join(KNOWN_FIELDS['body'])}"
    name = str(error["loc"][-1]) if error["loc"] else ""
    if name in LIMIT_FIELDS and error["loc"][0] == "parameters":
        return f"{location}: must be {LIMIT_FIELDS[name]} (got {json.dumps(error.get('input'))[:80]})"
    return f"{location}: {error['msg']} (got {json.dumps(error.get('input'), default=str)[:80]})"


class StopSequences:
    """Cuts generated text at the first stop sequence: ``push(piece)`` returns the text that is safe
    to send (held back: a tail that may be the start of a stop sequence) and whether a stop
    sequence has appeared; ``flush()`` returns what was held back (at the end, no stop seen)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.pending + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped, self.pending = True, ""
            return text[:min(found)]
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])),
                   default=0)
        self.pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``event`` as JSON."""
    return b"data: " + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
