"""Tiny random Hugging Face models written with ``save_pretrained``, for the folder tests (no hub).

Each family is built from a small config (hidden 32, 2 layers, vocabulary 100), optionally
converted to DyT with ``convert_norms`` and given random DyT parameters (alpha per site, gamma,
beta), so a loader that misplaces a site or drops a parameter changes the outputs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dyt_deploy.nn import Derf, DynamicTanh, convert_norms

transformers = pytest.importorskip("transformers")  # importing this module skips the importing tests without it


def tiny_model(family: str, seed: int = 0) -> nn.Module:
    """A randomly initialised model of ``family`` ("llama", "qwen2", "bert", "vit"), in eval mode."""
    torch.manual_seed(seed)
    t = transformers
    # initializer_range: weights 10x transformers' default, so attention and every layer move the outputs
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 100,
            "max_position_embeddings": 64, "initializer_range": 0.2}
    decoder = {**text, "num_attention_heads": 4, "num_key_value_heads": 2}
    if family == "llama":  # tied LM head: save_pretrained writes the embedding once
        model = t.LlamaForCausalLM(t.LlamaConfig(**decoder, tie_word_embeddings=True))
    elif family == "qwen2":
        model = t.Qwen2ForCausalLM(t.Qwen2Config(**decoder, tie_word_embeddings=False))
    elif family == "bert":
        model = t.BertForSequenceClassification(t.BertConfig(**text, num_attention_heads=2, num_labels=3))
    elif family == "vit":
        model = t.ViTForImageClassification(t.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                                        num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=64, num_labels=5, initializer_range=0.2))
    else:
        raise ValueError(family)
    return model.eval()


def to_dyt(model: nn.Module, seed: int = 0, to: str = "dyt") -> int:
    """Convert every norm of ``model`` to ``to`` and randomise the new layers' parameters; the site count."""
    report = convert_norms(model, to=to)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DynamicTanh | Derf):
                for param in module.parameters():
                    param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return len(report)


def write_folder(path: Path, family: str, dyt: bool = True, **save: Any) -> tuple[nn.Module, Path]:
    """A tiny ``family`` model (DyT-converted when ``dyt``) saved with ``save_pretrained(path, **save)``.

    ``safe_serialization=False`` writes ``pytorch_model.bin``: through ``save_pretrained`` where the
    installed transformers still takes it (4.x), else as 4.x wrote it (``torch.save`` of the state dict).
    """
    model = tiny_model(family)
    if dyt:
        to_dyt(model)
    safe = save.pop("safe_serialization", True)
    if not safe and "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save["safe_serialization"] = False
    model.save_pretrained(path, **save)
    if not safe and (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    return model, path


def example_feed(family: str, batch: int = 2, seq: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for ``family``: token ids with a padding mask (text), or images (vision)."""
    generator = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=generator)}
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq - 3:] = 0  # the first sequence is padded at the end
    feed = {"input_ids": torch.randint(0, 100, (batch, seq), generator=generator), "attention_mask": mask}
    if family == "bert":
        feed["token_type_ids"] = (torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous()
    return feed
