"""dyt-export --task text-generation --repository R --name N: Triton's layout (config.pbtxt, dyt.json,
1/model.onnx, 1/genai_config.json) with named dynamic dims, the source folder's tokenizer copied
beside genai_config.json, onnxruntime-genai opening R/N/1, and dyt-check decoding such a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dyt_deploy
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import check_app, export_app
from dyt_deploy.export import export_onnx
from dyt_deploy.models import create_model
from dyt_deploy.triton_config import read_config
from tests.export.genai_testlib import genai_greedy

TINY = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}
PROMPT = [72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A DyT zoo decoder's model.pt and its model folder, written by the command line."""
    root = tmp_path_factory.mktemp("textgen-repo")
    checkpoint = save_checkpoint(create_model("llama_tiny", norm="dyt", **TINY), root / "llama-dyt.pt")
    result = CliRunner().invoke(export_app, [str(checkpoint), "--task", "text-generation", "--repository",
                                             str(root / "repo"), "--name", "llm-dyt"])
    assert result.exit_code == 0, result.output
    assert "tokens equal" in result.output
    return checkpoint, root / "repo" / "llm-dyt"


def test_the_folder_has_triton_s_layout_and_a_text_generation_manifest(exported) -> None:
    _, folder = exported
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == {"config.pbtxt", "dyt.json", "1/model.onnx", "1/genai_config.json"}
    config = read_config(folder)
    assert (config.name, config.platform, config.max_batch_size) == ("llm-dyt", "onnxruntime_onnx", 32)
    assert [t.name for t in config.input][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert [t.name for t in config.output] == ["logits", "present.0.key", "present.0.value"]
    manifest = json.loads((folder / "dyt.json").read_text())
    assert manifest["task"] == "text-generation" and manifest["decoding"]["passed"]
    assert manifest["decoder"] == {"layers": 1, "heads": 2, "kv_heads": 2, "head_dim": 16, "hidden": 32,
                                   "vocab_size": 256, "max_length": 64, "model_type": "llama", "bos_token_id": 0,
                                   "eos_token_id": None}
    assert set(manifest["artifacts"]) == files - {"dyt.json"} and manifest["tokenizer"] is None


def test_the_dynamic_dims_are_named_by_their_role(exported) -> None:
    manifest = json.loads((exported[1] / "dyt.json").read_text())
    shapes = {t["name"]: t["shape"] for t in manifest["inputs"] + manifest["outputs"]}
    assert shapes["input_ids"] == shapes["position_ids"] == ["batch", "sequence"]
    assert shapes["attention_mask"] == ["batch", "total_sequence"]
    assert shapes["past_key_values.0.key"] == shapes["past_key_values.0.value"] == ["batch", 2, "past_sequence", 16]
    assert shapes["present.0.key"] == shapes["present.0.value"] == ["batch", 2, "total_sequence", 16]
    assert shapes["logits"] == ["batch", "sequence", 256]


def test_onnxruntime_genai_opens_the_version_folder(exported) -> None:
    checkpoint, folder = exported
    eos = TINY["vocab_size"] - 1  # the zoo has no end-of-text token: genai_config names the last id
    tokens = genai_greedy(folder / "1", PROMPT, 8, eos)
    assert tokens == dyt_deploy.generate(dyt_deploy.load_model(checkpoint), PROMPT, 8, stop_tokens=[eos]).tokens[0]


def test_dyt_check_decodes_a_text_generation_folder(exported) -> None:
    result = CliRunner().invoke(check_app, [str(exported[1])])
    assert result.exit_code == 0, result.output
    assert "greedy decoding, 32 tokens" in result.output and "PASSED" in result.output
    refused = CliRunner().invoke(check_app, [str(exported[1]), "--runners", "ort,torch"])
    assert refused.exit_code == 2 and "decodes it with --runners ort only" in " ".join(refused.output.split())


def test_dyt_check_fails_a_decoder_whose_weights_changed(exported, tmp_path: Path) -> None:
    checkpoint, folder = exported
    other = create_model("llama_tiny", norm="dyt", seed=3, **TINY)
    save_checkpoint(other, checkpoint.with_name("other.pt"))
    manifest = json.loads((folder / "dyt.json").read_text())
    copy = tmp_path / "llm-other"
    (copy / "1").mkdir(parents=True)
    (copy / "1" / "model.onnx").write_bytes((folder / "1" / "model.onnx").read_bytes())
    manifest["source"]["path"] = str(checkpoint.with_name("other.pt"))
    (copy / "dyt.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(check_app, [str(copy)])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_a_hugging_face_folder_s_tokenizer_goes_beside_genai_config(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tests.export.hf_folders import write_folder

    _, source = write_folder(tmp_path / "llama", "llama")
    words = ["[UNK]", "the", "dyt", "layer", "is", "a", "tanh"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                                 unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    with torch.no_grad():
        result = export_onnx(source, repository=tmp_path / "repo", name="hf-dyt", task="text-generation",
                             verify=False)
    folder = result.model_dir
    assert (folder / "1" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert (folder / "1" / "tokenizer_config.json").is_file()
    manifest = json.loads((folder / "dyt.json").read_text())
    assert manifest["tokenizer"] == "1/tokenizer.json" and manifest["norm"] == "dyt"
    assert "1/tokenizer.json" in manifest["artifacts"] and manifest["decoder"]["kv_heads"] == 2
