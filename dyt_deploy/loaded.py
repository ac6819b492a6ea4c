"""``LoadedModel``: a model read from disk and what is known about it, the one result every reader
returns (``checkpoint`` for files, ``hf`` for Hugging Face folders). Below both, so each can name it
without importing the other. Imports torch only for the type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class LoadedModel:
    """A model read from disk, with what is known about it.

    ``arch``/``config``/``norm`` are None for formats that do not record them (a ``.pt2``
    program or a pickled module of unknown class). ``source_format`` names the format read.
    ``weights`` names the entry of a training checkpoint the weights came from (``model``,
    ``model_ema``, ``state_dict``, ...); None for files that hold one set of weights.
    """

    model: nn.Module
    source_format: str
    arch: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    norm: str | None = None
    path: Path | None = None
    weights: str | None = None
