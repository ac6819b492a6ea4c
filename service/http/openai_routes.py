"""The OpenAI API for the models of the repository: ``GET /v1/models``, ``POST /v1/completions`` and
``/v1/chat/completions`` (text-generation models; streaming as ``chat.completion.chunk`` events and
``data: [DONE]``), ``POST /v1/embeddings`` (encoders). Wire format: :mod:`service.protocol.openai`.

A completion is a generate-extension request under another name: the OpenAI fields become a
:class:`~service.protocol.generate.GenerateRequest` and go through the same ``model.start`` as
``/generate`` (:mod:`service.http.generate_routes`), so the limits (``--max-generate-tokens``,
``--max-prompt-tokens``, the context, ``--max-generations``), the stop when the client leaves,
the generation statistics and the Prometheus counters are the same code. Chat prompts come from
the model's chat template (:mod:`service.models.chat`). Routes use only the model interface both
engines give (``registry.get``, ``manifest``, ``start``, ``infer``).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import BadRequest, ServiceError
from ..models.chat import TemplateRefused, chat_template_for
from ..models.embeddings import check_ids, encoder_feed, is_encoder, pooled, tokenizer_for
from ..protocol.generate import GenerateRequest, sse
from ..protocol.oip import parse_json_header
from ..protocol.openai import (
    CHAT_MAX_TOKENS,
    COMPLETION_MAX_TOKENS,
    MAX_EMBEDDING_INPUTS,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    OpenAIError,
    SamplingRequest,
    check_stream_options,
    error_body,
    generate_parameters,
    parse_body,
)
from .admission import request_body
from .auth import require_api_key
from .generate_routes import EventStream, collect, inline_schema
from .openai_errors import OPENAI_ERRORS, openai_errors
from .state import StateDep

log = logging.getLogger("dyt_deploy.service")
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)], responses=OPENAI_ERRORS)
DONE = b"data: [DONE]\n\n"
OWNER = "dyt-deploy"


# ------------------------------------------------------------------------------------------------
# Models


def task_of(model: Any) -> str:
    manifest = model.manifest or {}
    if manifest.get("task") == "text-generation" or getattr(model, "generative", False):
        return "text-generation"
    return "embeddings" if is_encoder(manifest) else "inference"


def model_card(model: Any) -> dict[str, Any]:
    folder = model_folders(model, None)[-1] if getattr(model, "folder", None) is not None else None
    created = int(folder.stat().st_mtime) if folder is not None and folder.exists() else 0
    return {"id": model.name, "object": "model", "created": created, "owned_by": OWNER, "task": task_of(model),
            "ready": bool(model.ready)}


@router.get("/models", response_model=ModelList)
@openai_errors
async def list_models(state: StateDep) -> dict[str, Any]:
    """Every model of the repository, with its task (text-generation, embeddings, inference) and readiness."""
    return {"object": "list", "data": [model_card(m) for m in state.registry.models.values()]}


@router.get("/models/{model_id}", response_model=ModelCard)
@openai_errors
async def retrieve_model(model_id: str, state: StateDep) -> dict[str, Any]:
    """One model (404 for an unknown name)."""
    return model_card(state.registry.get(model_id))


def model_folders(model: Any, settings: Any) -> list[Path]:
    """Where a model's tokenizer files may be: its version folder, then its folder."""
    folder = getattr(model, "folder", None)
    folder = Path(folder) if folder is not None else settings.repository_path / model.name
    return [folder / str(model.version), folder] if model.version else [folder]


