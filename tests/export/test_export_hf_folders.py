"""Hugging Face folders written by ``save_pretrained`` (LLaMA, Qwen2, BERT, ViT; DyT-converted, random
weights, no hub): ``dyt-export FOLDER`` builds each from its config.json, puts DyT exactly where the
weights hold alpha, exports with the model's own input and output names, verifies; ``dyt-check``
and the service take the exported folders. Each folder is exported once for the whole module."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnx_ir as ir
import pytest
import torch
from hf_folders import example_feed, tiny_model, to_dyt, transformers, write_folder
from torch import nn
from typer.testing import CliRunner

from dyt_deploy.checkpoint import load_checkpoint
from dyt_deploy.cli import check_app, export_app
from dyt_deploy.export.forms import count_bare_dyt_chains
from dyt_deploy.nn import DynamicTanh
from dyt_deploy.runners import create_runner

FAMILIES = ("llama", "qwen2", "bert", "vit")
# How each folder is written: safetensors (LLaMA, with a tied LM head), pytorch_model.bin (Qwen2),
# sharded safetensors with an index (BERT), safetensors (ViT).
SAVE_OPTIONS = {"llama": {}, "qwen2": {"safe_serialization": False}, "bert": {"max_shard_size": "20KB"}, "vit": {}}
TEXT_INPUTS = [("input_ids", "int64", ["batch", "seq"]), ("attention_mask", "int64", ["batch", "seq"])]
SIGNATURES = {  # the ONNX inputs and outputs: (name, dtype, shape)
    "llama": (TEXT_INPUTS, [("logits", "float32", ["batch", "seq", 100])]),
    "qwen2": (TEXT_INPUTS, [("logits", "float32", ["batch", "seq", 100])]),
    "bert": (TEXT_INPUTS + [("token_type_ids", "int64", ["batch", "seq"])], [("logits", "float32", ["batch", 3])]),
    "vit": ([("pixel_values", "float32", ["batch", 3, 32, 32])], [("logits", "float32", ["batch", 5])]),
}
cli = CliRunner()
EXPORT_OUTPUT: dict[str, str] = {}  # what dyt-export printed for each folder of the ``repository`` fixture


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """name -> (the model as saved, its folder): the four DyT families and a plain (RMSNorm) LLaMA."""
    root = tmp_path_factory.mktemp("hf-folders")
    made = {family: write_folder(root / family, family, **SAVE_OPTIONS[family]) for family in FAMILIES}
    made["llama-plain"] = write_folder(root / "llama-plain", "llama", dyt=False)
    return made


@pytest.fixture(scope="module")
def repository(folders: dict[str, tuple[nn.Module, Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every folder exported with ``dyt-export FOLDER --repository REPO --name NAME`` (no other flag)."""
    repo = tmp_path_factory.mktemp("hf-repo")
    for name, (_, folder) in folders.items():
        result = cli.invoke(export_app, [str(folder), "--repository", str(repo), "--name", name])
        assert result.exit_code == 0, result.output
        EXPORT_OUTPUT[name] = " ".join(result.output.split())
        assert "PASSED" in result.output
    return repo


def manifest_of(repository: Path, name: str) -> dict:
    return json.loads((repository / name / "dyt.json").read_text())


