"""``dyt-bench MODEL``: the user's own model against its LayerNorm/RMSNorm twins, made by conversion.

The models are tiny (an official-format DyT ViT checkpoint whose timm name maps to a small config, a
Hugging Face folder of a two-layer BERT, a zoo LayerNorm model.pt); the runs are short. What is checked
is the plumbing: which variants exist, how they were made, that the twins share every weight outside
the norms, and that every report file is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from timm_reference import VitSpec, official_checkpoint, vit_state
from typer.testing import CliRunner

from dyt_deploy import kernels
from dyt_deploy.bench.config import BenchConfig
from dyt_deploy.bench.report import REPORT_SCHEMA
from dyt_deploy.bench.variants import model_variants, own_norm
from dyt_deploy.checkpoint import save_checkpoint
from dyt_deploy.cli import bench_app
from dyt_deploy.errors import DytDeployError, OptionError
from dyt_deploy.models import create_model
from dyt_deploy.nn import DynamicTanh
from dyt_deploy.nn.convert import norm_kind_of

TINY_VIT = "test_vit_tiny_patch16_32"  # tests/conftest.py TINY_TIMM_NAMES
QUICK = ["--runners", "ort,openvino,torch", "--batch", "1", "--warmup", "1", "--iters", "3", "--threads", "1",
         "--no-layer", "--no-profile"]


@pytest.fixture
def official_vit(tmp_path: Path, tiny_timm_names: None) -> Path:
    """checkpoint-best.pth as the DyT paper's training code writes it, for a ViT the name map sizes small."""
    spec = VitSpec(dim=64, depth=2, heads=4, img=32, num_classes=10)
    path = tmp_path / "checkpoint-best.pth"
    torch.save(official_checkpoint(vit_state(spec, 1), vit_state(spec, 2), TINY_VIT, spec.num_classes), path)
    return path


def bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(bench_app, list(args))
    return result.exit_code, result.output


def test_official_checkpoint_against_its_twins_on_ort_and_torch(official_vit: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"

    code, output = bench(str(official_vit), *QUICK, "-o", str(out))

    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    settings = report["settings"]
    assert settings["model"] == str(official_vit) and settings["own_norm"] == "dyt"
    assert settings["variants_made"]["dyt"] == "the model (dyt)"
    # 2 blocks x 2 norms + fc_norm: five DyT layers, each converted for each twin
    assert settings["variants_made"]["layernorm"] == "twin: 5 dyt layers converted to layernorm"
    assert settings["variants_made"]["rmsnorm"] == "twin: 5 dyt layers converted to rmsnorm"
    assert settings["not_timed"] == {}
    timed = {(r["group"], r["variant"]) for r in report["results"]}
    assert {v for g, v in timed if g == "ort/none"} == {"layernorm", "rmsnorm", "dyt", "dyt-folded"}
    assert {v for g, v in timed if g == "openvino"} == {"layernorm", "rmsnorm", "dyt", "dyt-folded"}
    assert {v for g, v in timed if g == "torch"} == {"layernorm", "rmsnorm", "dyt"}
    assert {r["shape"] for r in report["results"]} == {"batch=1"}  # shapes from the model: pixel_values 3x32x32
    assert all(r["summary"]["count"] == 3 for r in report["results"])
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert "checkpoint-best.pth: median latency" in " ".join(output.split())


def test_twins_share_every_weight_outside_the_norms(official_vit: Path) -> None:
    variant_set = model_variants(official_vit, ["layernorm", "dyt", "dyt-folded"])

    assert variant_set.models["dyt"] is variant_set.models["dyt-folded"]  # folding is an ONNX rewrite
    dyt, layernorm = variant_set.models["dyt"], variant_set.models["layernorm"]
    assert own_norm(dyt) == "dyt" and own_norm(layernorm) == "layernorm"
    norms = {name for name, m in dyt.named_modules() if norm_kind_of(m) is not None}
    shared = {k: v for k, v in dyt.state_dict().items() if k.rpartition(".")[0] not in norms}
    twin = layernorm.state_dict()
    assert len(shared) > 10 and all(torch.equal(v, twin[k]) for k, v in shared.items())
    for name in norms:  # the norm's affine weights carry over: DyT's gamma/beta become LayerNorm's
        assert torch.equal(dyt.get_submodule(name).weight, layernorm.get_submodule(name).weight)
    assert [s.name for s in variant_set.specs] == ["pixel_values"] and variant_set.output_names == ["logits"]


def test_a_layernorm_model_gets_dyt_twins(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("bert_tiny", norm="layernorm", depth=1, vocab_size=64), tmp_path / "bert.pt")

    variant_set = model_variants(path, ["layernorm", "dyt"])

    assert variant_set.own == "layernorm"
    assert variant_set.made["layernorm"] == "the model (layernorm)"
    assert sum(isinstance(m, DynamicTanh) for m in variant_set.models["dyt"].modules()) == 3
    assert variant_set.ort_model == ("bert", 2, 128)  # onnxruntime's transformer fusions apply


def test_hugging_face_folder_with_sequence_override(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from dyt_deploy.nn import convert_norms

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=64, vocab_size=100))
    convert_norms(model, to="dyt")
    model.save_pretrained(tmp_path / "bert-dyt")
    out = tmp_path / "report"

    code, output = bench(str(tmp_path / "bert-dyt"), *QUICK, "--runners", "ort,openvino", "--seq", "8",
                         "--optimizers", "none,ort-transformers", "-o", str(out))

    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["own_norm"] == "dyt"
    assert {r["shape"] for r in report["results"]} == {"batch=1,seq=8"}
    assert {r["variant"] for r in report["results"]} == {"layernorm", "rmsnorm", "dyt", "dyt-folded"}
    assert {r["group"] for r in report["results"]} == {"ort/none", "ort/ort-transformers", "openvino"}


