"""model.pt: write dyt-deploy checkpoints, read every supported checkpoint format safely.

Formats read by :func:`load_checkpoint`:

- dyt-deploy's own (``save_checkpoint``): a dict with a format tag, the architecture, its
  config, the norm kind and the state_dict; readable with ``torch.load(weights_only=True)``.
- A training checkpoint of the DyT paper's official code (timm models):
  ``{"model", "model_ema", "optimizer", "scaler", "epoch", "args"}``. The architecture comes from
  ``args.model`` (a timm name such as ``vit_base_patch16_224``), the class count from the head's
  shape, the pooling from the keys (``fc_norm`` means average pooling); timm's own train.py
  checkpoints (``arch``, ``state_dict``, ``state_dict_ema``) load the same way. Only weights are
  unpickled: the optimizer and scaler entries are plain tensors and numbers.
- A bare state_dict, or another training checkpoint ``{"model": state_dict, ...}`` (``"state_dict"``,
  ``"model_state_dict"`` and ``"module"`` keys too), given the architecture (``arch=``).
- A safetensors state dict (``.safetensors``): the architecture from ``arch=``, from the file's
  metadata (``arch``, ``architecture`` or ``model``: a zoo or timm name) or from a timm
  ``config.json`` beside it (its ``architecture``).
- A ``torch.export`` program (``.pt2``). Its archive is inspected before torch opens it: entries
  torch would unpickle beyond plain tensors are refused unless ``trust_pickle=True``
  (:mod:`dyt_deploy.pt2_safety`).
- A whole pickled ``nn.Module``, only with ``trust_pickle=True``: unpickling runs code.

Anything else (text, JSON, an ONNX model, an empty or damaged file) raises a one-line
:class:`CheckpointError` that says what the file is (:func:`sniff_file`) and what was expected.
"""

from __future__ import annotations

import argparse
import codecs
import inspect
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, DytDeployError, OptionError, choice_problem, first_line
from .loaded import LoadedModel
from .models import create_model, get_arch
from .pt2_safety import refuse_pickled_entries
from .repository import atomic_write

FORMAT_TAG = "dyt-deploy/model"
FORMAT_VERSION = 1
WEIGHTS = ("model", "ema")  # the choices of load_checkpoint(weights=...) and --weights
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module")
_EMA_KEYS = ("model_ema", "state_dict_ema")  # the DyT/ConvNeXt training code, timm's train.py
_HEAD_KEYS = ("head.weight", "head.fc.weight")  # the classifier of timm's ViT, timm's ConvNeXt
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
# Classes a weights-only load may rebuild: training scripts save their args in an argparse.Namespace
# (plain attributes); optimizer and GradScaler states are dicts of tensors and numbers already.
_SAFE_GLOBALS = [argparse.Namespace]
_EXPECTED = "expected a PyTorch checkpoint (.pt, .pth), a .safetensors state dict or a torch.export program (.pt2)"


@dataclass(frozen=True)
class _Ask:
    """What the caller of :func:`load_checkpoint` asked for besides the file's format."""

    path: Path
    arch: str | None
    norm: str | None
    weights: str | None
    config: dict[str, Any]


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


_SOURCE_KINDS = {".pt2": "torch.export program", ".safetensors": "safetensors state dict"}


def source_label(path: str | os.PathLike) -> str:
    """What a model path is, for a progress line: ``Hugging Face folder NAME``, ``torch.export
    program NAME.pt2``, ``safetensors state dict NAME``, else ``checkpoint NAME``."""
    path = Path(path)
    if path.is_dir():
        return f"Hugging Face folder {path.name}"
    return f"{_SOURCE_KINDS.get(path.suffix, 'checkpoint')} {path.name}"


