"""Encoder models as ``/v1/embeddings`` serves them: which models are encoders, the feed of one
text, and the pooled embedding of its outputs.

An encoder is a model whose inputs are text inputs only (``input_ids``, with ``attention_mask``
and ``token_type_ids`` where it has them): the zoo's BERT-style encoders and Hugging Face encoder
folders. Its texts are encoded with the folder's ``tokenizer.json`` (the version folder's, then the
model folder's), else as UTF-8 bytes (the zoo's vocabularies are at least 256 ids).

The embedding of a text (:func:`pooled`), in this order:

1. an output named ``sentence_embedding`` or ``text_embeds`` (already pooled by the model);
2. ``last_hidden_state`` (1, seq, width): its mean over the tokens the attention mask keeps;
3. ``pooler_output``, else the model's only 2-D output (1, width), as the model pools it: for the
   zoo's BERT classifier, its logits (a width-2 embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dyt_deploy.tokenizer import TOKENIZER_FILE, ByteTokenizer, FileTokenizer, Tokenizer

from ..errors import BadRequest

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POOLED_NAMES = ("sentence_embedding", "text_embeds")
INT_DTYPES = {"int64": np.int64, "int32": np.int32}


def is_encoder(manifest: Mapping[str, Any]) -> bool:
    """Whether a model (by its dyt.json) embeds text: text inputs only, not a decoder."""
    names = [t.get("name") for t in manifest.get("inputs", []) if isinstance(t, dict)]
    return manifest.get("task") != "text-generation" and "input_ids" in names and set(names) <= set(TEXT_INPUTS)


def context_of(manifest: Mapping[str, Any]) -> int | None:
    """The most positions the encoder takes (None: dyt.json does not say)."""
    config = manifest.get("config") or {}
    for key in ("max_positions", "max_position_embeddings", "max_seq_len"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def vocabulary_of(manifest: Mapping[str, Any]) -> int | None:
    value = (manifest.get("config") or {}).get("vocab_size")
    return int(value) if isinstance(value, int) else None


@lru_cache(maxsize=64)
def _file_tokenizer(path: str, modified_ns: int) -> FileTokenizer:
    return FileTokenizer(path)


def tokenizer_for(folders: list[Path]) -> Tokenizer:
    """The first of ``folders`` with a tokenizer.json, else bytes."""
    for folder in folders:
        path = folder / TOKENIZER_FILE
        if path.is_file():
            return _file_tokenizer(str(path), path.stat().st_mtime_ns)
    return ByteTokenizer()


def check_ids(ids: list[int], manifest: Mapping[str, Any], index: int, max_tokens: int) -> None:
    """A 400 when input ``index`` is empty, longer than the model's context (or ``max_tokens``), or
    holds ids outside the vocabulary."""
    context = context_of(manifest)
    limit = min(max_tokens, context) if context else max_tokens
    if not ids:
        raise BadRequest(f"input {index} is empty: give at least one token")
    if len(ids) > limit:
        raise BadRequest(f"input {index} is {len(ids)} tokens, over the limit of {limit} (the model's context "
                         "and --max-prompt-tokens); shorten it")
    vocabulary = vocabulary_of(manifest)
    outside = sorted({i for i in ids if i < 0 or (vocabulary is not None and i >= vocabulary)})
    if outside:
        raise BadRequest(f"input {index} has token ids {outside[:5]} outside the model's vocabulary of "
                         f"{vocabulary}")


def encoder_feed(ids: list[int], manifest: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The feed of one text's token ids: (1, seq) for every text input the model has."""
    feed = {}
    for tensor in manifest["inputs"]:
        dtype = INT_DTYPES.get(str(tensor.get("dtype")), np.int64)
        name = tensor["name"]
        if name == "input_ids":
            feed[name] = np.asarray([ids], dtype=dtype)
        elif name == "attention_mask":
            feed[name] = np.ones((1, len(ids)), dtype=dtype)
        else:
            feed[name] = np.zeros((1, len(ids)), dtype=dtype)
    return feed


def pooled(outputs: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> np.ndarray:
    """One text's embedding from the model's outputs (see the module docstring), float32."""
    for name in POOLED_NAMES:
        if name in outputs:
            return np.asarray(outputs[name], dtype=np.float32).reshape(-1)
    hidden = outputs.get("last_hidden_state")
    if hidden is not None and np.ndim(hidden) == 3:
        keep = np.ones(hidden.shape[:2], np.float32) if mask is None else np.asarray(mask, np.float32)
        total = (np.asarray(hidden, np.float32) * keep[..., None]).sum(axis=1)
        return (total / np.maximum(keep.sum(axis=1, keepdims=True), 1.0))[0]
    if "pooler_output" in outputs:
        return np.asarray(outputs["pooler_output"], dtype=np.float32)[0]
    flat = [a for a in outputs.values() if np.ndim(a) == 2]
    if len(flat) == 1:
        return np.asarray(flat[0], dtype=np.float32)[0]
    raise BadRequest(f"the model's outputs ({', '.join(outputs)}) hold no embedding: it needs last_hidden_state, "
                     "pooler_output, sentence_embedding or a single (batch, width) output")