def ready_model(state: Any, name: str, task: str) -> Any:
    """Model ``name``, ready (404, 503), for ``task`` (400 naming ``model`` otherwise)."""
    model = state.registry.get(name)
    model.require_ready()
    if task_of(model) != task:
        use = {"text-generation": "/v1/completions or /v1/chat/completions", "embeddings": "/v1/embeddings"}
        raise OpenAIError(f"model {name!r} is a {task_of(model)} model, not a {task} one"
                          + (f": use {use[task_of(model)]}" if task_of(model) in use else
                             f": use POST /v2/models/{name}/infer"), "model", "model_not_supported")
    return model


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object whose text UTF-8 can carry (400 otherwise)."""
    raw = parse_json_header(await request_body(request))
    try:
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the request holds text that is not valid Unicode (a lone surrogate such as \\ud800, "
                         "which no UTF-8 can carry); send text") from None
    return raw


# ------------------------------------------------------------------------------------------------
# Completions


async def started(model: Any, prompt: str, body: SamplingRequest, max_tokens: int | None, default: int,
                  prompt_field: str) -> Any:
    """The run of ``prompt`` through the generate extension's path; a refused limit names its field."""
    parameters = generate_parameters(body, max_tokens, default)
    try:
        return await model.start(GenerateRequest(text_input=prompt, parameters=parameters))
    except BadRequest as err:
        text = str(err)
        limit_field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        param = limit_field if text.startswith("max_tokens") else prompt_field
        code = "context_length_exceeded" if "context" in text or "over this server's limit" in text else None
        raise OpenAIError(text, param, code) from None


def usage_of(run: Any) -> dict[str, int]:
    summary = run.summary()
    prompt, output = summary["prompt_tokens"], summary["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def finish_reason(run: Any) -> str | None:
    reason = run.summary()["finish_reason"]
    return reason if reason in ("stop", "length") else None


def envelope(kind: str, model: Any) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model.name}


async def chunks(run: Any, head: dict[str, Any], piece_of: Any, include_usage: bool,
                 first: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
    """A stream's events: ``first`` (the chat role), a chunk per non-empty piece, the finish reason,
    the usage (``include_usage``), then ``[DONE]``; an error after it began: ``{"error": ...}``."""
    usage = {"usage": None} if include_usage else {}
    try:
        if first is not None:
            yield sse({**head, "choices": [first], **usage})
        async with aclosing(run.pieces()) as pieces:
            async for _index, piece in pieces:
                if piece:
                    yield sse({**head, "choices": [piece_of(piece, None)], **usage})
        yield sse({**head, "choices": [piece_of(run.rest(), finish_reason(run))], **usage})
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage_of(run)})
    except ServiceError as err:
        yield sse(error_body(err.status, str(err)))
    except Exception as err:  # the answer has begun: only an event can tell the client
        log.exception("OpenAI stream on %s failed", head["model"])
        yield sse(error_body(500, f"internal server error: {type(err).__name__}"))
    finally:
        run.close()
    yield DONE


def completion_choice(text: str, reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}


def chat_delta(text: str, reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": {"content": text} if text or reason is None else {}, "finish_reason": reason,
            "logprobs": None}