def load_model(path: str | os.PathLike, arch: str | None = None, **kwargs: Any) -> nn.Module:
    """The model of :func:`load_checkpoint`, in eval mode."""
    return load_checkpoint(path, arch=arch, **kwargs).model


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | None = None,
    norm: str | None = None,
    trust_pickle: bool = False,
    weights: str | None = None,
    **config: Any,
) -> LoadedModel:
    """Read ``path`` in any supported format (see the module docstring).

    Args:
        arch: zoo architecture for checkpoints that do not record one (bare state_dicts,
            training checkpoints); it overrides a recorded timm name (``args.model``), and a
            dyt-deploy model.pt only if they agree.
        norm: norm kind of such checkpoints; default: inferred from the parameter names
            (``alpha`` + ``shift`` -> derf, ``alpha`` -> dyt, norm biases -> layernorm, else rmsnorm).
        trust_pickle: allow unpickling arbitrary objects (a whole pickled ``nn.Module``, the pickled
            entries of a ``.pt2`` archive).
            Unpickling runs code from the file: only for files you made or trust.
        weights: which weights of a training checkpoint: "model" or "ema" (``model_ema``);
            default None: the EMA weights when the checkpoint has them, else the model's.
        config: architecture config overrides for checkpoints without a recorded config. Not
            given, ``num_classes`` follows the head's shape and a ViT's ``global_pool`` its keys.
    """
    path = Path(path)
    if path.is_dir():  # a Hugging Face folder (save_pretrained); transformers is imported there, lazily
        from .hf import load_folder

        return load_folder(path, arch=arch)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; pass the path of a model.pt (or .pt2)")
    if weights not in (None, *WEIGHTS):
        raise OptionError(choice_problem("weights", weights, WEIGHTS))
    if path.suffix == ".pt2":
        return LoadedModel(_load_exported(path, trust_pickle), "torch.export", path=path)
    ask = _Ask(path, arch, norm, weights, config)
    kind = sniff_file(path)
    if kind.name == "safetensors" or (path.suffix == ".safetensors" and not kind.torch_loadable):
        loaded = _from_safetensors(ask, kind)
    else:
        loaded = _from_torch_file(ask, kind, trust_pickle)
    loaded.model.eval()
    return loaded


