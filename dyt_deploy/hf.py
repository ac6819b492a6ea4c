"""Hugging Face model folders (written by ``save_pretrained``): build, convert to DyT where the weights say so, load.

A folder holds ``config.json`` and its weights: ``model.safetensors`` or ``pytorch_model.bin``,
either of them sharded (``*.index.json`` naming the shards). :func:`load_folder` builds the model
class ``config.json`` names with ``transformers`` (an optional dependency, imported here only),
with DyT in place of exactly the norm layers whose weights hold ``<site>.alpha`` (Derf where they
also hold ``<site>.shift``; without ``bias`` where the weights have none), and loads the weights
through transformers' own loader, strictly: a missing, unexpected or misshapen key is an error.
Weights are never unpickled beyond tensors (safetensors, or ``.bin`` read with ``weights_only``).

Checkpoint keys and module names can differ (transformers 5 renames some modules on load, e.g.
ViT's ``encoder.layer.N`` is ``layers.N``): sites are found by renaming each ``<site>.weight``
key the way transformers does, so DyT lands on the module the weights load into.

The model comes wrapped in :class:`HFModel`, which gives it the zoo's interface: positional
inputs with the model's own names (``input_ids``, ``attention_mask``, ``token_type_ids`` for text,
``pixel_values`` for vision), outputs named after what it returns (``logits``,
``last_hidden_state``, ...), no key/value cache.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, MissingBackendError, first_line
from .loaded import LoadedModel
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


@dataclass(frozen=True)
class Site:
    """A norm layer the weights make pointwise: ``kind`` "dyt" or "derf", with or without ``bias``."""

    kind: str
    bias: bool


def load_folder(path: str | Path, arch: str | None = None) -> LoadedModel:
    """The model of Hugging Face folder ``path``, in eval mode (see the module docstring).

    Args:
        arch: the architecture the caller expects (``hf-<model_type>``, as the result records it);
            None: whatever the folder holds. Another name is an error.
    """
    path = Path(path)
    config_dict = _read_config(path)
    keys = checkpoint_keys(find_weight_files(path))
    transformers = _import_transformers(path)
    recorded = f"hf-{config_dict['model_type']}"
    if arch is not None and arch != recorded:
        raise CheckpointError(f"{path}: holds a Hugging Face {recorded!r} model, but {arch!r} was asked for; "
                              "drop --arch for Hugging Face folders")
    with _quiet(transformers):
        config = _hf_config(transformers, path)
        skeleton = _skeleton(transformers, config, path)
        _check_modality(skeleton, path)
        sites = find_sites(skeleton, keys, path)
        model = _load(transformers, type(skeleton), sites, config, path)
    wrapped = wrap(model, recorded, _json_safe(config_dict)).eval()
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


def checkpoint_keys(files: list[Path]) -> set[str]:
    """The tensor names in ``files``; a file that is not safetensors or a tensors-only ``.bin`` is an error."""
    keys: set[str] = set()
    for file in files:
        keys |= _safetensors_keys(file) if file.suffix == ".safetensors" else _bin_keys(file)
    return keys


def _safetensors_keys(file: Path) -> set[str]:
    from safetensors import safe_open

    try:
        with safe_open(file, "pt") as tensors:
            return set(tensors.keys())
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError...
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({first_line(err)})") from None


def _bin_keys(file: Path) -> set[str]:
    try:
        state = torch.load(file, map_location="meta", weights_only=True)  # names and shapes, no data
    except Exception as err:  # pickle, zip and EOF errors all mean "not a tensors-only file"
        raise CheckpointError(f"{file}: not a tensors-only PyTorch file ({first_line(err)}); it is read with "
                              "weights_only=True and never unpickled beyond tensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a dict of tensors")
    return set(state)


def _import_transformers(path: Path) -> Any:
    try:
        import transformers
    except ImportError:
        raise MissingBackendError(f"{path}: Hugging Face model folders need transformers: {_INSTALL}") from None
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' warnings and progress bars off (its load report, "Loading weights"); errors still raise."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _hf_config(transformers: Any, path: Path) -> Any:
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:  # unknown model_type, remote code, a bad field: all "cannot build this config"
        raise CheckpointError(f"{path}: transformers cannot read its {CONFIG_NAME} ({first_line(err)}); "
                              "a newer transformers may know this model") from None
    config.use_cache = False  # incremental decoding (past key values) is not exported
    return config


def _skeleton(transformers: Any, config: Any, path: Path) -> nn.Module:
    """The model class ``config.json`` names (``architectures[0]``; else the base model), on the meta
    device: its module names and class, no memory for weights."""
    class_name = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, class_name, None) if class_name else transformers.AutoModel
    if cls is None:
        raise CheckpointError(f"{path}: transformers {transformers.__version__} has no class {class_name!r} "
                              f"({CONFIG_NAME} \"architectures\"); upgrade transformers")
    try:
        with torch.device("meta"):
            return transformers.AutoModel.from_config(config) if class_name is None else cls(config)
    except Exception as err:  # the class refuses this config
        raise CheckpointError(f"{path}: transformers could not build {class_name or 'the model'} "
                              f"({first_line(err)})") from None


def _check_modality(model: nn.Module, path: Path) -> None:
    """Refuse a model that takes neither text nor images, before its weights are read."""
    try:
        _input_specs(model)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def find_sites(model: nn.Module, keys: set[str], path: Path) -> dict[str, Site]:
    """The norm layers of ``model`` (by module name) that the checkpoint ``keys`` make DyT or Derf."""
    raw_sites = sorted(key.removesuffix(".alpha") for key in keys if key.endswith(".alpha"))
    names = module_keys(model, [f"{raw}.weight" for raw in raw_sites])
    sites, problems = {}, []
    for raw, name in zip(raw_sites, names, strict=True):
        site = name.removesuffix(".weight")
        module = _submodule(model, site)
        if module is None or norm_kind_of(module) is None:
            problems.append(f"{raw} ({type(module).__name__ if module is not None else 'no such module'})")
            continue
        sites[site] = Site("derf" if f"{raw}.shift" in keys else "dyt", f"{raw}.bias" in keys)
    if problems:
        raise CheckpointError(f"{path}: the weights hold alpha for layers that are not norms: {', '.join(problems)}")
    return sites


def module_keys(model: nn.Module, keys: list[str]) -> list[str]:
    """Checkpoint ``keys`` renamed to ``model``'s parameter names as transformers' loader renames them
    (its conversion mapping, then the base-model prefix added or dropped)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4: checkpoints use the module names, up to the base-model prefix
        return [_with_prefix(model, key) for key in keys]
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    state = model.state_dict()
    return [rename_source_key(key, renamings, converters, model.base_model_prefix, state)[0] for key in keys]


