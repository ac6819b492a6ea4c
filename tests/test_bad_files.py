"""Files that are not loadable checkpoints: a few hundred of them through ``load_checkpoint`` (always a
one-line CheckpointError that names the file and says what it is), and a sample through the real
``dyt-export`` and ``dyt-check`` commands (exit status 2, one ``error:`` line, no traceback)."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import zipfile
from fractions import Fraction
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from dyt_deploy.checkpoint import load_checkpoint, save_checkpoint, sniff_file
from dyt_deploy.cli import check_app, export_app
from dyt_deploy.errors import CheckpointError
from dyt_deploy.models import create_model

TEXT = b"ello, this is a note and not a checkpoint\nsecond line\n" * 4


def onnx_bytes() -> bytes:
    """A small real ONNX model, as an exporter writes it."""
    node = helper.make_node("Tanh", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 20)])
    return model.SerializeToString()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("pickle")
        info.size = len(TEXT)
        archive.addfile(info, io.BytesIO(TEXT))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("real") / "model.pt"
    save_checkpoint(create_model("vit_tiny", norm="dyt", depth=1, img_size=32), path)
    return path.read_bytes()


def bad_files(real: bytes) -> dict[str, bytes]:
    """Name -> content: every first byte before text, random bytes, cuts of a real checkpoint, and the rest."""
    files = {f"byte{first:03d}.pt": bytes([first]) + TEXT for first in range(256)}
    generator = torch.Generator().manual_seed(0)
    for length in (1, 2, 9, 64, 1000, 4096, 65537):
        data = torch.randint(0, 256, (length,), generator=generator, dtype=torch.uint8).numpy().tobytes()
        for suffix in (".pt", ".pth", ".safetensors", ".bin"):
            files[f"random{length}{suffix}"] = data
    offsets = sorted({*range(0, 12), *range(12, len(real), max(1, len(real) // 60)), 100, 500, len(real) - 1})
    files.update({f"cut{offset}.pt": real[:offset] for offset in offsets})
    files.update({
        "empty.pt": b"",
        "empty.safetensors": b"",
        "config.json.pt": json.dumps({"model": {"head.weight": [1.0, 2.0]}, "epoch": 3}).encode(),
        "list.json.pt": b"[1, 2, 3]",
        "model.onnx": onnx_bytes(),
        "exported.pt": onnx_bytes(),
        "junk.zip.pt": zip_bytes({"junk.txt": b"nothing to see", "more/notes.md": b"# notes"}),
        "empty.zip.pt": zip_bytes({}),
        "fake-archive.pt": zip_bytes({"archive/data.pkl": TEXT, "archive/version": b"3\n"}),
        "pickled-junk.pt": b"\x80\x02" + TEXT,
        "pickle-fraction.pt": pickle.dumps({"model": Fraction(1, 2)}, protocol=2),
        "old.tar.pt": tar_bytes(),
        "safetensors-header-only.safetensors": (21).to_bytes(8, "little") + b'{"a": {"dtype": "F32"',
        "text.pt2": TEXT,
        "latin1.pt": "d\u00e9j\u00e0 vu, caf\u00e9".encode("latin-1") * 20,
    })
    return files


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory, checkpoint_bytes: bytes) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    for name, data in bad_files(checkpoint_bytes).items():
        (folder / name).write_bytes(data)
    return folder


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    return str(info.value)


def test_every_bad_file_is_a_one_line_checkpoint_error(bad_dir: Path) -> None:
    paths = sorted(bad_dir.iterdir())
    assert len(paths) > 300
    problems = []
    for path in paths:
        try:
            load_checkpoint(path)
            problems.append(f"{path.name}: loaded")
        except CheckpointError as err:
            message = str(err)
            if not message.startswith(f"{path}: ") or "\n" in message:
                problems.append(f"{path.name}: {message!r}")
        except Exception as err:  # anything else is the bug this test is for
            problems.append(f"{path.name}: {type(err).__name__}: {err}")
    assert not problems, problems[:10]


@pytest.mark.parametrize(("name", "says"), [
    ("empty.pt", "it is an empty file (0 bytes); expected a PyTorch checkpoint (.pt, .pth), a .safetensors state "
                 "dict or a torch.export program (.pt2); re-save or re-download it"),
    ("byte104.pt", "it is a text file (starts 'hello, this is a note and not a checkpoi')"),
    ("byte106.pt", "it is a text file (starts 'jello, this is a note and not a checkpoi')"),
    ("byte000.pt", "it is binary data of no known format (starts 00 65 6c 6c 6f 2c 20 74)"),
    ("config.json.pt", "it is a JSON object; expected"),
    ("list.json.pt", "it is a JSON array; expected"),
    ("model.onnx", "it is an ONNX model (IR version"),
    ("exported.pt", "from pytorch); expected a PyTorch checkpoint"),
    ("junk.zip.pt", "it is a zip archive that is not a PyTorch checkpoint (no data.pkl; it holds junk.txt, "
                    "more/notes.md)"),
    ("empty.zip.pt", "(no data.pkl; it holds nothing)"),
    ("fake-archive.pt", "it is a PyTorch checkpoint archive, and torch.load failed on it ("),
    ("pickled-junk.pt", "it is a pickle (protocol 2: PyTorch's legacy format, or a plain pickle), and torch.load"),
    ("old.tar.pt", "it is a tar archive (PyTorch's oldest format), and torch.load failed on it"),
    ("cut100.pt", "it is a truncated or damaged zip archive (PyTorch checkpoints are zip archives), and torch.load"),
    ("random64.safetensors", "not a readable safetensors file: it is binary data of no known format"),
    ("empty.safetensors", "not a readable safetensors file: it is an empty file (0 bytes)"),
    ("safetensors-header-only.safetensors", "not a readable safetensors file: it is a safetensors file (21-byte"),
    ("text.pt2", "not a readable torch.export program ("),
])
def test_the_message_says_what_the_file_is(bad_dir: Path, name: str, says: str) -> None:
    assert says in load_error(bad_dir / name)


def test_the_onnx_message_says_what_to_pass_instead(bad_dir: Path) -> None:
    assert load_error(bad_dir / "model.onnx").endswith(
        "dyt-export and dyt-check take the PyTorch model an ONNX file was exported from "
        "(dyt-check also takes the model folder dyt-export wrote)")


def test_pickled_objects_beyond_tensors_keep_the_trust_advice(bad_dir: Path) -> None:
    """A real pickle naming a class is refused for the risk, not called damaged."""
    assert "--trust-pickle" in load_error(bad_dir / "pickle-fraction.pt")


def test_text_never_reaches_the_unpickler_even_when_trusted(bad_dir: Path) -> None:
    """``c`` starts a pickle GLOBAL: a trusted load of text could import and call things; it is refused unread."""
    path = bad_dir / "byte099.pt"
    with pytest.raises(CheckpointError, match="it is a text file"):
        load_checkpoint(path, trust_pickle=True)


@pytest.mark.parametrize(("data", "kind"), [
    (b"", "empty"), (TEXT, "text"), (b"{}", "json"), (b"\x80\x04K\x01.", "pickle"),
    (bytes(range(256)), "binary"),
])
def test_sniff_names_the_kind(tmp_path: Path, data: bytes, kind: str) -> None:
    (tmp_path / "f").write_bytes(data)
    assert sniff_file(tmp_path / "f").name == kind


def test_sniff_knows_real_files(tmp_path: Path, checkpoint_bytes: bytes) -> None:
    (tmp_path / "model.pt").write_bytes(checkpoint_bytes)
    (tmp_path / "model.onnx").write_bytes(onnx_bytes())
    assert sniff_file(tmp_path / "model.pt").name == "torch-archive"
    assert sniff_file(tmp_path / "model.onnx").name == "onnx"
    assert onnx.load(tmp_path / "model.onnx").producer_name == "pytorch"  # the sample is a valid model


def test_an_export_program_named_pt_says_to_name_it_pt2(tmp_path: Path) -> None:
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
    torch.export.save(program, tmp_path / "program.pt")
    assert "it is a torch.export program archive (it loads when named .pt2)" in load_error(tmp_path / "program.pt")
    (tmp_path / "program.pt").rename(tmp_path / "program.pt2")
    assert load_checkpoint(tmp_path / "program.pt2").source_format == "torch.export"


# -- the command line ------------------------------------------------------------------------------

CLI_SAMPLE = ["empty.pt", "byte104.pt", "byte106.pt", "byte097.pt", "byte046.pt", "config.json.pt", "model.onnx",
              "random4096.pt", "cut500.pt", "junk.zip.pt", "fake-archive.pt", "random1000.safetensors"]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("app", [export_app, check_app], ids=["dyt-export", "dyt-check"])
def test_the_commands_print_one_error_line(bad_dir: Path, tmp_path: Path, app: object) -> None:
    runner = CliRunner()
    for name in CLI_SAMPLE:
        args = [str(bad_dir / name)] + (["-o", str(tmp_path / "out.onnx")] if app is export_app else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert len(error_lines(result.output)) == 1, (name, result.output)
        assert "Traceback" not in result.output and "not a" in " ".join(result.output.split()), (name, result.output)
    assert not (tmp_path / "out.onnx").exists()


def test_the_installed_dyt_check_on_an_onnx_file(bad_dir: Path) -> None:
    """The issue's case, through the real console script: an ONNX file given to dyt-check as a model.pt."""
    script = Path(sys.executable).parent / "dyt-check"
    command = [str(script)] if script.is_file() else [sys.executable, "-c", "from dyt_deploy.cli import check_app; "
                                                      "check_app()"]
    result = subprocess.run([*command, str(bad_dir / "model.onnx")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert "it is an ONNX model" in " ".join(result.stderr.split())
