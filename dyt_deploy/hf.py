"""Hugging Face model folders (written by ``save_pretrained``): build, convert to DyT where the weights say so, load.

A folder holds ``config.json`` and its weights: ``model.safetensors`` or ``pytorch_model.bin``,
either of them sharded (``*.index.json`` naming the shards). :func:`load_folder` builds the model
from its config with ``transformers`` (an optional dependency, imported here only), replaces by
DyT exactly the norm layers whose weights hold ``<site>.alpha`` (Derf where they also hold
``<site>.shift``; without ``bias`` where the weights have none), then loads the weights strictly.
Weights are read without unpickling code: safetensors, or ``torch.load(weights_only=True)``.

The model comes wrapped in :class:`HFModel`, which gives it the zoo's interface: positional
inputs with the model's own names (``input_ids``, ``attention_mask``, ``token_type_ids`` for text,
``pixel_values`` for vision), outputs named after what it returns (``logits``,
``last_hidden_state``, ...), no key/value cache.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import LoadedModel
from .errors import CheckpointError, MissingBackendError, first_line
from .models.base import ZooModel
from .nn import create_norm
from .nn.convert import norm_kind_of
from .specs import TensorSpec

SOURCE_FORMAT = "hf-folder"
CONFIG_NAME = "config.json"
# In the order they are looked for: safetensors first, then the pickle-based .bin (read weights-only).
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
TEXT_INPUT, VISION_INPUT = "input_ids", "pixel_values"
_INSTALL = "pip install transformers"


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a ``config.json`` (what ``save_pretrained`` writes first)."""
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def load_folder(path: str | Path, arch: str | None = None) -> LoadedModel:
    """The model of Hugging Face folder ``path``, in eval mode (see the module docstring).

    Args:
        arch: the architecture the caller expects (``hf-<model_type>``, as the result records it);
            None: whatever the folder holds. Another name is an error.
    """
    path = Path(path)
    config_dict = _read_config(path)
    weight_files = find_weight_files(path)
    transformers = _import_transformers(path)
    recorded = f"hf-{config_dict['model_type']}"
    if arch is not None and arch != recorded:
        raise CheckpointError(f"{path}: holds a Hugging Face {recorded!r} model, but {arch!r} was asked for; "
                              "drop --arch for Hugging Face folders")
    model = _build(transformers, path)
    state = read_weights(weight_files, path)
    convert_sites(model, state, path)
    load_weights(model, state, path)
    wrapped = HFModel(model, recorded, _json_safe(config_dict)).eval()
    return LoadedModel(wrapped, SOURCE_FORMAT, recorded, wrapped.config, _norm_of(model), path)


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise CheckpointError(f"{path}: a folder without {CONFIG_NAME} (it holds {found}); pass a Hugging Face "
                              "folder written by save_pretrained, a model.pt file, or for dyt-check a REPO/NAME folder")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{config_path}: not readable JSON ({first_line(err)}); re-save the model") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{config_path}: has no \"model_type\"; it is not a transformers config.json")
    return config


def find_weight_files(path: Path) -> list[Path]:
    """The weight files of folder ``path``: one file, or the shards its ``*.index.json`` names."""
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return _shards(path / name) if name.endswith(".index.json") else [path / name]
    raise CheckpointError(f"{path}: has {CONFIG_NAME} but no weights (looked for {', '.join(WEIGHT_NAMES)}); "
                          "re-save the model with save_pretrained")


def _shards(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index_path}: not a shard index with a \"weight_map\" ({first_line(err)})") from None
    missing = [name for name in names if not (index_path.parent / name).is_file()]
    if missing or not names:
        raise CheckpointError(f"{index_path}: shards missing: {', '.join(missing) or 'it names none'}; "
                              "copy every file save_pretrained wrote")
    return [index_path.parent / name for name in names]


