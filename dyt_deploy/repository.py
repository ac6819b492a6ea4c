"""The model repository on disk, in Triton Inference Server's layout.

```
repo/<name>/config.pbtxt     Triton model config (platform onnxruntime_onnx)
repo/<name>/dyt.json         dyt-deploy manifest (family, norm, form, IO signature, parity, ...)
repo/<name>/1/model.onnx
```
Folders are staged beside their final place and renamed into it, so a reader never sees a
half-written model and a failed write leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DytDeployError

MANIFEST_NAME = "dyt.json"
MANIFEST_FORMAT = "dyt-deploy/manifest"
MANIFEST_VERSION = 1
_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
                 "bfloat16": "TYPE_BF16"}
DEFAULT_MAX_BATCH_SIZE = 32


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _stage_beside(final: Path) -> Iterator[Path]:
    """A fresh staging folder beside ``final`` (normal permissions; mkdtemp alone gives 0700).

    It is removed afterwards; when the block fails, so are the parent folders it had to create,
    so a failed write leaves no trace.
    """
    new_parents = [p for p in (final.parent, *final.parent.parents) if not p.exists()]  # deepest first
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    stage.chmod(0o777 & ~current_umask())
    succeeded = False
    try:
        yield stage
        succeeded = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in [] if succeeded else new_parents:
            try:
                folder.rmdir()
            except OSError:
                break


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def refuse_existing(path: Path, force: bool) -> None:
    """Raise unless ``path`` is free or ``force`` allows replacing it."""
    if path.exists() and not force:
        raise DytDeployError(f"{path} exists; pass --force to replace it")


@contextmanager
def staged_folder(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``final``; on success it replaces the folder ``final``.

    On any error the staging folder is removed and ``final`` is untouched.
    """
    refuse_existing(final, force)
    with _stage_beside(final) as stage:
        yield stage
        _swap_into_place(stage, final)


@contextmanager
def staged_file(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside the file ``final``; on success the files written there move
    next to ``final`` (companions such as ``.data`` first, ``final``'s own name last)."""
    refuse_existing(final, force)
    with _stage_beside(final) as stage:
        yield stage
        for item in sorted(stage.iterdir(), key=lambda p: p.name == final.name):
            os.replace(item, final.parent / item.name)


def _swap_into_place(stage: Path, final: Path) -> None:
    if not final.exists():
        os.replace(stage, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old / final.name)
    try:
        os.replace(stage, final)
    except OSError:
        os.replace(old / final.name, final)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def config_pbtxt(name: str, inputs: list[dict], outputs: list[dict], platform: str = "onnxruntime_onnx",
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> str:
    """A Triton config.pbtxt for a model with the given IO signature.

    ``inputs``/``outputs`` are ``{"name", "dtype", "shape"}`` dicts, shapes holding ints and
    dim names. When every tensor's first dim is named "batch", Triton batches it
    (``max_batch_size`` > 0 and ``dims`` without the batch dim); otherwise max_batch_size is 0.
    Other named dims become -1.
    """
    batched = all(t["shape"] and t["shape"][0] == "batch" for t in inputs + outputs)
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size if batched else 0}"]
    for section, tensors in (("input", inputs), ("output", outputs)):
        entries = [_tensor_entry(t, batched) for t in tensors]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    return "\n".join(lines) + "\n"


def _tensor_entry(tensor: dict, batched: bool) -> str:
    dtype = _TRITON_TYPES.get(tensor["dtype"])
    if dtype is None:
        raise DytDeployError(f"tensor {tensor['name']!r}: dtype {tensor['dtype']} has no Triton type")
    shape = tensor["shape"][1:] if batched else tensor["shape"]
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape)
    return f'  {{\n    name: "{tensor["name"]}"\n    data_type: {dtype}\n    dims: [ {dims} ]\n  }}'


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The dyt.json of a model folder, checked for its format tag."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DytDeployError(f"{folder}: no {MANIFEST_NAME}; is this a dyt-deploy model folder?") from None
    except json.JSONDecodeError as err:
        raise DytDeployError(f"{path}: not valid JSON ({err}); re-export the model") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DytDeployError(f"{path}: not a dyt-deploy manifest (format {manifest.get('format')!r})")
    return manifest


def latest_version(folder: Path) -> str:
    """The highest numeric version folder of a model folder (Triton's default policy serves the latest)."""
    versions = [p.name for p in Path(folder).iterdir()
                if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")]
    if not versions:
        raise DytDeployError(f"{folder}: no numeric version folder (expected {Path(folder).name}/1/model.onnx)")
    return max(versions, key=int)


def list_model_folders(repository: Path) -> list[Path]:
    """Model folders of a repository: subfolders holding a dyt.json, sorted by name."""
    return sorted(p for p in Path(repository).iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())
