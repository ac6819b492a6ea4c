"""The OpenAI API's wire format, as far as dyt-serve speaks it: the request and answer bodies of
``/v1/completions``, ``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models``, the error body,
the parameters this server refuses, and the mapping of a request's sampling fields onto the
generate extension's :class:`~service.protocol.generate.GenerateParameters` (one generation path,
two protocols).

Unknown fields are accepted and ignored (``extra="allow"``), as vLLM does, so a newer client never
fails on a field it adds; fields that would change the answer in a way this server cannot honour
(``n`` > 1, ``logprobs``, ``tools``, ``suffix``, penalties ...) are refused with a 400 naming them
(:func:`unsupported_parameter`). Types are strict: ``"0.5"`` is not a number.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BadRequest
from .generate import MAX_SEED, MAX_STOP_SEQUENCES, GenerateParameters

COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions
CHAT_MAX_TOKENS = 32  # without max_completion_tokens / max_tokens: the generate extension's default
MAX_EMBEDDING_INPUTS = 64
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable_error", 504: "timeout_error"}


class OpenAIBody(BaseModel):
    """A request body: strict types, unknown fields kept (and ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(OpenAIBody):
    include_usage: bool | None = Field(None, description="one more event before [DONE]: no choices, the usage")


class SamplingRequest(OpenAIBody):
    """The fields /v1/completions and /v1/chat/completions share."""

    model: str = Field(description="a text-generation model's name (GET /v1/models)")
    max_tokens: int | None = Field(None, ge=1, description="the most tokens to generate (the server's "
                                   "--max-generate-tokens and the model's context bound it)")
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False, description="0 (default): greedy")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling (1: all)")
    top_k: int | None = Field(None, ge=0, description="not OpenAI's: sample from the k most likely tokens "
                              "(0: all), as vLLM accepts it")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed, prompt and model give the "
                             "same text")
    stop: str | list[str] | None = Field(None, description="stop sequences, left out of the text")
    n: int | None = Field(None, description="choices per request: only 1")
    stream: bool | None = Field(None, description="server-sent events, ending with data: [DONE]")
    stream_options: StreamOptions | None = Field(None, description="only with stream")
    user: str | None = None


class CompletionRequest(SamplingRequest):
    """POST /v1/completions (the legacy text completion)."""

    prompt: str | list[str] = Field(description="the prompt: a string (or a list of one string)")


class ContentPart(OpenAIBody):
    type: str = Field(description="only text parts")
    text: str | None = None


class ChatMessage(OpenAIBody):
    role: str = Field(description="system, developer, user or assistant (what the chat template takes)")
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation, rendered with the "
                                        "model's chat template")
    max_completion_tokens: int | None = Field(None, ge=1, description="max_tokens' newer name; wins over it")


class EmbeddingRequest(OpenAIBody):
    """POST /v1/embeddings."""

    model: str = Field(description="an encoder model's name (GET /v1/models, task embeddings)")
    input: str | list[str] | list[int] | list[list[int]] = Field(description="texts, or token ids")
    encoding_format: Literal["float", "base64"] | None = Field(None, description="base64: float32 little-endian")
    dimensions: int | None = Field(None, ge=1, description="only the model's own width")
    user: str | None = None


# ---------------------------------------------------------------------------------------------
# Answers (documented in the OpenAPI document; the routes build plain dicts of the same shape)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    task: str = Field(description="text-generation (completions, chat), embeddings, or inference (OIP only)")
    ready: bool


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """Every refusal under /v1/: the shape the openai client reads (``.message``, ``.param``, ...)."""

    error: OpenAIErrorDetail


class OpenAIError(BadRequest):
    """A refused request that names the field (``param``) and a machine-readable ``code``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body for an answer of ``status``."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------
# Reading requests

# field -> (is the value one this server cannot honour?, why); checked on the raw body
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "n": (lambda v: v not in (None, 1), "n must be 1: this server returns one choice per request"),
    "best_of": (lambda v: v not in (None, 1), "best_of is not supported (one choice per request)"),
    "suffix": (lambda v: v not in (None, ""), "suffix is not supported (no insertion)"),
    "echo": (lambda v: v not in (None, False), "echo is not supported"),
    "logprobs": (lambda v: v not in (None, False), "logprobs are not supported"),
    "top_logprobs": (lambda v: v not in (None, 0), "top_logprobs are not supported (no logprobs)"),
    "logit_bias": (lambda v: v not in (None, {}), "logit_bias is not supported"),
    "presence_penalty": (lambda v: v not in (None, 0, 0.0), "presence_penalty is not supported (only 0)"),
    "frequency_penalty": (lambda v: v not in (None, 0, 0.0), "frequency_penalty is not supported (only 0)"),
    "tools": (lambda v: v is not None, "tools (function calling) are not supported"),
    "functions": (lambda v: v is not None, "functions (function calling) are not supported"),
    "tool_choice": (lambda v: v not in (None, "none"), "tool_choice is not supported (no tools)"),
    "function_call": (lambda v: v not in (None, "none"), "function_call is not supported (no tools)"),
    "response_format": (lambda v: v is not None and v != {"type": "text"},
                        "response_format other than text (JSON mode, schemas) is not supported"),
    "audio": (lambda v: v is not None, "audio output is not supported"),
    "modalities": (lambda v: v not in (None, ["text"]), "only the text modality is supported"),
}


def unsupported_parameter(raw: dict[str, Any]) -> OpenAIError | None:
    """The 400 for the first field of ``raw`` set to what this server cannot do (None: none is)."""
    for field, (refused, why) in UNSUPPORTED.items():
        if field in raw and refused(raw[field]):
            given = json.dumps(raw[field], default=str)[:80]
            return OpenAIError(f"{why} (got {given})", field, "unsupported_parameter")
    return None


def parse_body(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """``raw`` as ``model``; the first problem as a 400 naming its field."""
    problem = unsupported_parameter(raw)
    if problem is not None:
        raise problem
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise OpenAIError(f"invalid request: {problems}", where.split(".")[0] or None) from None


def check_stream_options(request: SamplingRequest) -> None:
    if request.stream_options is not None and not request.stream:
        raise OpenAIError("stream_options is only allowed with stream: true", "stream_options")


def generate_parameters(request: SamplingRequest, max_tokens: int | None, default_max_tokens: int) -> \
        GenerateParameters:
    """The generate extension's parameters for an OpenAI request (greedy unless temperature > 0)."""
    fields: dict[str, Any] = {"max_tokens": max_tokens or default_max_tokens}
    for name in ("temperature", "top_p", "top_k", "seed", "stop"):
        value = getattr(request, name)
        if value is not None:
            fields[name] = value
    if fields.get("stop") == []:
        del fields["stop"]
    stops = fields.get("stop")
    if isinstance(stops, list) and len(stops) > MAX_STOP_SEQUENCES:
        raise OpenAIError(f"stop: {len(stops)} stop sequences, at most {MAX_STOP_SEQUENCES}", "stop")
    try:
        return GenerateParameters(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise OpenAIError(f"invalid request: {first['loc'][0]}: {first['msg']}", str(first["loc"][0])) from None
