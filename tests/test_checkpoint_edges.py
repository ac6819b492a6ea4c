"""Edges of checkpoint loading: the exact messages of bad files, norm inference on odd names, load_model's arguments.

Written against the mutants `make mutation` found surviving in ``checkpoint.py``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from dyt_deploy import checkpoint as ckpt
from dyt_deploy.checkpoint import FORMAT_TAG, infer_norm, load_checkpoint, load_model, save_checkpoint
from dyt_deploy.errors import CheckpointError, DytDeployError
from dyt_deploy.models import create_model, list_models

SMALL = {"depth": 1, "img_size": 32}
PICKLE = "a pickle (protocol 2: PyTorch's legacy format, or a plain pickle)"
T = torch.zeros(1)


def vit_state(norm: str = "layernorm") -> dict[str, torch.Tensor]:
    return create_model("vit_tiny", norm=norm, **SMALL).state_dict()


# -- load_model -----------------------------------------------------------------------------------

def test_load_model_passes_arch_and_config_on(tmp_path: Path) -> None:
    torch.save(vit_state("dyt"), tmp_path / "sd.pt")
    model = load_model(tmp_path / "sd.pt", "vit_tiny", **SMALL)
    assert model.arch == "vit_tiny" and model.config["depth"] == 1 and model.config["norm"] == "dyt"
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path / "sd.pt", "vit_tiny", depth=2, img_size=32)  # the config is really used


# -- messages name the file ------------------------------------------------------------------------

def test_every_state_dict_error_starts_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(vit_state(), path)
    for kwargs in ({"arch": "resnet"}, {"arch": "vit_tiny", "depth": 2, "img_size": 32}):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, **kwargs)
        assert str(info.value).startswith(f"{path}: ")


def test_state_dict_load_records_the_path(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(vit_state(), path)
    assert load_checkpoint(path, arch="vit_tiny", **SMALL).path == path


def test_without_arch_the_message_lists_the_known_ones(tmp_path: Path) -> None:
    torch.save(vit_state(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "sd.pt")
    assert str(info.value).endswith(f"Known: {', '.join(list_models())}")


def test_dict_without_state_dict_lists_eight_keys_and_where_it_looked(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({f"k{i}": i for i in range(10)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="vit_tiny")
    keys = sorted(f"k{i}" for i in range(10))[:8]
    assert str(info.value) == (f"{path}: a dict with keys {keys} holds no state_dict (looked for a bare one and "
                               "for keys model, state_dict, model_state_dict, module)")


def test_module_key_holds_a_state_dict(tmp_path: Path) -> None:
    torch.save({"module": vit_state("dyt"), "step": 10}, tmp_path / "ckpt.pt")
    assert load_checkpoint(tmp_path / "ckpt.pt", arch="vit_tiny", **SMALL).norm == "dyt"


def test_unreadable_export_program_names_the_first_line_of_the_cause(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt2"
    zipfile.ZipFile(path, "w").close()  # an archive with no pickled entries reaches torch.export.load

    def broken(_path: object) -> None:
        raise RuntimeError("archive is damaged\nsecond line of detail")

    monkeypatch.setattr(torch.export, "load", broken)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a readable torch.export program (archive is damaged)"


def test_a_pt2_that_is_no_zip_archive_never_reaches_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(b"x")
    monkeypatch.setattr(torch.export, "load", lambda _path: pytest.fail("torch.export.load was called"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: not a readable torch.export program (a .pt2 is a zip archive); "
                               "it is a text file (starts 'x')")


# -- the mismatch message -----------------------------------------------------------------------------

def mismatch(tmp_path: Path, drop: int) -> list[str]:
    state = vit_state()
    removed = sorted(state)[:drop]
    for key in removed:
        del state[key]
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "sd.pt", arch="vit_tiny", **SMALL)
    return str(info.value).split("\n")


def test_mismatch_message_lines(tmp_path: Path) -> None:
    lines = mismatch(tmp_path, 2)
    missing = sorted(vit_state())[:2]
    assert lines == [f"{tmp_path / 'sd.pt'}: the state_dict does not fit architecture 'vit_tiny':",
                     f"  missing keys: {', '.join(missing)}",
                     "  check --arch, --norm and the architecture config the checkpoint was trained with"]


@pytest.mark.parametrize(("drop", "suffix"), [(10, ""), (11, " (+1 more)"), (13, " (+3 more)")])
def test_long_key_lists_show_ten_and_count_the_rest(tmp_path: Path, drop: int, suffix: str) -> None:
    missing = sorted(vit_state())[:drop]
    assert mismatch(tmp_path, drop)[1] == f"  missing keys: {', '.join(missing[:10])}{suffix}"


# -- norm inference -------------------------------------------------------------------------------

@pytest.mark.parametrize(("keys", "norm"), [
    (["blocks.0.mixer.weight", "blocks.0.mixer.shift"], "derf"),  # any .shift
    (["layers.0.attn_norm.weight", "head.weight"], "rmsnorm"),  # a norm site without a bias
    (["layers.0.attn_norm.weight", "layers.0.attn_norm.bias"], "layernorm"),
    (["fc.weight", "fc.bias"], "layernorm"),  # no norm site at all: the common default
    (["blocks.norm.proj.weight"], "layernorm"),  # "norm" in a parent's name does not make proj a norm
    (["encoder.LayerNorm.weight", "encoder.LayerNorm.bias"], "layernorm"),  # case-insensitive
    (["encoder.RMSNorm.weight"], "rmsnorm"),
])
def test_infer_norm_from_parameter_names(keys: list[str], norm: str) -> None:
    assert infer_norm(dict.fromkeys(keys, T)) == norm


# -- the detail of an unpickling error ------------------------------------------------------------

@pytest.mark.parametrize(("message", "detail"), [
    ("Weights only load failed.\nUnpicklingError: invalid load key, 'x'.\nCheck the docs.",
     "UnpicklingError: invalid load key, 'x'."),
    ("Weights only load failed.\nUnsupported global: GLOBAL foo.Bar\nCheck the docs.",
     "Unsupported global: GLOBAL foo.Bar"),
    ("WeightsUnpickler error: Unsupported operand 7\nSome ERROR happened later\nadvice", "Some ERROR happened later"),
    ("first line\nsecond line", "second line"),  # no keyword: the last line
    ("   ", "UnpicklingError"),  # no text: the error's type
])
def test_error_detail_picks_the_informative_line(message: str, detail: str) -> None:
    assert ckpt._error_detail(pickle.UnpicklingError(message)) == detail


def test_a_truncated_pickle_with_trust_names_the_unpickling_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x02X")  # a pickle protocol header, then a truncated opcode
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, trust_pickle=True)
    assert str(info.value) == (f"{path}: not a loadable checkpoint: it is {PICKLE}, and torch.load failed on it "
                               "(pickle data was truncated); re-save or re-download it")


def failing_load(error: BaseException):
    def load(*args: object, **kwargs: object) -> None:
        raise error

    return load


def test_a_refused_global_explains_the_risk_and_the_way_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "whole.pt"
    path.write_bytes(b"\x80\x02x")
    monkeypatch.setattr(torch, "load", failing_load(pickle.UnpicklingError(
        "Weights only load failed.\nWeightsUnpickler error: Unsupported global: GLOBAL my.Model")))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: holds pickled Python objects beyond tensors (e.g. a whole nn.Module). Loading it would run code "
        "from the file, so it is refused. If you made or trust this file, allow it with --trust-pickle "
        "(Python: trust_pickle=True); better, re-save the model's state_dict.")
    with pytest.raises(CheckpointError) as info:  # trusted, the same error means a broken file
        load_checkpoint(path, trust_pickle=True)
    assert str(info.value) == (f"{path}: not a loadable checkpoint: it is {PICKLE}, and torch.load failed on it "
                               "(WeightsUnpickler error: Unsupported global: GLOBAL my.Model); "
                               "re-save or re-download it")


def test_other_unpickling_errors_are_corrupt_files_even_untrusted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x02x")
    monkeypatch.setattr(torch, "load", failing_load(pickle.UnpicklingError("advice\nUnpicklingError: bad key")))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: not a loadable checkpoint: it is {PICKLE}, and torch.load failed on it "
                               "(UnpicklingError: bad key); re-save or re-download it")


def test_a_truncated_archive_names_the_first_line_of_the_cause(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(b"PK\x03\x04 the start of a zip archive, and no more")
    monkeypatch.setattr(torch, "load", failing_load(RuntimeError("PytorchStreamReader failed\nat frame 3")))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: not a loadable checkpoint: it is a truncated or damaged zip archive "
                               "(PyTorch checkpoints are zip archives), and torch.load failed on it "
                               "(RuntimeError: PytorchStreamReader failed); re-save or re-download it")


def test_tensors_are_mapped_to_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint saved from a GPU must load on a CPU-only host (no GPU here to save one, so a spy)."""
    torch.save(vit_state(), tmp_path / "sd.pt")
    seen = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(tmp_path / "sd.pt", arch="vit_tiny", **SMALL)
    assert seen[0]["map_location"] == "cpu"
    assert seen[0]["weights_only"] is True
    assert seen[0]["mmap"] is True  # a zip archive: tensors nobody uses are never read


