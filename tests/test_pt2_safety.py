"""A .pt2 archive never runs its code without --trust-pickle: torch.export.load and
aoti_load_package unpickle some entries (use_pickle weights with the full unpickler, sample inputs
with a weights-only try and a full fallback), so the archive is inspected before torch opens it.

Each hostile archive is a real torch.export program with one entry replaced by a pickle whose
``__reduce__`` writes a marker file; every command that opens a .pt2 is run on it and the marker
must not appear."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dyt_deploy.build_cli import build_app
from dyt_deploy.checkpoint import load_checkpoint, save_checkpoint
from dyt_deploy.cli import bench_app, check_app, export_app
from dyt_deploy.errors import CheckpointError
from dyt_deploy.models import create_model
from dyt_deploy.pt2_safety import pickled_entries
from dyt_deploy.runners.aoti_runner import AotiRunner
from dyt_deploy.runners.base import RunnerError

TINY_VIT = {"depth": 1, "dim": 32, "heads": 2, "img_size": 16, "patch_size": 8, "num_classes": 10}
runner = CliRunner()
Entries = dict[str, bytes]


class WritesMarker:
    """Unpickled, it writes ``marker``: the stand-in for an attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "code from the archive ran")


def _rewrite(source: Path, target: Path, change: Callable[[Entries], None]) -> Path:
    """``source``'s entries, changed by ``change``, written to ``target`` (stored, as torch writes)."""
    with zipfile.ZipFile(source) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    change(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def _entry(entries: Entries, suffix: str) -> str:
    return next(name for name in entries if name.endswith(suffix))


def _weight_stored_as(payload: Callable[[torch.Tensor], bytes]) -> Callable[[Entries], None]:
    """A change that marks the program's first weight ``use_pickle`` and stores ``payload(weight)``."""

    def change(entries: Entries) -> None:
        config_name = _entry(entries, "data/weights/model_weights_config.json")
        config = json.loads(entries[config_name])
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        entries[config_name] = json.dumps(config).encode()
        weight_path = f"{config_name.rpartition('/')[0]}/{meta['path_name']}"
        shape = tuple(meta["tensor_meta"]["sizes"][i]["as_int"] for i in range(len(meta["tensor_meta"]["sizes"])))
        entries[weight_path] = payload(torch.zeros(shape))

    return change


def _torch_saved(tensor: torch.Tensor) -> bytes:
    """The weight as a parameter, as torch.export.save pickles one (torch.save)."""
    buffer = io.BytesIO()
    torch.save(torch.nn.Parameter(tensor), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DyT ViT as torch.export.save writes it (no pickled entries)."""
    model = create_model("vit_tiny", norm="dyt", **TINY_VIT).eval()
    path = tmp_path_factory.mktemp("pt2") / "program.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 16, 16),)), path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker.txt"


@pytest.fixture(params=["pickled-weight", "pickled-sample-inputs"])
def hostile(request: pytest.FixtureRequest, program: Path, marker: Path, tmp_path: Path) -> Path:
    """The program with code in a use_pickle weight, or in its sample inputs (the entry torch
    loads weights-only first and then, failing that, with the full unpickler)."""
    payload = pickle.dumps(WritesMarker(marker), protocol=2)
    if request.param == "pickled-weight":
        change = _weight_stored_as(lambda _: payload)
    else:
        def change(entries: Entries) -> None:
            entries[_entry(entries, "data/sample_inputs/model.pt")] = payload
    return _rewrite(program, tmp_path / "hostile.pt2", change)


@pytest.fixture
def pickled_but_benign(program: Path, tmp_path: Path) -> Path:
    """The program with its first weight stored as torch.save(tensor) under use_pickle: loadable
    when trusted, refused otherwise (the full unpickler would load it)."""
    return _rewrite(program, tmp_path / "pickled.pt2", _weight_stored_as(_torch_saved))


def _refused(result: object, marker: Path) -> str:
    output = " ".join(result.output.split())  # type: ignore[attr-defined]
    assert not marker.exists(), "the archive's code ran"
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    assert "error:" in output and "Traceback" not in output
    assert "pickled Python objects" in output and "--trust-pickle" in output
    return output


def test_the_attack_is_real_without_the_check(hostile: Path, marker: Path) -> None:
    """torch.export.load on the hostile archive runs its code (what the check prevents)."""
    with pytest.raises(Exception):  # noqa: B017  the archive is broken after its code ran
        torch.export.load(hostile)
    assert marker.exists()


def test_a_plain_program_has_no_pickled_entries_and_loads(program: Path) -> None:
    assert pickled_entries(program) == []
    loaded = load_checkpoint(program)
    assert loaded.source_format == "torch.export"
    assert loaded.model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_load_checkpoint_refuses_before_unpickling(hostile: Path, marker: Path) -> None:
    with pytest.raises(CheckpointError, match="pickled Python objects.*--trust-pickle") as raised:
        load_checkpoint(hostile)
    assert not marker.exists()
    assert "\n" not in str(raised.value) and "data/" in str(raised.value)


def test_trusted_pickled_weight_loads(pickled_but_benign: Path) -> None:
    with pytest.raises(CheckpointError, match="use_pickle|stored as a pickle"):
        load_checkpoint(pickled_but_benign)
    loaded = load_checkpoint(pickled_but_benign, trust_pickle=True)
    assert loaded.model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_an_opaque_constant_is_refused(program: Path, marker: Path, tmp_path: Path) -> None:
    def change(entries: Entries) -> None:
        config_name = _entry(entries, "data/constants/model_constants_config.json")
        entries[config_name] = json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                            "use_pickle": True, "tensor_meta": None}}}).encode()
        entries[f"{config_name.rpartition('/')[0]}/opaque_obj_0"] = pickle.dumps(WritesMarker(marker))

    found = pickled_entries(_rewrite(program, tmp_path / "opaque.pt2", change))
    assert [entry.name.rpartition("/")[2] for entry in found] == ["opaque_obj_0"]
    assert not marker.exists()


def test_a_duplicate_entry_name_is_refused(program: Path, marker: Path, tmp_path: Path) -> None:
    """Two entries of one name: zipfile reads the last, another reader may take the first."""
    target = tmp_path / "twice.pt2"
    _rewrite(program, target, lambda entries: None)
    with zipfile.ZipFile(target) as archive:
        name = _entry({n: b"" for n in archive.namelist()}, "data/sample_inputs/model.pt")
    with zipfile.ZipFile(target, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr(name, pickle.dumps(WritesMarker(marker)))
    assert [entry.what for entry in pickled_entries(target)] == ["an entry name that occurs twice"]


def test_dyt_export_refuses(hostile: Path, marker: Path, tmp_path: Path) -> None:
    _refused(runner.invoke(export_app, [str(hostile), "-o", str(tmp_path / "a.onnx")]), marker)
    assert not (tmp_path / "a.onnx").exists()


def test_dyt_export_with_trust_pickle_exports(pickled_but_benign: Path, tmp_path: Path) -> None:
    args = [str(pickled_but_benign), "-o", str(tmp_path / "b.onnx"), "--input-shape", "x=2,3,16,16",
            "--dynamic", "none", "--samples", "1"]
    _refused(runner.invoke(export_app, args), tmp_path / "no-marker")
    result = runner.invoke(export_app, [*args, "--trust-pickle"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and (tmp_path / "b.onnx").is_file()


def test_dyt_check_refuses(hostile: Path, marker: Path) -> None:
    _refused(runner.invoke(check_app, [str(hostile), "--runners", "ort"]), marker)


def test_dyt_build_refuses(hostile: Path, marker: Path, tmp_path: Path) -> None:
    _refused(runner.invoke(build_app, [str(hostile), "--backend", "aoti", "-o", str(tmp_path / "m.pt2")]), marker)


def test_dyt_bench_refuses(hostile: Path, marker: Path, tmp_path: Path) -> None:
    _refused(runner.invoke(bench_app, [str(hostile), "--runners", "torch", "--iters", "2", "-o",
                                       str(tmp_path / "bench")]), marker)


def _aoti_folder(repository: Path, package: Path, model_pt: Path) -> Path:
    """A repository folder as dyt-build --backend aoti writes it, holding ``package``."""
    folder = repository / "vit-aoti"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.pt2").write_bytes(package.read_bytes())
    manifest = {"format": "dyt-deploy/manifest", "format_version": 1, "name": "vit-aoti", "family": "vit_tiny",
                "arch": "vit_tiny", "config": TINY_VIT, "norm": "dyt", "backend": "aoti", "dtype": "fp32",
                "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 16, 16]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
                "dynamic": ["batch"], "source": {"path": str(model_pt), "format": "dyt-deploy/model"}}
    (folder / "dyt.json").write_text(json.dumps(manifest))
    return folder


def test_the_aoti_runner_refuses(hostile: Path, marker: Path) -> None:
    """aoti_load_package reads any exported program a .pt2 holds, with the same unpickling."""
    with pytest.raises(RunnerError, match="pickled Python objects"):
        AotiRunner(hostile, input_names=["x"], output_names=["y"]).activate()
    assert not marker.exists()


def test_dyt_check_of_an_aoti_folder_refuses_its_package(hostile: Path, marker: Path, tmp_path: Path) -> None:
    model_pt = save_checkpoint(create_model("vit_tiny", norm="dyt", **TINY_VIT), tmp_path / "model.pt")
    folder = _aoti_folder(tmp_path / "repo", hostile, model_pt)
    result = runner.invoke(check_app, [str(folder), "--runners", "aoti"])
    assert not marker.exists()
    assert result.exit_code != 0
    assert "pickled Python objects" in " ".join(result.output.split())


def test_dyt_check_trust_pickle_reaches_the_folders_package(hostile: Path, marker: Path, tmp_path: Path) -> None:
    """--trust-pickle is passed to the aoti runner of a folder's own package: the inspection no
    longer refuses it (what the trusted file then does is the user's choice)."""
    model_pt = save_checkpoint(create_model("vit_tiny", norm="dyt", **TINY_VIT), tmp_path / "model.pt")
    folder = _aoti_folder(tmp_path / "repo", hostile, model_pt)
    result = runner.invoke(check_app, [str(folder), "--runners", "aoti", "--trust-pickle"])
    assert "pickled Python objects" not in " ".join(result.output.split())


def test_the_service_leaves_the_model_unavailable(hostile: Path, marker: Path, tmp_path: Path) -> None:
    """dyt-serve (a real uvicorn server) loading a repository whose 1/model.pt2 is hostile."""
    import httpx

    from service.engines.uvicorn import serve_in_thread
    from service.http.app import create_app
    from service.settings import Settings

    model_pt = save_checkpoint(create_model("vit_tiny", norm="dyt", **TINY_VIT), tmp_path / "model.pt")
    _aoti_folder(tmp_path / "repo", hostile, model_pt)
    with serve_in_thread(create_app(tmp_path / "repo", Settings(threads=1, warmup_runs=1))) as server:
        ready = httpx.get(f"http://{server.address}/v2/models/vit-aoti/ready", timeout=30)
        index = httpx.post(f"http://{server.address}/v2/repository/index", timeout=30).json()
    assert not marker.exists()
    assert ready.status_code != 200
    assert "pickled Python objects" in index[0]["reason"]