def _with_prefix(model: nn.Module, key: str) -> str:
    state, prefix = model.state_dict(), f"{model.base_model_prefix}."
    if key not in state and prefix + key in state:
        return prefix + key
    return key[len(prefix):] if key not in state and key.startswith(prefix) else key


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _load(transformers: Any, cls: type, sites: dict[str, Site], config: Any, path: Path) -> nn.Module:
    """``cls`` with DyT at ``sites``, its weights loaded by ``from_pretrained``; any key mismatch is an error."""

    def build_with_sites(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        convert_sites(self, sites)

    with_sites = type(cls.__name__, (cls,), {"__init__": build_with_sites, "__module__": cls.__module__})
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        # ignore_mismatched_sizes: report wrong shapes in ``info`` (listed below) instead of raising without them
        model, info = with_sites.from_pretrained(path, config=config, local_files_only=True, output_loading_info=True,
                                                 ignore_mismatched_sizes=True, **{dtype_key: torch.float32})
    except Exception as err:  # transformers raises many types for weights that do not fit
        raise CheckpointError(f"{path}: transformers could not load the weights ({first_line(err)})") from None
    mismatch = {"missing keys": sorted(info.get("missing_keys") or ()),
                "unexpected keys": sorted(info.get("unexpected_keys") or ()),
                "wrong shapes": sorted(map(_shape_mismatch, info.get("mismatched_keys") or ()))}
    if any(mismatch.values()):
        raise CheckpointError(_mismatch(path, mismatch))
    return model


def convert_sites(model: nn.Module, sites: dict[str, Site]) -> None:
    """Replace each norm layer named in ``sites`` by a DyT/Derf of the same width (alpha 0.5 until loaded)."""
    for name, site in sites.items():
        parent_name, _, child = name.rpartition(".")
        old = model.get_submodule(name)
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                create_norm(site.kind, _width(old), bias=site.bias))


