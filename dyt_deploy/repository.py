"""The model repository on disk, in Triton Inference Server's layout.

```
repo/<name>/config.pbtxt     Triton model config (platform onnxruntime_onnx, or backend "openvino")
repo/<name>/dyt.json         dyt-deploy manifest (family, norm, form, backend, IO signature, parity, ...)
repo/<name>/1/model.onnx     (an OpenVINO folder: 1/model.xml + 1/model.bin, OpenVINO IR)
```
Folders are staged beside their final place and renamed into it, so a reader never sees a
half-written model and a failed write leaves the previous one intact. A staging folder's name
holds its owner (``.NAME.staging-HOST-PID-xxxx``): those left by a process that was killed are
removed, with a warning the command line prints, by the next write to that folder (the whole
repository, every model's) once that process is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DytDeployError
from .triton_config import DEFAULT_MAX_BATCH_SIZE, build_config, config_text

MANIFEST_NAME = "dyt.json"
MANIFEST_FORMAT = "dyt-deploy/manifest"
MANIFEST_VERSION = 1
STAGING_KINDS = ("staging", "old")  # .NAME.staging-OWNER-xxxx (being written), .NAME.old-OWNER-xxxx (being replaced)

log = logging.getLogger(__name__)


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
    remove_stale_staging(final.parent)
    stage = Path(tempfile.mkdtemp(prefix=_staging_prefix(final, "staging"), dir=final.parent))
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


def _staging_prefix(final: Path, kind: str) -> str:
    """``.NAME.KIND-HOST-PID-``: the start of a staging name, naming the process that owns it."""
    return f".{final.name}.{kind}-{socket.gethostname()}-{os.getpid()}-"


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (one we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?P<owner>.+)$")


@dataclass(frozen=True)
class StaleStaging:
    """A staging sibling (``.NAME.staging-HOST-PID-xxxx`` or ``.NAME.old-...``) and its owner's pid."""

    path: Path
    name: str
    kind: str
    pid: int


def _dead_owner(path: Path) -> StaleStaging | None:
    """``path`` as a staging sibling whose owner is provably gone: a process of this host that no
    longer runs. None otherwise (not a staging name, another host's, a live process's, an old name)."""
    match = _STAGING_NAME.match(path.name)
    owner = match.group("owner").rsplit("-", 2) if match else []
    if len(owner) != 3 or owner[0] != socket.gethostname() or not owner[1].isdigit():
        return None
    pid = int(owner[1])
    if pid == os.getpid() or not process_gone(pid):
        return None
    return StaleStaging(path, match.group("name"), match.group("kind"), pid)


def remove_stale_staging(folder: Path) -> list[StaleStaging]:
    """Remove every staging sibling in ``folder`` (``.NAME.staging-*``, ``.NAME.old-*``, whatever
    the NAME: a repository's other models too) whose owner process is gone (a killed export), each
    with the warning "removed stale staging folder PATH left by process N" (the command line
    prints it). A ``.NAME.old-*`` folder still holding NAME while NAME itself is missing (killed
    between the two renames of a replacement) first puts it back. Others are left alone."""
    removed = []
    for path in sorted(Path(folder).glob(".*")):
        stale = _dead_owner(path)
        if stale is None or stale.kind not in STAGING_KINDS:
            continue
        if stale.kind == "old":
            _restore_replaced(stale)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(stale)
        log.warning("removed stale staging folder %s left by process %d (gone: an interrupted write)", path, stale.pid)
    return removed


def _restore_replaced(stale: StaleStaging) -> None:
    """Put back the model a killed replacement had moved aside (``.NAME.old-*/NAME``) when NAME is missing."""
    final, kept = stale.path.parent / stale.name, stale.path / stale.name
    if not final.exists() and kept.exists():
        os.replace(kept, final)
        log.warning("restored %s from %s (a replacement was interrupted)", final, stale.path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; of a folder (a Hugging Face model folder), the
    sha256 of each file's relative path and sha256, in sorted order."""
    if Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        lines = "".join(f"{p.relative_to(path).as_posix()} {sha256_file(p)}\n" for p in files)
        return hashlib.sha256(lines.encode()).hexdigest()
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


@contextmanager
def atomic_write(final: Path) -> Iterator[Path]:
    """A temporary path beside the file ``final``, renamed onto it only when the block succeeds
    (an existing ``final`` is replaced then, and untouched on failure)."""
    final = Path(final)
    with staged_file(final, force=True) as stage:
        yield stage / final.name


def _swap_into_place(stage: Path, final: Path) -> None:
    if not final.exists():
        os.replace(stage, final)
        return
    old = Path(tempfile.mkdtemp(prefix=_staging_prefix(final, "old"), dir=final.parent))
    os.replace(final, old / final.name)
    try:
        os.replace(stage, final)
    except OSError:
        os.replace(old / final.name, final)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def config_pbtxt(name: str, inputs: list[dict], outputs: list[dict], platform: str | None = "onnxruntime_onnx",
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, backend: str | None = None) -> str:
    """A Triton config.pbtxt for a model with the given IO signature (see
    :func:`dyt_deploy.triton_config.build_config`): ``platform`` (onnxruntime_onnx, tensorrt_plan)
    or, for a backend Triton names that way (``backend="openvino"``), ``platform=None``."""
    return config_text(build_config(name, inputs, outputs, platform=platform, backend=backend,
                                    max_batch_size=max_batch_size))


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


def library_versions() -> dict[str, str]:
    """Installed versions of the packages a model folder's manifest and a benchmark report record."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("dyt-deploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnx-ir",
                    "openvino"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
