"""dyt_deploy.generate on Hugging Face causal LMs (DyT-converted LLaMA and Qwen2 folders, their own
cache): the same tokens as transformers' own greedy generate, and a folder's tokenizer.json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dyt_deploy
from dyt_deploy.errors import DytDeployError
from dyt_deploy.hf import load_folder
from dyt_deploy.tokenizer import FileTokenizer, load_tokenizer
from tests.export.hf_folders import write_folder

tokenizers = pytest.importorskip("tokenizers")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generation_matches_transformers_greedy(tmp_path: Path, family: str) -> None:
    original, folder = write_folder(tmp_path / family, family)
    loaded = load_folder(folder).model
    prompt = [[5, 17, 42, 7, 9], [8, 1, 3, 2, 6]]
    ours = dyt_deploy.generate(loaded, prompt, 12)
    with torch.no_grad():
        theirs = original.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                   pad_token_id=0, eos_token_id=None)
    assert ours.tokens == theirs[:, 5:].tolist()


def _word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("the model norm tanh layer is a dyt".split())}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def test_a_folder_tokenizer_turns_text_into_ids_and_back(tmp_path: Path) -> None:
    _, folder = write_folder(tmp_path / "llama", "llama")
    tokenizer = load_tokenizer(_word_tokenizer(folder))
    assert isinstance(tokenizer, FileTokenizer) and tokenizer.encode("the dyt layer") == [1, 8, 5]
    result = dyt_deploy.generate(load_folder(folder).model, "the dyt layer", 6, tokenizer=tokenizer)
    assert result.prompt_tokens == 3 and result.text == [tokenizer.decode(result.tokens[0])]


def test_a_folder_without_a_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DytDeployError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
