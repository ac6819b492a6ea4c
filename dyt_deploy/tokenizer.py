"""Tokenizers for generation: a model folder's own ``tokenizer.json``, or bytes for the zoo's decoders.

Both give ``encode(text) -> list[int]`` and ``decode(ids) -> str``; :class:`TextStream` turns a
token-at-a-time stream into text pieces without splitting a multi-byte character.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .errors import DytDeployError, MissingBackendError, first_line

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    """What generation needs of a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: text in, text out for a model with no tokenizer of its own
    (the zoo's decoders; their vocabulary must hold at least 256 ids). Undecodable bytes show as U+FFFD."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as err:
            raise DytDeployError(f"the text is not valid Unicode: {err.reason} at character {err.start} "
                                 f"({text[err.start:err.end]!r}); pass text UTF-8 can carry") from None

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class FileTokenizer:
    """A ``tokenizer.json`` (Hugging Face ``tokenizers`` format), read with the ``tokenizers`` package."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise MissingBackendError("reading tokenizer.json needs tokenizers: pip install 'dyt-deploy[generate]'") \
                from None
        try:
            self._tokenizer = HFTokenizer.from_file(str(path))
        except Exception as err:  # the tokenizers library raises its own Exception type for bad files
            raise DytDeployError(f"{path}: not a readable tokenizer.json ({first_line(err)})") from None
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.path = Path(path)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


def load_tokenizer(source: str | Path | None) -> Tokenizer:
    """The tokenizer of ``source``: a model folder with ``tokenizer.json``, the file itself, or None
    for the byte-level tokenizer."""
    if source is None:
        return ByteTokenizer()
    path = Path(source)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise DytDeployError(f"{path}: no {TOKENIZER_FILE}; pass a folder that has one, or use the byte tokenizer")
    return FileTokenizer(file)


class TextStream:
    """Decodes a growing list of token ids piece by piece: ``push(id)`` returns the new text (may be
    empty while a multi-byte character or a merge is incomplete); ``flush()`` returns what is left."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already returned

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next bytes
            return ""
        return self._take(text)

    def flush(self) -> str:
        return self._take(self.tokenizer.decode(self.ids))

    def _take(self, text: str) -> str:
        piece, self.sent = text[self.sent:], max(self.sent, len(text))
        return piece