def _from_torch_file(ask: _Ask, kind: FileKind, trust_pickle: bool) -> LoadedModel:
    if not kind.torch_loadable:
        raise CheckpointError(_not_a_checkpoint(ask.path, kind))
    if ask.path.suffix == ".safetensors":  # torch.load would read it as safetensors, by its name
        raise CheckpointError(f"{ask.path}: it is {kind.description}, not a safetensors file; name it .pt")
    obj = _torch_load(ask.path, trust_pickle, kind)
    if isinstance(obj, nn.Module):
        _refuse_ema(ask, "a whole pickled module")
        config_attr = getattr(obj, "config", None)
        # Zoo models record a dict; other libraries' config objects (transformers' PretrainedConfig) are not ours.
        recorded = dict(config_attr) if isinstance(config_attr, dict) else {}
        return LoadedModel(obj, "pickled-module", getattr(obj, "arch", None) or None, recorded,
                           recorded.get("norm"), path=ask.path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT_TAG:
        _refuse_ema(ask, "a dyt-deploy model.pt")
        return _from_own_format(obj, ask.arch, ask.path)
    if isinstance(obj, dict):
        return _from_training_dict(obj, ask)
    raise CheckpointError(f"{ask.path}: holds a {type(obj).__name__}, not a model, state_dict or checkpoint dict")


def _torch_load(path: Path, trust_pickle: bool, kind: FileKind) -> Any:
    """``torch.load``, weights-only unless trusted; a zip archive is memory-mapped, so the tensors
    nobody uses (a training checkpoint's optimizer moments) are never read from disk."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle,
                              mmap=kind.name == "torch-archive")
    except Exception as err:  # the load boundary: on a damaged file torch raises nearly any type
        if not trust_pickle and _is_refused_global(err):
            raise CheckpointError(
                f"{path}: holds pickled Python objects beyond tensors (e.g. a whole nn.Module). Loading it "
                "would run code from the file, so it is refused. If you made or trust this file, allow it "
                "with --trust-pickle (Python: trust_pickle=True); better, re-save the model's state_dict."
            ) from None
        raise CheckpointError(f"{path}: not a loadable checkpoint: it is {kind.description}, and torch.load "
                              f"failed on it ({_error_detail(err)}); re-save or re-download it") from None


def _is_refused_global(err: BaseException) -> bool:
    """A weights-only load met a valid file that names Python classes to rebuild ("Unsupported global")."""
    return isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower()


def _error_detail(err: BaseException) -> str:
    """The informative line of a loading error, at most 200 characters (torch puts advice before
    the cause of an unpickling error; other errors keep their first line and type)."""
    if not isinstance(err, pickle.UnpicklingError):
        return f"{type(err).__name__}: {first_line(err)}"[:200]
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if "error" in line.lower() or "unsupported" in line.lower()]
    return (detail or lines or [type(err).__name__])[-1][:200]


def _load_exported(path: Path, trust_pickle: bool) -> nn.Module:
    """A ``torch.export`` program's module; the archive is inspected first (:mod:`.pt2_safety`), so
    pickled entries are refused before torch could unpickle them, unless ``trust_pickle``."""
    kind = sniff_file(path)
    if kind.name not in ("torch-archive", "zip"):  # not opened at all: only an inspected archive reaches torch
        raise CheckpointError(f"{path}: not a readable torch.export program (a .pt2 is a zip archive); it is "
                              f"{kind.description}")
    refuse_pickled_entries(path, trust_pickle)
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


# -- training checkpoints and state dicts ----------------------------------------------------------

def _from_training_dict(obj: dict, ask: _Ask) -> LoadedModel:
    """A bare state dict, or a training checkpoint holding one (or two, with EMA weights)."""
    state, used = _pick_weights(obj, ask)
    name = _timm_name(obj)
    arch, overrides = _arch_and_overrides(ask, name)
    overrides.update(_recorded_config(obj, arch, name))
    nb_classes = _arg(obj.get("args"), "nb_classes")
    source = "training-checkpoint" if name else "state_dict"
    return _from_state_dict(state, arch, overrides, ask, source, used, nb_classes)


def _pick_weights(obj: dict, ask: _Ask) -> tuple[dict, str | None]:
    """The state dict ``ask.weights`` chooses and the key it is under (None: ``obj`` is one)."""
    ema_key = next((key for key in _EMA_KEYS if _is_state_dict(obj.get(key))), None)
    if ask.weights == "ema" and ema_key is None:
        raise CheckpointError(f"{ask.path}: --weights ema, but the checkpoint holds no EMA weights (no "
                              f"{' or '.join(_EMA_KEYS)}); pass --weights model")
    if ema_key is not None and ask.weights != "model":
        return obj[ema_key], ema_key
    for key in _STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key], key
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise CheckpointError(
        f"{ask.path}: a dict with keys {sorted(map(str, obj))[:8]} holds no state_dict "
        f"(looked for a bare one and for keys {', '.join(_STATE_DICT_KEYS)})"
    )


def _recorded_config(obj: dict, arch: str | None, name: str | None) -> dict[str, Any]:
    """``args.model_config`` of a training checkpoint whose ``args.model`` is the zoo architecture
    built (dyt-deploy's reference twins record their size there); {} otherwise."""
    recorded = _arg(obj.get("args"), "model_config")
    return dict(recorded) if isinstance(recorded, dict) and arch is not None and arch == name else {}


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _refuse_ema(ask: _Ask, what: str) -> None:
    if ask.weights == "ema":
        raise CheckpointError(f"{ask.path}: --weights ema, but {what} holds one set of weights; drop --weights")


def _timm_name(obj: dict) -> str | None:
    """The timm model name a training checkpoint records: ``args.model`` (the DyT and ConvNeXt
    training code) or ``arch`` (timm's train.py); None when it records none."""
    name = _arg(obj.get("args"), "model")
    if not isinstance(name, str) and isinstance(obj.get("arch"), str):
        name = obj["arch"]
    return name if isinstance(name, str) and name else None


def _arg(args: object, name: str) -> Any:
    """Entry ``name`` of saved training args (an ``argparse.Namespace`` or a dict); None if absent."""
    return args.get(name) if isinstance(args, dict) else getattr(args, name, None)


def _arch_and_overrides(ask: _Ask, name: str | None) -> tuple[str | None, dict[str, Any]]:
    """The zoo architecture to build: ``arch=`` if given, else the one the recorded ``name`` maps to
    (with that name's config overrides, also when ``arch=`` names the same architecture)."""
    found = _zoo_arch_for(name) if name is not None else None
    if ask.arch is not None or name is None:
        return ask.arch, found[1] if found is not None and found[0] == ask.arch else {}
    if found is None:
        from .models.registry import timm_names

        raise CheckpointError(f"{ask.path}: the checkpoint's model {name!r} is not one dyt-deploy builds; "
                              f"supported: {', '.join(timm_names())}; for a zoo architecture of the same "
                              "layout pass --arch NAME")
    return found


def _zoo_arch_for(name: str) -> tuple[str, dict[str, Any]] | None:
    """The zoo architecture and config overrides for a recorded model name: a zoo name as it is,
    a timm name through the registry's map; None for names the zoo cannot build."""
    from .models import list_models
    from .models.registry import arch_for_timm_name

    return (name, {}) if name in list_models() else arch_for_timm_name(name)


def _from_state_dict(state: dict, arch: str | None, overrides: dict[str, Any], ask: _Ask, source: str,
                     used: str | None, nb_classes: object = None) -> LoadedModel:
    """Build ``arch`` and load ``state`` into it. The config: the name's ``overrides``, then what the
    keys tell (:func:`_config_from_keys`), then the caller's; ``used`` is recorded as ``weights``."""
    if arch is None:
        from .models import list_models

        raise CheckpointError(
            f"{ask.path}: a bare state_dict does not say its architecture; pass --arch NAME "
            f"(Python: arch=...). Known: {', '.join(list_models())}"
        )
    state = _strip_wrapper_prefixes(state)
    inferred = _config_from_keys(arch, state, nb_classes, ask.path)
    config = {**overrides, **inferred, **ask.config, "norm": ask.norm or infer_norm(state)}
    model = _build(arch, config, ask.path)
    _load_state(model, state, ask.path)
    return LoadedModel(model, source, arch, dict(model.config), config["norm"], ask.path, used)


def _config_from_keys(arch: str, state: dict, nb_classes: object, path: Path) -> dict[str, Any]:
    """What the weights tell of the config: ``num_classes`` (the head's rows, checked against the
    recorded ``nb_classes``) and ``global_pool`` ("avg" with ``fc_norm`` keys, else "token"), for
    architectures that take them."""
    accepted = _config_params(arch, path)
    found: dict[str, Any] = {}
    head = next((state[k] for k in _HEAD_KEYS if isinstance(state.get(k), torch.Tensor) and state[k].dim() == 2), None)
    if head is not None and "num_classes" in accepted:
        found["num_classes"] = int(head.shape[0])
        if isinstance(nb_classes, int) and nb_classes != head.shape[0]:
            raise CheckpointError(f"{path}: the head has {head.shape[0]} classes, but the training args say "
                                  f"nb_classes={nb_classes}; the checkpoint is inconsistent, re-save it")
    if "global_pool" in accepted:
        found["global_pool"] = "avg" if any(k.startswith("fc_norm.") for k in state) else "token"
    return found


def _config_params(arch: str, path: Path) -> set[str]:
    try:
        return set(inspect.signature(get_arch(arch).cls).parameters)
    except DytDeployError as err:
        raise CheckpointError(f"{path}: {err}") from None


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


# -- safetensors -----------------------------------------------------------------------------------

def _from_safetensors(ask: _Ask, kind: FileKind) -> LoadedModel:
    _refuse_ema(ask, "a safetensors file")
    state, metadata = _read_safetensors(ask.path, kind)
    name = None if ask.arch else _recorded_name(ask.path, metadata)
    arch, overrides = _arch_and_overrides(ask, name)
    return _from_state_dict(state, arch, overrides, ask, "safetensors", None)


def _read_safetensors(path: Path, kind: FileKind) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(path, device="cpu"), metadata
    except Exception as err:  # safetensors raises its own error, OSError, ValueError... for a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file: it is {kind.description} "
                              f"({_error_detail(err)}); re-save or re-download it") from None


def _recorded_name(path: Path, metadata: dict[str, str]) -> str | None:
    """The model name a safetensors file records: in its metadata, else in a timm ``config.json`` beside it."""
    for key in ("arch", "architecture", "model"):
        if metadata.get(key):
            return metadata[key]
    config = path.parent / "config.json"
    try:
        name = json.loads(config.read_text()).get("architecture") if config.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):  # not JSON, or not an object
        return None
    return name if isinstance(name, str) and name else None


