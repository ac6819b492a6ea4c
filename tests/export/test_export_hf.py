"""A Hugging Face transformers BERT converted to DyT exports and verifies (random weights, no hub)."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
import pytest
import torch

from dyt_deploy.errors import DytDeployError
from dyt_deploy.export import dyt_nodes, export_onnx
from dyt_deploy.export.forms import count_bare_dyt_chains
from dyt_deploy.nn import DynamicTanh, convert_norms

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    model = transformers.BertModel(config)
    report = convert_norms(model, to="dyt")
    model.eval()
    path = tmp_path_factory.mktemp("hf") / "bert.pt"
    torch.save(model, path)
    dyt_layers = sum(isinstance(m, DynamicTanh) for m in model.modules())
    assert len(report) == dyt_layers == 1 + 2 * 2  # embeddings + two per layer
    return path, dyt_layers


def test_hf_bert_with_dyt_exports_and_verifies(hf_bert, tmp_path: Path) -> None:
    path, dyt_layers = hf_bert

    result = export_onnx(path, tmp_path / "bert.onnx", trust_pickle=True, input_shapes=["input_ids=2,8:int64"],
                         form="function")

    assert result.parity is not None and result.parity.passed, result.parity.rows()
    assert len({tuple(s["input_ids"]) for s in result.parity.shapes}) > 1
    assert result.form_counts == {"": dyt_layers}
    model = ir.load(tmp_path / "bert.onnx")
    assert len(dyt_nodes(model)) == dyt_layers
    assert count_bare_dyt_chains(model) == 0
    assert [(v.name, [str(d) for d in v.shape]) for v in model.graph.inputs] == [("input_ids", ["batch", "seq"])]
    # last_hidden_state and pooler_output
    assert [[str(d) for d in v.shape] for v in model.graph.outputs] == [["batch", "seq", "32"], ["batch", "32"]]
    manifest = result.manifest
    assert manifest["arch"] is None and manifest["config"] == {}
    assert manifest["norm"] == "dyt"  # guessed from the modules
    assert manifest["source"]["format"] == "pickled-module"


def test_hf_bert_pickle_needs_trust_and_input_shapes(hf_bert, tmp_path: Path) -> None:
    path, _ = hf_bert
    with pytest.raises(DytDeployError, match="--trust-pickle"):
        export_onnx(path, tmp_path / "bert.onnx", input_shapes=["input_ids=2,8:int64"])
    with pytest.raises(DytDeployError, match="--input-shape"):
        export_onnx(path, tmp_path / "bert.onnx", trust_pickle=True)
    assert list(tmp_path.iterdir()) == []