# -- save_checkpoint -------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs", [{"config": {"norm": "dyt"}}, {"arch": "vit_tiny"}, {"arch": "", "config": {}}],
                         ids=["no-arch", "no-config", "empty-arch"])
def test_save_needs_both_arch_and_config(tmp_path: Path, attrs: dict) -> None:
    model = torch.nn.Linear(2, 2)
    for name, value in attrs.items():
        setattr(model, name, value)
    with pytest.raises(DytDeployError) as info:
        save_checkpoint(model, tmp_path / "model.pt")
    assert str(info.value) == "save_checkpoint takes zoo models (from create_model or load_model)"
    assert not (tmp_path / "model.pt").exists()


# -- own format ------------------------------------------------------------------------------------

def own_payload(**changes: object) -> dict:
    model = create_model("vit_tiny", norm="dyt", **SMALL)
    payload = {"format": FORMAT_TAG, "format_version": 1, "arch": "vit_tiny", "config": dict(model.config),
               "norm": "dyt", "state_dict": model.state_dict()}
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def test_own_format_without_a_version_is_version_0_and_loads(tmp_path: Path) -> None:
    payload = own_payload()
    del payload["format_version"]
    torch.save(payload, tmp_path / "model.pt")
    assert load_checkpoint(tmp_path / "model.pt").arch == "vit_tiny"