# -- what a file is --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileKind:
    """What a file's content says it is: ``name`` for choosing a reader, ``description`` for messages."""

    name: str
    description: str

    @property
    def torch_loadable(self) -> bool:
        """Worth handing to ``torch.load``: a zip archive (damaged ones too), a pickle, a tar archive."""
        return self.name in ("torch-archive", "damaged-zip", "pickle", "tar")


_SNIFF_BYTES = 4096
_JSON_LIMIT = 16 << 20  # larger text that looks like JSON is not parsed, only called text
_ONNX_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields 2-8, which follow ir_version


def sniff_file(path: str | os.PathLike) -> FileKind:
    """What ``path`` holds, from its content: a PyTorch archive, a pickle, a safetensors file, an
    ONNX model, JSON, text, ... (for choosing a reader, and for saying what a bad file is)."""
    path = Path(path)
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    if not head:
        return FileKind("empty", "an empty file (0 bytes)")
    for sniff in (_sniff_zip, _sniff_pickle, _sniff_tar, _sniff_safetensors, _sniff_onnx, _sniff_text):
        kind = sniff(path, head)
        if kind is not None:
            return kind
    return FileKind("binary", f"binary data of no known format (starts {head[:8].hex(' ')})")


def _sniff_zip(path: Path, head: bytes) -> FileKind | None:
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # a first entry; the end record of an empty archive
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # zipfile raises BadZipFile, OSError, ValueError, ... on a damaged archive
        return FileKind("damaged-zip", "a truncated or damaged zip archive (PyTorch checkpoints are zip archives)")
    if any(name.rpartition("/")[2] == "data.pkl" for name in names):
        return FileKind("torch-archive", "a PyTorch checkpoint archive")
    if any(name.rpartition("/")[2] == "archive_format" for name in names):
        return FileKind("zip", "a torch.export program archive (it loads when named .pt2)")
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") or "nothing"
    return FileKind("zip", f"a zip archive that is not a PyTorch checkpoint (no data.pkl; it holds {shown})")


