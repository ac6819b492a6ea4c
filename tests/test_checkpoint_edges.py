"""Edges of checkpoint loading: the exact messages of bad files, norm inference on odd names, load_model's arguments.

Written against the mutants `make mutation` found surviving in ``checkpoint.py``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dyt_deploy import checkpoint as ckpt
from dyt_deploy.checkpoint import infer_norm, load_checkpoint, load_model
from dyt_deploy.errors import CheckpointError
from dyt_deploy.models import create_model, list_models

SMALL = {"depth": 1, "img_size": 32}
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
    path.write_bytes(b"x")

    def broken(_path: object) -> None:
        raise RuntimeError("archive is damaged\nsecond line of detail")

    monkeypatch.setattr(torch.export, "load", broken)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a readable torch.export program (archive is damaged)"


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


def test_a_bad_pickle_opcode_with_trust_names_the_unpickling_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x02X")  # a pickle protocol header, then a truncated opcode
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, trust_pickle=True)
    assert str(info.value).startswith(f"{path}: corrupt")
