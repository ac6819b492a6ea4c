"""export_onnx(repository=...): a Triton-layout model folder with config.pbtxt, dyt.json, 1/model.onnx."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from datetime import datetime
from pathlib import Path

import onnx_ir as ir
import pytest
from google.protobuf import text_format

from dyt_deploy.errors import DytDeployError
from dyt_deploy.export import export_onnx
from dyt_deploy.repository import list_model_folders, read_manifest


def model_config_pb2():
    """Triton's ModelConfig protobuf module (from tritonclient, without importing its grpc client)."""
    tritonclient = pytest.importorskip("tritonclient")
    path = os.path.join(os.path.dirname(tritonclient.__file__), "grpc", "model_config_pb2.py")
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.models import create_model

    root = tmp_path_factory.mktemp("repository")
    checkpoint = save_checkpoint(create_model("bert_tiny", norm="dyt", depth=1, vocab_size=128), root / "model.pt")
    result = export_onnx(checkpoint, repository=root / "repo", name="bert-dyt", family="bert", form="function")
    return checkpoint, root / "repo", result


def test_model_folder_layout(folder) -> None:
    _, repo, result = folder
    model_dir = repo / "bert-dyt"
    assert result.model_dir == model_dir
    assert result.onnx_path == model_dir / "1" / "model.onnx"
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    assert files == ["bert-dyt", "bert-dyt/1", "bert-dyt/1/model.onnx", "bert-dyt/config.pbtxt", "bert-dyt/dyt.json"]
    assert list_model_folders(repo) == [model_dir]
    assert oct(model_dir.stat().st_mode & 0o077) != "0o0"  # staged with normal permissions, not mkdtemp's 0700


def test_config_pbtxt_is_a_valid_triton_model_config(folder) -> None:
    _, repo, _ = folder
    pb2 = model_config_pb2()
    config = text_format.Parse((repo / "bert-dyt" / "config.pbtxt").read_text(), pb2.ModelConfig())

    assert config.name == "bert-dyt"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32  # every tensor's first dim is "batch": Triton batches it
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert [i.data_type for i in config.input] == [pb2.TYPE_INT64, pb2.TYPE_INT64]
    assert [list(i.dims) for i in config.input] == [[-1], [-1]]  # batch left out, seq dynamic
    assert [o.name for o in config.output] == ["logits"]
    assert config.output[0].data_type == pb2.TYPE_FP32
    assert list(config.output[0].dims) == [2]

    model = ir.load(repo / "bert-dyt" / "1" / "model.onnx")
    assert [v.name for v in model.graph.inputs] == [i.name for i in config.input]
    assert [v.name for v in model.graph.outputs] == [o.name for o in config.output]


def test_manifest_records_source_signature_parity_and_artifacts(folder) -> None:
    checkpoint, repo, result = folder
    model_dir = repo / "bert-dyt"
    manifest = json.loads((model_dir / "dyt.json").read_text())
    assert read_manifest(model_dir) == manifest == json.loads(json.dumps(result.manifest))

    assert manifest["format"] == "dyt-deploy/manifest"
    assert manifest["source"]["sha256"] == sha256(checkpoint)
    assert manifest["source"]["format"] == "dyt-deploy/model"
    assert Path(manifest["source"]["path"]) == checkpoint
    assert (manifest["name"], manifest["arch"], manifest["norm"], manifest["family"]) == (
        "bert-dyt", "bert_tiny", "dyt", "bert")
    assert manifest["config"]["depth"] == 1
    assert (manifest["form"], manifest["opset"], manifest["dtype"]) == ("function", 20, "fp32")
    assert manifest["dyt_sites"] == {"": 3}
    assert manifest["folded"] is None
    assert manifest["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                                  {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    assert manifest["parity"]["passed"] is True
    assert manifest["parity"]["atol"] == 1e-4 and len(manifest["parity"]["shapes"]) == 3
    assert manifest["parity"]["outputs"]["logits"]["passed"] is True
    for package in ("torch", "onnx", "onnxruntime", "onnxscript"):
        assert manifest["versions"][package]
    assert datetime.fromisoformat(manifest["exported_at"]).tzinfo is not None
    assert manifest["artifacts"] == {"1/model.onnx": sha256(model_dir / "1" / "model.onnx")}


def test_existing_model_folder_is_refused_without_force_and_kept(folder) -> None:
    checkpoint, repo, _ = folder
    before = {p: p.read_bytes() for p in (repo / "bert-dyt").rglob("*") if p.is_file()}

    with pytest.raises(DytDeployError, match="--force"):
        export_onnx(checkpoint, repository=repo, name="bert-dyt")

    assert {p: p.read_bytes() for p in (repo / "bert-dyt").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in repo.iterdir()) == ["bert-dyt"]  # no staging folder left behind
