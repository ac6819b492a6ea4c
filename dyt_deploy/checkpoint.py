"""model.pt: write dyt-deploy checkpoints, read every supported checkpoint format safely.

Formats read by :func:`load_checkpoint`:

- dyt-deploy's own (``save_checkpoint``): a dict with a format tag, the architecture, its
  config, the norm kind and the state_dict; readable with ``torch.load(weights_only=True)``.
- A bare state_dict, or a training checkpoint ``{"model": state_dict, ...}`` (``"state_dict"``
  and ``"model_state_dict"`` keys too), given the architecture (``arch=``).
- A ``torch.export`` program (``.pt2``).
- A whole pickled ``nn.Module``, only with ``trust_pickle=True``: unpickling runs code.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, DytDeployError, first_line
from .models import create_model, get_arch
from .repository import atomic_write

FORMAT_TAG = "dyt-deploy/model"
FORMAT_VERSION = 1
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


@dataclass
class LoadedModel:
    """A model read from disk, with what is known about it.

    ``arch``/``config``/``norm`` are None for formats that do not record them (a ``.pt2``
    program or a pickled module of unknown class). ``source_format`` names the format read.
    """

    model: nn.Module
    source_format: str
    arch: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    norm: str | None = None
    path: Path | None = None


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a zoo model as a dyt-deploy model.pt; the file appears complete or not at all."""
    arch, config = getattr(model, "arch", ""), getattr(model, "config", None)
    if not arch or config is None:
        raise DytDeployError("save_checkpoint takes zoo models (from create_model or load_model)")
    payload = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "config": dict(config),
        "norm": config.get("norm"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path: str | os.PathLike, arch: str | None = None, **kwargs: Any) -> nn.Module:
    """The model of :func:`load_checkpoint`, in eval mode."""
    return load_checkpoint(path, arch=arch, **kwargs).model


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | None = None,
    norm: str | None = None,
    trust_pickle: bool = False,
    **config: Any,
) -> LoadedModel:
    """Read ``path`` in any supported format (see the module docstring).

    Args:
        arch: zoo architecture for checkpoints that do not record one (bare state_dicts,
            training checkpoints); it overrides a recorded one only if they agree.
        norm: norm kind of such checkpoints; default: inferred from the parameter names
            (``alpha`` + ``shift`` -> derf, ``alpha`` -> dyt, norm biases -> layernorm, else rmsnorm).
        trust_pickle: allow unpickling arbitrary objects (a whole pickled ``nn.Module``).
            Unpickling runs code from the file: only for files you made or trust.
        config: architecture config overrides for checkpoints without a recorded config.
    """
    path = Path(path)
    if path.is_dir():  # a Hugging Face folder (save_pretrained); transformers is imported there, lazily
        from .hf import load_folder

        return load_folder(path, arch=arch)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; pass the path of a model.pt (or .pt2)")
    if path.suffix == ".pt2":
        return LoadedModel(_load_exported(path), "torch.export", path=path)
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        config_attr = getattr(obj, "config", None)
        # Zoo models record a dict; other libraries' config objects (transformers' PretrainedConfig) are not ours.
        recorded = dict(config_attr) if isinstance(config_attr, dict) else {}
        loaded = LoadedModel(obj, "pickled-module", getattr(obj, "arch", None) or None, recorded,
                             recorded.get("norm"), path=path)
    elif isinstance(obj, dict) and obj.get("format") == FORMAT_TAG:
        loaded = _from_own_format(obj, arch, path)
    elif isinstance(obj, dict):
        loaded = _from_state_dict(_find_state_dict(obj, path), arch, norm, config, path)
    else:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a model, state_dict or checkpoint dict")
    loaded.model.eval()
    return loaded


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        # argparse.Namespace is allowed: training scripts save their args in it (plain attributes).
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        # "Unsupported global": the file is valid but names Python classes to rebuild.
        refused_global = "unsupported global" in str(err).lower()
        if trust_pickle or not refused_global:
            raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({_error_detail(err)})") from None
        raise CheckpointError(
            f"{path}: holds pickled Python objects beyond tensors (e.g. a whole nn.Module). Loading it "
            "would run code from the file, so it is refused. If you made or trust this file, allow it "
            "with --trust-pickle (Python: trust_pickle=True); better, re-save the model's state_dict."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError, ImportError) as err:
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({first_line(err)}); re-save or re-download it"
        ) from None