def _sniff_pickle(path: Path, head: bytes) -> FileKind | None:
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return None
    return FileKind("pickle", f"a pickle (protocol {head[1]}: PyTorch's legacy format, or a plain pickle)")


def _sniff_tar(path: Path, head: bytes) -> FileKind | None:
    return FileKind("tar", "a tar archive (PyTorch's oldest format)") if head[257:262] == b"ustar" else None


def _sniff_safetensors(path: Path, head: bytes) -> FileKind | None:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with ``{``."""
    header_len = int.from_bytes(head[:8], "little")
    if len(head) < 10 or head[8:9] != b"{" or not 2 <= header_len <= path.stat().st_size - 8:
        return None
    return FileKind("safetensors", f"a safetensors file ({header_len}-byte header)")


def _sniff_onnx(path: Path, head: bytes) -> FileKind | None:
    """An ONNX ModelProto: field 1 (ir_version, a small varint) first, then one of fields 2-8."""
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 15 or head[2] not in _ONNX_FIELDS:
        return None
    producer = ""
    if head[2] == 0x12 and len(head) > 4 + head[3]:  # producer_name: a length, then the name
        producer = head[4:4 + head[3]].decode("utf-8", "replace")
    return FileKind("onnx", f"an ONNX model (IR version {head[1]}{', from ' + producer if producer else ''})")


def _sniff_text(path: Path, head: bytes) -> FileKind | None:
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False).lstrip("\ufeff")
    if "\ufffd" in text or not all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        return None
    if text.lstrip()[:1] in ("{", "[") and path.stat().st_size <= _JSON_LIMIT:
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except ValueError:
            document = None
        if isinstance(document, dict | list):
            return FileKind("json", f"a JSON {'object' if isinstance(document, dict) else 'array'}")
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return FileKind("text", f"a text file (starts {first!r})" if first else "a text file of blank lines")


def _not_a_checkpoint(path: Path, kind: FileKind) -> str:
    """The one-line message for a file that is no checkpoint: what it is, what was expected, what to do."""
    hints = {
        "onnx": "; dyt-export and dyt-check take the PyTorch model an ONNX file was exported from "
                "(dyt-check also takes the model folder dyt-export wrote)",
        "empty": "; re-save or re-download it",
        "damaged-zip": "; re-save or re-download it",
    }
    return f"{path}: not a loadable checkpoint: it is {kind.description}; {_EXPECTED}{hints.get(kind.name, '')}"


# -- building the model ----------------------------------------------------------------------------

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