def read_weights(files: list[Path], folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` in one dict (safetensors, or ``.bin`` read with ``weights_only``)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        part = _read_safetensors(file) if file.suffix == ".safetensors" else _read_bin(file)
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise CheckpointError(f"{file}: holds a {type(part).__name__}, not a dict of tensors")
        state.update(part)
    if not state:
        raise CheckpointError(f"{folder}: its weight files hold no tensors; re-save the model")
    return state


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(file, device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({first_line(err)})") from None


def _read_bin(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors all mean "not a tensors-only file"
        raise CheckpointError(f"{file}: not a tensors-only PyTorch file ({first_line(err)}); it is read with "
                              "weights_only=True and never unpickled beyond tensors") from None


def _import_transformers(path: Path) -> Any:
    try:
        import transformers
    except ImportError:
        raise MissingBackendError(f"{path}: Hugging Face model folders need transformers: {_INSTALL}") from None
    return transformers


def _build(transformers: Any, path: Path) -> nn.Module:
    """The model class ``config.json`` names (``architectures[0]``; else the base model), randomly initialised."""
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:  # unknown model_type, remote code, a bad field: all "cannot build this config"
        raise CheckpointError(f"{path}: transformers cannot read its {CONFIG_NAME} ({first_line(err)}); "
                              "a newer transformers may know this model") from None
    config.use_cache = False  # incremental decoding (past key values) is not exported
    class_name = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, class_name, None) if class_name else transformers.AutoModel
    if cls is None:
        raise CheckpointError(f"{path}: transformers {transformers.__version__} has no class {class_name!r} "
                              f"({CONFIG_NAME} \"architectures\"); upgrade transformers")
    try:
        return cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    except Exception as err:  # the class refuses this config
        raise CheckpointError(f"{path}: transformers could not build {class_name or 'the model'} "
                              f"({first_line(err)})") from None


def convert_sites(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> list[str]:
    """Replace by DyT (Derf with ``<site>.shift``) each norm layer whose weights hold ``<site>.alpha``.

    The new layer has a ``bias`` only where the weights hold ``<site>.bias``. Returns the sites.
    """
    sites = sorted(key.removesuffix(".alpha") for key in state if key.endswith(".alpha"))
    problems = [problem for site in sites if (problem := _convert_site(model, site, state))]
    if problems:
        raise CheckpointError(f"{path}: the weights hold alpha for layers that are not norms: {', '.join(problems)}")
    return sites


def _convert_site(model: nn.Module, site: str, state: dict[str, torch.Tensor]) -> str | None:
    """Convert one site; a description of the problem if it cannot be converted, else None."""
    try:
        old = model.get_submodule(site)
    except AttributeError:
        return f"{site} (no such module)"
    kind = norm_kind_of(old)
    if kind is None:
        return f"{site} ({type(old).__name__})"
    to = "derf" if f"{site}.shift" in state else "dyt"
    if kind != to:
        alpha = float(state[f"{site}.alpha"].flatten()[0])
        new = create_norm(to, _width(old), bias=f"{site}.bias" in state, alpha_init=alpha)
        parent_name, _, child = site.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return None


def _width(norm: nn.Module) -> int:
    weight = getattr(norm, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else int(tuple(norm.normalized_shape)[-1])


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or misshapen key is an error listing them all.

    Tied parameters (an LM head sharing the embedding) may be saved once; buffers the model
    recomputes itself (not in its state_dict, e.g. rotary frequencies) are ignored.
    """
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state) if not _saved_as_tied(model, k, state))
    own_buffers = {name for name, _ in model.named_buffers()}
    unexpected = sorted(set(state) - set(expected) - own_buffers)
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                         for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch(path, missing, unexpected, wrong_shape))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _saved_as_tied(model: nn.Module, key: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``key`` shares its tensor with another parameter that ``state`` holds."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    return target is not None and any(p is target and name in state for name, p in params.items() if name != key)


def _mismatch(path: Path, missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> str:
    def show(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")

    parts = [f"{path}: the weights do not fit the model its {CONFIG_NAME} describes:"]
    parts += [f"  {label}: {show(items)}" for label, items in
              (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)) if items]
    parts.append("  re-save the folder with save_pretrained from the model that wrote these weights")
    return "\n".join(parts)


def _norm_of(model: nn.Module) -> str | None:
    """The norm kind most layers of ``model`` have (None without norm layers)."""
    kinds = Counter(kind for module in model.modules() if (kind := norm_kind_of(module)) is not None)
    return kinds.most_common(1)[0][0] if kinds else None


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=str))


class HFModel(ZooModel):
    """A transformers model with the zoo's interface: positional inputs, a tuple of named outputs.

    ``input_specs`` follow the model: ``input_ids`` and ``attention_mask`` (int64, batch x seq;
    ``token_type_ids`` too where the config has several token types) for text models,
    ``pixel_values`` (float32, batch x channels x image_size x image_size) for vision models.
    ``output_specs`` name what the model returns (found by running it once on a tiny input).
    """

    family = "hf"
    default_sizes = {"batch": 2, "seq": 16}

    def __init__(self, model: nn.Module, arch: str, config: dict[str, Any]) -> None:
        super().__init__(**config)
        self.arch = arch
        self.model = model
        self.input_names = [spec.name for spec in _input_specs(model)]
        self._output_specs: list[TensorSpec] | None = None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.run(*inputs).values())

    def run(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's named outputs (tensors only) for ``inputs`` in ``input_names`` order."""
        outputs = self.model(**dict(zip(self.input_names, inputs, strict=True)), return_dict=True)
        return {name: value for name, value in outputs.items() if isinstance(value, torch.Tensor)}

    def input_specs(self) -> list[TensorSpec]:
        return _input_specs(self.model)

    def output_specs(self) -> list[TensorSpec]:
        if self._output_specs is None:
            with torch.no_grad():
                outputs = self.run(*self.example_inputs(batch=2, seq=3).values())
            text = self.input_names[0] == TEXT_INPUT
            self._output_specs = [TensorSpec(name, _named_dims(tuple(value.shape), text))
                                  for name, value in outputs.items()]
        return self._output_specs


def _named_dims(shape: tuple[int, ...], text: bool) -> tuple[int | str, ...]:
    """An output shape of the tiny probe (batch 2, seq 3) with batch (and seq for text) named."""
    named: list[int | str] = ["batch", *shape[1:]]
    if text and len(shape) >= 3:
        named[1] = "seq"
    return tuple(named)


def _input_specs(model: nn.Module) -> list[TensorSpec]:
    config, main = model.config, getattr(model, "main_input_name", TEXT_INPUT)
    if main == VISION_INPUT:
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return [TensorSpec(VISION_INPUT, ("batch", config.num_channels, height, width), "float32")]
    if main != TEXT_INPUT:
        raise CheckpointError(f"{type(model).__name__} takes {main!r}; Hugging Face folders of text models "
                              f"({TEXT_INPUT}) and vision models ({VISION_INPUT}) are supported")
    accepted = inspect.signature(model.forward).parameters
    specs = [TensorSpec(TEXT_INPUT, ("batch", "seq"), "int64", 0, config.vocab_size)]
    if "attention_mask" in accepted:
        specs.append(TensorSpec("attention_mask", ("batch", "seq"), "int64", 0, 2))
    type_count = getattr(config, "type_vocab_size", 0) or 0
    if "token_type_ids" in accepted and type_count > 1:
        specs.append(TensorSpec("token_type_ids", ("batch", "seq"), "int64", 0, type_count))
    return specs
