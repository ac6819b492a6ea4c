"""dyt-export --task text-generation: the zoo decoder with past key/values in ONNX, checked by greedy
decoding 32 tokens in onnxruntime against PyTorch (pattern, folded, function, fp16), and the same
tokens from onnxruntime-genai with the genai_config.json written beside it."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

import dyt_deploy
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.errors import DytDeployError, OptionError
from dyt_deploy.export import ExportConfig, export_onnx
from dyt_deploy.export.decoder import (
    VERIFY_TOKENS,
    OnnxDecoder,
    check_decoding,
    decoder_spec,
    input_names,
    output_names,
)
from dyt_deploy.generation import Generator
from dyt_deploy.models import create_model
from dyt_deploy.runners import create_runner
from tests.export.genai_testlib import genai_greedy

TINY = {"dim": 64, "depth": 2, "heads": 4, "ffn_dim": 128, "vocab_size": 300, "max_seq_len": 128}
PROMPT = [5, 17, 42, 7, 99, 3, 11]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decoder") / "llama-dyt.pt"
    model = create_model("llama_tiny", norm="dyt", **TINY)
    with torch.no_grad():  # gamma away from 1 so a fold that drops it changes the tokens
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def exports(checkpoint: Path) -> dict:
    """Exports made on first use, shared by the module's tests: key (form, fold, dtype) -> result."""
    made: dict = {}

    def get(form: str = "pattern", fold: bool = False, dtype: str = "fp32"):
        key = (form, fold, dtype)
        if key not in made:
            out = checkpoint.parent / f"{form}-{'folded' if fold else 'plain'}-{dtype}"
            made[key] = export_onnx(checkpoint, out, task="text-generation", form=form, fold=fold, dtype=dtype)
        return made[key]

    return get


@pytest.mark.parametrize(("form", "fold"), [("pattern", False), ("pattern", True),
                                            pytest.param("function", False, marks=pytest.mark.slow)])
def test_greedy_decoding_in_onnxruntime_equals_pytorch(exports, form: str, fold: bool) -> None:
    result = exports(form, fold)
    decoding = result.decoding
    assert decoding["passed"] and decoding["tokens_equal"] and decoding["steps"] == VERIFY_TOKENS
    assert len(decoding["max_abs_diff_per_step"]) == VERIFY_TOKENS and decoding["max_abs_diff"] < 1e-4
    graph = onnx.load(result.onnx_path, load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert ("DynamicTanh" in ops) == (form == "function")
    if fold:
        assert (result.fold.folded, result.fold.skipped) == (2 * TINY["depth"] + 1, 0)  # the final one into lm_head
    assert json.loads((result.model_dir / "dyt.json").read_text())["decoding"]["passed"]


def test_the_graph_has_the_past_and_present_names_with_dynamic_dims(exports) -> None:
    graph = onnx.load(exports().onnx_path, load_external_data=False).graph
    layers = TINY["depth"]
    assert [i.name for i in graph.input] == input_names(layers)
    assert [o.name for o in graph.output] == output_names(layers)
    past = graph.input[3].type.tensor_type.shape.dim
    assert past[0].dim_param and past[2].dim_param and past[1].dim_value == 4 and past[3].dim_value == 16


def test_batch_and_past_lengths_other_than_the_exports(exports, checkpoint: Path) -> None:
    model = dyt_deploy.load_model(checkpoint)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4], [9, 9, 9]]
    expected = Generator(model).generate(prompts, keep_logits=True)
    with create_runner("ort", exports().onnx_path) as runner:
        got = Generator(lambda: OnnxDecoder(runner, decoder_spec(model), "fp32")).generate(prompts, keep_logits=True)
    assert got.tokens == expected.tokens
    assert max(float((a - b).abs().max()) for a, b in zip(got.step_logits, expected.step_logits, strict=True)) < 1e-4


@pytest.mark.slow
def test_fp16_decodes_the_same_tokens(exports, checkpoint: Path) -> None:
    result = exports(dtype="fp16")
    assert result.decoding["passed"], result.decoding
    graph = onnx.load(result.onnx_path, load_external_data=False).graph
    assert graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_onnxruntime_genai_generates_the_same_tokens(exports, checkpoint: Path) -> None:
    folder = exports().model_dir
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    eos = config["model"]["eos_token_id"]
    tokens = genai_greedy(folder, PROMPT, 24, eos)
    assert tokens == dyt_deploy.generate(dyt_deploy.load_model(checkpoint), PROMPT, 24, stop_tokens=[eos]).tokens[0]


def test_a_wrong_onnx_decoder_fails_the_check(exports, checkpoint: Path) -> None:
    other = create_model("llama_tiny", norm="dyt", seed=5, **TINY)  # same shapes, other weights
    check = check_decoding(exports().onnx_path, other, "fp32", steps=4)
    assert not check.passed and not check.tokens_equal


def test_a_model_without_a_cache_is_refused_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "vit.pt"
    save_checkpoint(create_model("vit_tiny"), path)
    with pytest.raises(DytDeployError, match="takes the zoo's llama decoders .* and Hugging Face causal LM folders"):
        export_onnx(path, tmp_path / "out", task="text-generation")
    assert not (tmp_path / "out").exists()


def test_bad_task_options_are_named() -> None:
    with pytest.raises(OptionError) as caught:
        ExportConfig(task="summarize")
    assert [f for f, _ in caught.value.problems] == ["task"]
    with pytest.raises(OptionError) as caught:
        ExportConfig(task="text-generation", backend="openvino", repository=Path("r"))
    assert "backend" in [f for f, _ in caught.value.problems]


def test_the_command_line_exports_and_reports_the_decoding_check(checkpoint: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dyt_deploy.cli import export_app

    out = tmp_path / "textgen"
    result = CliRunner().invoke(export_app, [str(checkpoint), "--task", "text-generation", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "greedy decoding, 32 tokens, onnxruntime vs PyTorch: tokens equal" in result.output
    assert "PASSED" in result.output
    assert {p.name for p in out.iterdir()} == {"model.onnx", "genai_config.json", "dyt.json"}
    again = CliRunner().invoke(export_app, [str(checkpoint), "--task", "text-generation", "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