def _error_detail(err: BaseException) -> str:
    """The informative line of an unpickling error (torch puts advice before the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if "error" in line.lower() or "unsupported" in line.lower()]
    return (detail or lines or [type(err).__name__])[-1]


def _load_exported(path: Path) -> nn.Module:
    try:
        return torch.export.load(path).module()
    except Exception as err:  # torch.export raises many types for a bad archive
        raise CheckpointError(f"{path}: not a readable torch.export program ({first_line(err)})") from None


def _from_own_format(obj: dict, arch: str | None, path: Path) -> LoadedModel:
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer dyt-deploy (format version {obj['format_version']}); upgrade dyt-deploy"
        )
    recorded = obj.get("arch")
    if arch is not None and arch != recorded:
        raise CheckpointError(f"{path}: records architecture {recorded!r}, but {arch!r} was asked for")
    config = dict(obj.get("config") or {})
    model = _build(recorded, config, path)
    _load_state(model, obj["state_dict"], path)
    return LoadedModel(model, FORMAT_TAG, recorded, config, config.get("norm"), path)


def _find_state_dict(obj: dict, path: Path) -> dict:
    for key in _STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(
        f"{path}: a dict with keys {sorted(map(str, obj))[:8]} holds no state_dict "
        f"(looked for a bare one and for keys {', '.join(_STATE_DICT_KEYS)})"
    )


def _from_state_dict(state: dict, arch: str | None, norm: str | None, config: dict, path: Path) -> LoadedModel:
    if arch is None:
        from .models import list_models

        raise CheckpointError(
            f"{path}: a bare state_dict does not say its architecture; pass --arch NAME "
            f"(Python: arch=...). Known: {', '.join(list_models())}"
        )
    state = _strip_wrapper_prefixes(state)
    config = {**config, "norm": norm or infer_norm(state)}
    model = _build(arch, config, path)
    _load_state(model, state, path)
    return LoadedModel(model, "state_dict", arch, dict(model.config), config["norm"], path)


def _strip_wrapper_prefixes(state: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def infer_norm(state: dict) -> str:
    """Guess the norm kind of a zoo state_dict from its parameter names."""
    keys = set(state)
    if any(k.endswith(".shift") for k in keys):
        return "derf"
    if any(k.endswith(".alpha") for k in keys):
        return "dyt"
    sites = {k.rpartition(".")[0] for k in keys}
    norm_sites = {s for s in sites if "norm" in s.rpartition(".")[2].lower()}
    if any(f"{site}.bias" in keys for site in norm_sites):
        return "layernorm"
    return "rmsnorm" if norm_sites else "layernorm"


def _build(arch: str | None, config: dict, path: Path) -> nn.Module:
    try:
        get_arch(arch or "")
        return create_model(arch, init_weights=False, **config)
    except DytDeployError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    state = model.upgrade_state_dict(state) if hasattr(model, "upgrade_state_dict") else state
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(path, getattr(model, "arch", "?"), missing, unexpected, wrong_shape))
    model.load_state_dict(state)


def _mismatch_message(path: Path, arch: str, missing: list, unexpected: list, wrong_shape: list) -> str:
    def show(items: list) -> str:
        return ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")

    parts = [f"{path}: the state_dict does not fit architecture {arch!r}:"]
    if missing:
        parts.append(f"  missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"  unexpected keys: {show(unexpected)}")
    if wrong_shape:
        parts.append(f"  wrong shapes: {show(wrong_shape)}")
    parts.append("  check --arch, --norm and the architecture config the checkpoint was trained with")
    return "\n".join(parts)
