"""onnxruntime-genai's greedy decoding of an exported text-generation folder, for the tests that
check it generates what ``dyt_deploy.generate`` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest


def genai_greedy(folder: Path, prompt: Sequence[int], new_tokens: int, eos: int) -> list[int]:
    """Up to ``new_tokens`` greedy tokens after ``prompt`` from the folder holding genai_config.json,
    without the end-of-text token ``eos`` at the end (onnxruntime-genai returns it; dyt_deploy.generate,
    given it as a stop token, does not). Skips the test where onnxruntime-genai is not installed."""
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([list(prompt)], dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens[:-1] if tokens and tokens[-1] == eos else tokens