def test_own_format_errors_start_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    state = own_payload()["state_dict"]
    del state["head.weight"]
    for payload in (own_payload(arch="resnet"), own_payload(state_dict=state)):
        torch.save(payload, path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path}: ")


def test_own_format_without_an_arch_says_so(tmp_path: Path) -> None:
    payload = own_payload()
    del payload["arch"]
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="unknown architecture ''; known: "):
        load_checkpoint(tmp_path / "model.pt")


# -- other formats record what they know --------------------------------------------------------------

def test_export_program_records_its_path_and_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt2"
    zipfile.ZipFile(path, "w").close()
    module = torch.nn.Linear(2, 2).train()

    class Program:
        def module(self) -> torch.nn.Module:
            return module

    monkeypatch.setattr(torch.export, "load", lambda _path: Program())
    loaded = load_checkpoint(path)
    assert (loaded.model, loaded.source_format, loaded.path) == (module, "torch.export", path)
    assert (loaded.arch, loaded.config, loaded.norm) == (None, {}, None)


def test_pickled_foreign_module_records_what_it_can(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    module.config = [("norm", "dyt")]  # a config object that is not a dict (as transformers' are not)
    torch.save(module, tmp_path / "whole.pt")
    loaded = load_checkpoint(tmp_path / "whole.pt", trust_pickle=True)
    assert loaded.source_format == "pickled-module"
    assert (loaded.arch, loaded.config, loaded.norm, loaded.path) == (None, {}, None, tmp_path / "whole.pt")
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))  # no config, no arch attribute at all
    torch.save(plain, tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt", trust_pickle=True).config == {}