def reference(model: nn.Module, feed: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return model(**feed).logits.numpy()


def test_the_folders_are_written_as_intended(folders: dict[str, tuple[nn.Module, Path]]) -> None:
    names = {name: sorted(p.name for p in folder.iterdir()) for name, (_, folder) in folders.items()}
    assert "model.safetensors" in names["llama"] and "pytorch_model.bin" in names["qwen2"]
    assert "model.safetensors.index.json" in names["bert"]
    assert len([n for n in names["bert"] if n.endswith(".safetensors")]) > 1
    from safetensors import safe_open

    with safe_open(folders["llama"][1] / "model.safetensors", "pt") as saved:
        keys = set(saved.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied: written once
    assert "model.norm.alpha" in keys and "model.norm.bias" not in keys  # DyT without beta (from RMSNorm)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_loaded_folder_computes_what_was_saved(folders: dict[str, tuple[nn.Module, Path]], family: str) -> None:
    saved, folder = folders[family]
    loaded = load_checkpoint(folder)

    assert (loaded.arch, loaded.norm, loaded.source_format) == (f"hf-{saved.config.model_type}", "dyt", "hf-folder")
    assert loaded.config["architectures"] == [type(saved).__name__]
    saved_dyt = {n: m for n, m in saved.named_modules() if isinstance(m, DynamicTanh)}
    loaded_dyt = {n.removeprefix("model."): m for n, m in loaded.model.named_modules() if isinstance(m, DynamicTanh)}
    assert sorted(loaded_dyt) == sorted(saved_dyt)
    assert all((loaded_dyt[n].bias is None) == (m.bias is None) for n, m in saved_dyt.items())
    feed = example_feed(family)
    names = [spec.name for spec in loaded.model.input_specs()]
    assert names == list(feed)
    with torch.no_grad():
        got = loaded.model(*feed.values())[0].numpy()
    np.testing.assert_allclose(got, reference(saved, feed), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_dyt_export_verifies_at_several_shapes(repository: Path, folders: dict, family: str) -> None:
    manifest = manifest_of(repository, family)
    saved, folder = folders[family]

    assert manifest["parity"]["passed"]
    shapes = {tuple(shape) for sample in manifest["parity"]["shapes"] for shape in sample.values()}
    assert len(shapes) > 1
    dyt_layers = sum(isinstance(m, DynamicTanh) for m in saved.modules())
    onnx_model = ir.load(repository / family / "1" / "model.onnx")
    assert count_bare_dyt_chains(onnx_model) == dyt_layers > 0  # the pattern form: one Mul -> Tanh per site
    assert (manifest["arch"], manifest["family"], manifest["norm"]) == (f"hf-{family}",) * 2 + ("dyt",)
    assert manifest["config"]["model_type"] == family
    assert manifest["source"]["format"] == "hf-folder"
    assert manifest["source"]["path"] == str(folder.resolve())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_onnx_model_has_the_models_own_names_and_dynamic_dims(repository: Path, family: str) -> None:
    graph = ir.load(repository / family / "1" / "model.onnx").graph

    def describe(values: list[ir.Value]) -> list[tuple[str, str, list]]:
        return [(v.name, v.dtype.numpy().name, [d if isinstance(d, int) else str(d) for d in v.shape])
                for v in values]

    assert (describe(graph.inputs), describe(graph.outputs)) == SIGNATURES[family]


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_the_attention_mask_is_honoured(repository: Path, folders: dict, family: str) -> None:
    saved, _ = folders[family]
    padded = example_feed(family)
    unpadded = {**padded, "attention_mask": torch.ones_like(padded["attention_mask"])}

    with create_runner("ort", repository / family / "1" / "model.onnx") as runner:
        got = {name: runner.infer({k: v.numpy() for k, v in feed.items()})["logits"]
               for name, feed in (("padded", padded), ("unpadded", unpadded))}

    np.testing.assert_allclose(got["padded"], reference(saved, padded), rtol=1e-3, atol=1e-4)
    assert np.abs(got["padded"] - got["unpadded"]).max() > 0.01 * np.abs(got["unpadded"]).max()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_says_what_it_loaded_and_records_every_dyt_site(repository: Path, folders: dict,
                                                                    family: str) -> None:
    """It printed "load model.pt" for a folder, and dyt.json recorded no DyT site in the pattern form."""
    _, folder = folders[family]
    output = EXPORT_OUTPUT[family]
    assert f"load Hugging Face folder {folder.name}" in output and "model.pt" not in output
    sites = manifest_of(repository, family)["dyt_sites"]
    layers = sum(isinstance(m, DynamicTanh) for m in load_checkpoint(folder).model.modules())
    assert layers > 0 and sum(sites.values()) == layers
    shown = ", ".join(f"{n} {k or 'full'}" for k, n in sites.items())
    assert f"DyT sites: {shown})" in output


def test_a_plain_folder_exports_with_its_own_norms(repository: Path, folders: dict) -> None:
    manifest = manifest_of(repository, "llama-plain")
    saved, folder = folders["llama-plain"]
    loaded = load_checkpoint(folder)

    assert manifest["norm"] == loaded.norm == "rmsnorm"
    assert manifest["dyt_sites"] == {} and manifest["parity"]["passed"]
    assert not any(isinstance(m, DynamicTanh) for m in loaded.model.modules())
    graph = ir.load(repository / "llama-plain" / "1" / "model.onnx").graph
    assert not any(node.op_type == "Tanh" for node in graph.all_nodes())
    feed = example_feed("llama")
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model(*feed.values())[0].numpy(), reference(saved, feed), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_dyt_check_passes_on_the_exported_folder(repository: Path, family: str) -> None:
    result = cli.invoke(check_app, [str(repository / family)])

    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "FAILED" not in result.output


def test_the_service_serves_the_exported_folders(repository: Path, folders: dict) -> None:
    from service.engines.uvicorn import serve_in_thread
    from service.http.app import create_app
    from service.settings import Settings

    llama, _ = folders["llama"]
    text = example_feed("llama")
    vit, _ = folders["vit"]
    images = example_feed("vit")
    with serve_in_thread(create_app(repository, Settings(threads=1, warmup_runs=1))) as server:
        for name, model, feed in (("llama", llama, text), ("vit", vit, images)):
            body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "INT64" if k != "pixel_values"
                                else "FP32", "data": v.flatten().tolist()} for k, v in feed.items()]}
            response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=60)
            assert response.status_code == 200, response.text
            (output,) = response.json()["outputs"]
            assert output["name"] == "logits"
            got = np.asarray(output["data"], np.float32).reshape(output["shape"])
            np.testing.assert_allclose(got, reference(model, feed), rtol=1e-3, atol=1e-4)



def test_dyt_check_takes_a_hugging_face_folder_directly(folders: dict) -> None:
    """The folder itself as the model: PyTorch and a fresh ONNX export of it against its reference."""
    result = cli.invoke(check_app, [str(folders["vit"][1]), "--runners", "torch,ort"])

    assert result.exit_code == 0, result.output
    assert result.output.count("PASSED") == 2


@pytest.mark.parametrize(("name", "outputs"), [
    ("BertModel", [("last_hidden_state", ("batch", "seq", 32)), ("pooler_output", ("batch", 32))]),
    ("ViTModel", [("last_hidden_state", ("batch", 17, 32)), ("pooler_output", ("batch", 32))]),
])
def test_base_models_name_their_outputs(tmp_path: Path, name: str, outputs: list) -> None:
    """A base model (no head) returns its hidden states under their own names, not "logits"."""
    config = tiny_model("bert" if name == "BertModel" else "vit").config
    model = getattr(transformers, name)(config).eval()
    to_dyt(model)
    model.save_pretrained(tmp_path / name)

    loaded = load_checkpoint(tmp_path / name)

    assert [(spec.name, spec.shape) for spec in loaded.model.output_specs()] == outputs
    feed = example_feed("bert" if name == "BertModel" else "vit")
    with torch.no_grad():
        got, expected = loaded.model(*feed.values()), model(**feed)
    for value, (output, _) in zip(got, outputs, strict=True):
        torch.testing.assert_close(value, expected[output], rtol=0, atol=1e-6)
