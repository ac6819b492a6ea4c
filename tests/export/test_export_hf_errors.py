"""Hugging Face folders that are not loadable models: each is one clear error, never a traceback, and
nothing is unpickled beyond tensors. Also the loader's own edges: Derf sites, tied weights, --arch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_folders import example_feed, tiny_model, to_dyt, transformers, write_folder
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from dyt_deploy.checkpoint import load_checkpoint
from dyt_deploy.cli import check_app, export_app
from dyt_deploy.errors import CheckpointError
from dyt_deploy.nn import Derf, DynamicTanh

cli = CliRunner()


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DyT BERT classifier in model.safetensors; tests copy it before changing anything."""
    return write_folder(tmp_path_factory.mktemp("hf") / "bert", "bert")[1]


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def assert_cli_error(folder: Path, *fragments: str, apps: tuple = (export_app, check_app)) -> None:
    """dyt-export FOLDER and dyt-check FOLDER: exit 2, one ``error:`` message with ``fragments``, no traceback."""
    for app in apps:
        result = cli.invoke(app, [str(folder)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert text.count("error:") == 1 and "Traceback" not in text
        assert all(fragment in text for fragment in fragments), text


def test_an_empty_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="without config.json"):
        load_checkpoint(tmp_path)
    assert_cli_error(tmp_path, "without config.json", "save_pretrained", apps=(export_app,))


def test_a_config_without_weights(bert_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    shutil.copy(bert_folder / "config.json", folder)
    assert_cli_error(folder, "no weights", "model.safetensors", "pytorch_model.bin")


def test_a_config_that_is_not_json_or_not_transformers(bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(bert_folder, tmp_path)
    (folder / "config.json").write_text("{not json")
    assert_cli_error(folder, "config.json: not readable JSON")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32}))
    assert_cli_error(folder, 'has no "model_type"')
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    assert_cli_error(folder, "transformers cannot read its config.json")


def test_a_missing_shard(tmp_path: Path) -> None:
    _, folder = write_folder(tmp_path / "bert", "bert", max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).unlink()
    assert_cli_error(folder, "shards missing", shard)


def test_missing_and_unexpected_keys_are_all_listed(bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(bert_folder, tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["classifier.weight"], state["bert.pooler.dense.bias"]
    state["bert.extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(folder)
    message = str(caught.value)
    assert "missing keys: bert.pooler.dense.bias, classifier.weight" in message
    assert "unexpected keys: bert.extra.weight" in message


def test_wrong_shapes_are_listed(bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(bert_folder, tmp_path)
    state = load_file(folder / "model.safetensors")
    state["classifier.bias"] = torch.zeros(7)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"wrong shapes: classifier.bias \(7,\) != \(3,\)"):
        load_checkpoint(folder)


def test_alpha_on_a_layer_that_is_not_a_norm(bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(bert_folder, tmp_path)
    state = load_file(folder / "model.safetensors")
    state["classifier.alpha"] = torch.ones(1)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    assert_cli_error(folder, "alpha for layers that are not norms: classifier (Linear)")


def test_truncated_weights(bert_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(bert_folder, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_cli_error(folder, "model.safetensors: corrupt or truncated safetensors file")


def test_a_bin_with_pickled_objects_is_refused_unread(tmp_path: Path) -> None:
    """pytorch_model.bin is read with weights_only: a pickled module (code to run) is refused."""
    model, folder = write_folder(tmp_path / "vit", "vit", safe_serialization=False)
    torch.save(nn.Linear(2, 2), folder / "pytorch_model.bin")
    assert_cli_error(folder, "pytorch_model.bin: not a tensors-only PyTorch file", "weights_only")


def test_an_arch_other_than_the_folders_is_refused(bert_folder: Path) -> None:
    with pytest.raises(CheckpointError, match="holds a Hugging Face 'hf-bert' model, but 'bert_tiny' was asked for"):
        load_checkpoint(bert_folder, arch="bert_tiny")
    assert load_checkpoint(bert_folder, arch="hf-bert").arch == "hf-bert"


def test_without_transformers_the_error_says_what_to_install(bert_folder: Path) -> None:
    code = ("import sys; sys.modules['transformers'] = None\n"  # makes `import transformers` fail, as if missing
            "from dyt_deploy.checkpoint import load_checkpoint\n"
            "from dyt_deploy.errors import MissingBackendError\n"
            f"try:\n    load_checkpoint({str(bert_folder)!r})\n"
            "except MissingBackendError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "need transformers: pip install transformers" in done.stdout


def test_derf_sites_and_the_no_bias_form_load_where_the_weights_say(tmp_path: Path) -> None:
    """A site holding alpha and shift becomes Derf; one with no bias key, a DyT without beta; the others stay."""
    model = tiny_model("llama")
    layer = model.model.layers[1]
    kept = layer.post_attention_layernorm
    to_dyt(model, to="derf")
    layer.post_attention_layernorm = kept  # one site left an RMSNorm
    model.save_pretrained(tmp_path / "llama")

    loaded = load_checkpoint(tmp_path / "llama").model
    kinds = {n.removeprefix("model."): type(m).__name__ for n, m in loaded.named_modules() if n.endswith("norm")}
    assert kinds["model.layers.1.post_attention_layernorm"] == "LlamaRMSNorm"
    assert kinds["model.layers.0.input_layernorm"] == kinds["model.norm"] == "Derf"
    assert all(m.bias is None for m in loaded.modules() if isinstance(m, Derf | DynamicTanh))
    feed = example_feed("llama")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*feed.values())[0], model(**feed).logits, rtol=0, atol=1e-6)


def test_a_model_that_takes_neither_text_nor_images_is_refused(tmp_path: Path) -> None:
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(8,), conv_stride=(5,), conv_kernel=(10,),
                                         num_feat_extract_layers=1, vocab_size=10, num_conv_pos_embeddings=4,
                                         num_conv_pos_embedding_groups=2)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "speech")
    assert_cli_error(tmp_path / "speech", "Wav2Vec2ForCTC takes 'input_values'", "input_ids", "pixel_values")


def test_the_default_output_is_beside_the_folder_with_its_whole_name(bert_folder: Path, tmp_path: Path) -> None:
    """``dyt-export Qwen2.5-0.5B`` writes ``Qwen2.5-0.5B.onnx`` (not ``Qwen2.5-0.onnx``); an existing one is kept."""
    folder = Path(shutil.copytree(bert_folder, tmp_path / "bert-2.5-small"))
    existing = tmp_path / "bert-2.5-small.onnx"
    existing.write_bytes(b"keep me")

    result = cli.invoke(export_app, [str(folder)])

    assert result.exit_code == 2, result.output
    assert f"{existing}exists" in "".join(result.output.split())  # rich may wrap the long path anywhere
    assert existing.read_bytes() == b"keep me"