def _width(norm: nn.Module) -> int:
    weight = getattr(norm, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) else int(tuple(norm.normalized_shape)[-1])


def _shape_mismatch(entry: Any) -> str:
    """``key (checkpoint shape) != (model shape)`` from transformers' ``(key, shape, shape)``."""
    if isinstance(entry, tuple | list) and len(entry) == 3:
        return f"{entry[0]} {tuple(entry[1])} != {tuple(entry[2])}"
    return str(entry)


def _mismatch(path: Path, mismatch: dict[str, list[str]]) -> str:
    def show(items: list[str]) -> str:
        return ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")

    parts = [f"{path}: the weights do not fit the model its {CONFIG_NAME} describes:"]
    parts += [f"  {label}: {show(items)}" for label, items in mismatch.items() if items]
    parts.append("  re-save the folder with save_pretrained from the model that wrote these weights")
    return "\n".join(parts)


def _norm_of(model: nn.Module) -> str | None:
    """The norm kind most layers of ``model`` have (None without norm layers)."""
    kinds = Counter(kind for module in model.modules() if (kind := norm_kind_of(module)) is not None)
    return kinds.most_common(1)[0][0] if kinds else None


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=str))


def wrap(model: nn.Module, arch: str, config: dict[str, Any]) -> HFModel:
    """``model`` in the wrapper for its kind of input (text or vision)."""
    specs = _input_specs(model)
    cls = HFVisionModel if specs[0].name == VISION_INPUT else HFTextModel
    return cls(model, arch, config, specs)


class HFModel(ZooModel):
    """A transformers model with the zoo's interface: positional inputs, a tuple of named outputs.

    ``input_specs`` follow the model: ``input_ids`` and ``attention_mask`` (int64, batch x seq;
    ``token_type_ids`` too where the config has several token types) for text models,
    ``pixel_values`` (float32, batch x channels x image_size x image_size) for vision models.
    ``output_specs`` name what the model returns (found by running it once on a tiny input).
    """

    family = "hf"
    default_sizes = {"batch": 2, "seq": 16}

    def __init__(self, model: nn.Module, arch: str, config: dict[str, Any], specs: list[TensorSpec]) -> None:
        super().__init__(**config)
        self.arch = arch
        self.model = model
        self._inputs = specs
        self._output_specs: list[TensorSpec] | None = None

    def run(self, **inputs: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The model's named outputs (tensors only; no key/value cache) for the inputs that are not None."""
        outputs = self.model(**{k: v for k, v in inputs.items() if v is not None}, return_dict=True)
        return {name: value for name, value in outputs.items() if isinstance(value, torch.Tensor)}

    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_specs(self) -> list[TensorSpec]:
        if self._output_specs is None:
            with torch.no_grad():
                outputs = self.run(**self.example_inputs(batch=2, seq=3))
            text = self._inputs[0].name == TEXT_INPUT
            self._output_specs = [TensorSpec(name, _named_dims(tuple(value.shape), text))
                                  for name, value in outputs.items()]
        return self._output_specs


class HFTextModel(HFModel):
    """A text model: ``input_ids`` (then ``attention_mask``, ``token_type_ids`` where it takes them)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        outputs = self.run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(outputs.values())


class HFVisionModel(HFModel):
    """A vision model: ``pixel_values``."""

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.run(pixel_values=pixel_values).values())


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