def include_usage(body: SamplingRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def completions(request: Request, state: StateDep) -> Any:
    """Text completion of ``prompt`` (a string, or a list of one); streaming with ``stream``."""
    body = parse_body(CompletionRequest, await read_json(request))
    check_stream_options(body)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise OpenAIError(f"prompt must be a string or a list of one string (got {len(prompt)}): one "
                              "completion per request", "prompt", "unsupported_parameter")
        prompt = prompt[0]
    model = ready_model(state, body.model, "text-generation")
    run = await started(model, prompt, body, body.max_tokens, COMPLETION_MAX_TOKENS, "prompt")
    if body.stream:
        return EventStream(chunks(run, envelope("text_completion", model), completion_choice, include_usage(body)),
                           run)
    text = await collect(request, model, run)
    return JSONResponse({**envelope("text_completion", model), "choices": [completion_choice(text, finish_reason(run))],
                         "usage": usage_of(run)})


def message_text(message: Any, index: int) -> str:
    """A message's content as text (text parts joined; other parts refused)."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    for part in content:
        if part.type != "text" or part.text is None:
            raise OpenAIError(f"messages.{index}: content part of type {part.type!r}: only text parts are "
                              "supported", "messages")
    return "".join(part.text for part in content)


async def chat_completions(request: Request, state: StateDep) -> Any:
    """Chat completion of ``messages`` (the model's chat template makes the prompt); streaming with
    ``stream`` as ``chat.completion.chunk`` events."""
    body = parse_body(ChatCompletionRequest, await read_json(request))
    check_stream_options(body)
    model = ready_model(state, body.model, "text-generation")
    messages = [{"role": m.role, "content": message_text(m, i), **({"name": m.name} if m.name else {})}
                for i, m in enumerate(body.messages)]
    try:
        prompt = chat_template_for(model_folders(model, state.settings)).render(messages)
    except TemplateRefused as err:
        raise OpenAIError(str(err), "messages", "invalid_messages") from None
    max_tokens = body.max_completion_tokens or body.max_tokens
    run = await started(model, prompt, body, max_tokens, CHAT_MAX_TOKENS, "messages")
    if body.stream:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
        return EventStream(chunks(run, envelope("chat.completion.chunk", model), chat_delta, include_usage(body),
                                  role), run)
    text = await collect(request, model, run)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(run),
              "logprobs": None}
    return JSONResponse({**envelope("chat.completion", model), "choices": [choice], "usage": usage_of(run)})


# ------------------------------------------------------------------------------------------------
# Embeddings


def token_rows(given: Any, tokenizer: Any) -> list[list[int]]:
    """The inputs as token ids: texts encoded, ids as given."""
    if isinstance(given, str):
        given = [given]
    if not given:
        raise OpenAIError("input is empty: give a text, a list of texts or token ids", "input")
    if all(isinstance(item, int) for item in given):
        given = [given]
    if len(given) > MAX_EMBEDDING_INPUTS:
        raise OpenAIError(f"{len(given)} inputs, at most {MAX_EMBEDDING_INPUTS} per request", "input")
    return [tokenizer.encode(item) if isinstance(item, str) else list(item) for item in given]


async def embeddings(request: Request, state: StateDep) -> Any:
    """Pooled embeddings of each input (texts or token ids) from an encoder model; ``encoding_format``
    base64 sends float32 little-endian bytes."""
    body = parse_body(EmbeddingRequest, await read_json(request))
    model = ready_model(state, body.model, "embeddings")
    rows = token_rows(body.input, tokenizer_for(model_folders(model, state.settings)))
    data = []
    for index, ids in enumerate(rows):
        try:
            check_ids(ids, model.manifest, index, state.settings.max_prompt_tokens)
        except BadRequest as err:
            code = "context_length_exceeded" if "over the limit" in str(err) else None
            raise OpenAIError(str(err), "input", code) from None
        feed = encoder_feed(ids, model.manifest)
        try:
            outputs, _queue_s, _infer_s = await model.infer(feed)
        except ServiceError:
            raise
        except Exception as err:  # the runtime refused inputs that passed the checks
            raise OpenAIError(f"model {model.name!r} could not embed input {index}: {type(err).__name__}: {err}",
                              "input") from err
        vector = pooled(outputs, feed.get("attention_mask"))
        if body.dimensions is not None and body.dimensions != vector.size:
            raise OpenAIError(f"model {model.name!r} embeds in {vector.size} dimensions; dimensions "
                              f"{body.dimensions} is not supported (no truncation)", "dimensions")
        data.append({"object": "embedding", "index": index, "embedding": encoded(vector, body.encoding_format)})
    tokens = sum(len(ids) for ids in rows)
    return JSONResponse({"object": "list", "data": data, "model": model.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def encoded(vector: np.ndarray, encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")
    return [float(v) for v in vector]


# ------------------------------------------------------------------------------------------------
# Registration, with the bodies and streams the OpenAPI document shows


def body_of(model: Any) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}


def answers(model: Any, stream: str) -> dict[str, Any]:
    """The 200 answer: JSON, or with ``stream`` server-sent events ending with ``data: [DONE]``."""
    return {"200": {"description": f"the answer; with stream: server-sent events, each `data: {{json}}` ({stream}), "
                                   "then `data: [DONE]`",
                    "content": {"application/json": {"schema": inline_schema(model)},
                                "text/event-stream": {"schema": {"type": "string"}}}}}


for path, endpoint, request_model, answer, stream in (
        ("/completions", completions, CompletionRequest, CompletionResponse, "text_completion chunks"),
        ("/chat/completions", chat_completions, ChatCompletionRequest, ChatCompletionResponse,
         "chat.completion.chunk"),
        ("/embeddings", embeddings, EmbeddingRequest, EmbeddingResponse, "")):
    extra = {**body_of(request_model), **({"responses": answers(answer, stream)} if stream else {})}
    router.add_api_route(path, openai_errors(endpoint), methods=["POST"], name=f"openai_{endpoint.__name__}",
                         operation_id=f"openai_{endpoint.__name__}", openapi_extra=extra,
                         response_model=None if stream else answer, response_class=JSONResponse)
