"""dyt-export --task text-generation on Hugging Face causal LM folders (DyT-converted LLaMA with a tied
head, Qwen2 with grouped key/value heads): greedy decoding equals PyTorch, onnxruntime-genai agrees."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import dyt_deploy
from dyt_deploy.export import export_onnx
from tests.export.genai_testlib import genai_greedy
from tests.export.hf_folders import write_folder

PROMPT = [5, 17, 42, 7, 9]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A DyT Qwen2 folder and its text-generation export, shared by the module's tests."""
    root = tmp_path_factory.mktemp("qwen2")
    _, folder = write_folder(root / "qwen2", "qwen2")
    return folder, export_onnx(folder, root / "out", task="text-generation")


@pytest.mark.parametrize(("family", "fold"), [("qwen2", False), pytest.param("llama", True, marks=pytest.mark.slow)])
def test_a_hugging_face_decoder_exports_with_its_cache(tmp_path: Path, qwen2, family: str, fold: bool) -> None:
    if family == "qwen2":
        result = qwen2[1]
    else:
        _, folder = write_folder(tmp_path / family, family)
        result = export_onnx(folder, tmp_path / "out", task="text-generation", fold=fold)
    assert result.decoding["passed"] and result.decoding["tokens_equal"], result.decoding
    past = onnx.load(result.onnx_path, load_external_data=False).graph.input[3].type.tensor_type.shape.dim
    assert past[1].dim_value == 2 and past[3].dim_value == 8  # the 2 key/value heads of 32/4-wide heads
    if fold:
        assert result.fold.folded > 0
    config = json.loads((result.model_dir / "genai_config.json").read_text())
    assert config["model"]["type"] == family and config["model"]["decoder"]["num_key_value_heads"] == 2


def test_onnxruntime_genai_runs_the_exported_qwen2(qwen2) -> None:
    folder, result = qwen2
    eos = json.loads((result.model_dir / "genai_config.json").read_text())["model"]["eos_token_id"]
    tokens = genai_greedy(result.model_dir, PROMPT, 16, eos)
    expected = dyt_deploy.generate(dyt_deploy.load_model(folder), PROMPT, 16, stop_tokens=[eos]).tokens[0]
    assert tokens == expected