def test_model_and_zoo_name_are_told_apart(tmp_path: Path) -> None:
    code, output = bench("no_such_thing", "-o", str(tmp_path))
    assert code == 2 and "neither a file or folder nor a zoo architecture" in output
    code, output = bench("vit_tiny", "--model", "vit_small", "-o", str(tmp_path))
    assert code == 2 and "not both" in output
    with pytest.raises(OptionError, match="no such file or folder"):
        BenchConfig(model=tmp_path / "missing.pt")


def test_a_model_without_norm_layers_has_nothing_to_compare(tmp_path: Path) -> None:
    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4)), path)

    with pytest.raises(DytDeployError, match="no LayerNorm, RMSNorm or DyT layers"):
        model_variants(path, ["layernorm", "dyt"], trust_pickle=True, input_shapes=["x=1,4"])


def test_torch_runners_per_precision_with_the_triton_kernels(official_vit: Path, tmp_path: Path) -> None:
    # the code --device cuda runs, on the CPU: torch-triton through Triton's interpreter (tests/conftest.py)
    if torch.cuda.is_available() and not kernels.interpreting():
        pytest.skip("a GPU host: no interpreter, so torch-triton cannot run on the CPU (the GPU suite covers it)")
    out = tmp_path / "report"

    code, output = bench(str(official_vit), "--runners", "torch,torch-triton", "--dtypes", "fp32,bf16",
                         "--variants", "layernorm,dyt", "--batch", "1", "--warmup", "1", "--iters", "2",
                         "--no-layer", "--no-profile", "-o", str(out))

    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    groups = {(r["group"], r["variant"]) for r in report["results"]}
    assert groups == {(f"{runner}/{dtype}", variant) for runner in ("torch", "torch-triton")
                      for dtype in ("fp32", "bf16") for variant in ("layernorm", "dyt")}
    assert report["settings"]["dtypes"] == ["fp32", "bf16"] and report["settings"]["runners_skipped"] == {}
    assert report["settings"]["device"] == "cpu"


def test_runner_and_device_mismatches_are_config_errors() -> None:
    with pytest.raises(OptionError, match="ort-cuda cannot run on cpu"):
        BenchConfig(runners=("ort", "ort-cuda"))
    with pytest.raises(OptionError, match="openvino cannot run on cuda"):
        BenchConfig(device="cuda", runners=("openvino",))
    with pytest.raises(OptionError, match="device must be cpu, cuda or cuda:N"):
        BenchConfig(device="tpu")
    assert BenchConfig(device="cuda:1").runners == ("torch", "torch-compile", "torch-triton")
    assert BenchConfig().runners == ("ort", "openvino")
