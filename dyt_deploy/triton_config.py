"""config.pbtxt as Triton Inference Server's own ``ModelConfig`` protobuf.

Written and read with ``google.protobuf.text_format`` against the schema tritonclient ships
(``model_config_pb2``), so every field and nested block (``dynamic_batching { ... }``) reads back
exactly as Triton reads it, and a file Triton would reject is rejected here too.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from .dtypes import triton_type
from .errors import DytDeployError

CONFIG_NAME = "config.pbtxt"
DEFAULT_MAX_BATCH_SIZE = 32
BATCH_DIM = "batch"


@functools.lru_cache(maxsize=1)
def model_config_pb2() -> ModuleType:
    """Triton's ``model_config_pb2`` module from tritonclient.

    It lives in ``tritonclient/grpc/``, whose package import needs grpcio; the module itself needs
    only protobuf, so it is loaded from its file when grpcio is not installed.
    """
    try:
        from tritonclient.grpc import model_config_pb2 as module

        return module
    except ImportError:
        pass
    except RuntimeError:  # tritonclient without its grpc extra says so with a RuntimeError
        pass
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or spec.origin is None:
        raise DytDeployError("tritonclient is not installed: pip install tritonclient") from None
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("dyt_deploy._triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def is_batched(inputs: Sequence[dict], outputs: Sequence[dict]) -> bool:
    """Triton batches a model when every tensor's first dim is the batch dim."""
    return all(t["shape"] and t["shape"][0] == BATCH_DIM for t in (*inputs, *outputs))


def build_config(name: str, inputs: Sequence[dict], outputs: Sequence[dict], *,
                 platform: str | None = "onnxruntime_onnx", backend: str | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_queue_delay_us: int | None = None, instance_kind: str | None = None) -> Any:
    """A ``ModelConfig`` for a model with the given IO signature.

    ``inputs``/``outputs`` are ``{"name", "dtype", "shape"}`` dicts (dyt.json's), shapes holding
    ints and dim names. A batched model (see :func:`is_batched`) gets ``max_batch_size`` and dims
    without the batch dim; otherwise max_batch_size 0. Other named dims become -1.
    ``max_queue_delay_us`` turns on dynamic batching; ``instance_kind`` ("KIND_CPU", "KIND_GPU")
    adds one instance group.
    """
    pb2 = model_config_pb2()
    batched = is_batched(inputs, outputs)
    config = pb2.ModelConfig(name=name, max_batch_size=max_batch_size if batched else 0)
    if platform:
        config.platform = platform
    if backend:
        config.backend = backend
    for tensors, field in ((inputs, config.input), (outputs, config.output)):
        for tensor in tensors:
            shape = tensor["shape"][1:] if batched else tensor["shape"]
            field.add(name=tensor["name"], data_type=_data_type(pb2, tensor),
                      dims=[d if isinstance(d, int) else -1 for d in shape])
    if max_queue_delay_us is not None and batched:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if instance_kind:
        config.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value(instance_kind))
    return config


def _data_type(pb2: ModuleType, tensor: dict) -> int:
    try:
        return pb2.DataType.Value(triton_type(tensor["dtype"]))
    except (DytDeployError, ValueError):
        raise DytDeployError(f"tensor {tensor['name']!r}: dtype {tensor['dtype']} has no Triton type") from None


def config_text(config: Any) -> str:
    """The config.pbtxt text of a ``ModelConfig``."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str, source: str = CONFIG_NAME) -> Any:
    """A ``ModelConfig`` from config.pbtxt text; a malformed file is a DytDeployError naming where."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as err:
        raise DytDeployError(f"{source}: not a valid Triton model config ({err})") from None


def write_config(folder: Path, config: Any) -> Path:
    """Write ``folder/config.pbtxt`` (the caller stages the folder)."""
    path = Path(folder) / CONFIG_NAME
    path.write_text(config_text(config))
    return path


def read_config(folder: Path) -> Any | None:
    """The ``ModelConfig`` of ``folder/config.pbtxt``, or None when the folder has none."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    return parse_config(path.read_text(), str(path))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as JSON, in the shape Triton's ``GET /v2/models/{m}/config`` returns it (field
    names as in the .proto, enums by name, 64-bit integers as numbers as Triton prints them, not
    the strings of protobuf's JSON mapping)."""
    from google.protobuf import json_format

    return _int64_as_numbers(config, json_format.MessageToDict(config, preserving_proto_field_name=True))


def _int64_as_numbers(message: Any, as_dict: dict[str, Any]) -> dict[str, Any]:
    """``as_dict`` (``message`` in JSON form) with its int64/uint64 fields as ints, in nested messages too."""
    from google.protobuf.descriptor import FieldDescriptor

    wide = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
    for field in message.DESCRIPTOR.fields:
        if field.name not in as_dict:
            continue
        value, entry = getattr(message, field.name), field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if entry.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    _int64_as_numbers(item, as_dict[field.name][str(key)])
        elif entry is not None:
            items = zip(value, as_dict[field.name], strict=True) if _repeated(field) else [(value, as_dict[field.name])]
            for item, item_dict in items:
                _int64_as_numbers(item, item_dict)
        elif field.cpp_type in wide:
            as_dict[field.name] = [int(v) for v in value] if _repeated(field) else int(value)
    return as_dict


def _repeated(field: Any) -> bool:
    """Whether a field is repeated (``is_repeated`` in protobuf 5.29+, ``label`` before)."""
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
