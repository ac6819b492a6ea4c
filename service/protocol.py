"""Open Inference Protocol v2 (REST) codec: datatypes, request decoding, response encoding.

Pure functions over bytes and numpy arrays, so every rule can be unit-tested without a server.

* JSON tensors: ``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested, row-major.
* Triton's binary tensor data extension: the body is a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of every input
  whose ``parameters.binary_data_size`` is set, in the order the inputs appear in the JSON.
  Outputs are returned binary when the request asks (``outputs[].parameters.binary_data`` or the
  request-level ``parameters.binary_data_output``).

Every malformed request raises :class:`~service.errors.BadRequest` with a message that names the
tensor and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadRequest

try:  # tritonclient pulls ml_dtypes in; BF16 is served only when it is there
    from ml_dtypes import bfloat16 as _BFLOAT16
except ImportError:  # pragma: no cover - depends on the environment
    _BFLOAT16 = None

# OIP datatype -> numpy dtype (little-endian). BYTES is variable-length and handled apart.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
if _BFLOAT16 is not None:
    DATATYPES["BF16"] = np.dtype(_BFLOAT16)
BYTES = "BYTES"
KNOWN_DATATYPES = (*DATATYPES, BYTES)
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
INT_DATATYPES = frozenset(name for name in DATATYPES if name.startswith(("INT", "UINT")))

# manifest dtype strings (numpy names) -> OIP datatype
_MANIFEST_DTYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "bfloat16": "BF16", "bool": "BOOL",
                    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
                    "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "string": BYTES, "bytes": BYTES}
HEADER_LENGTH = "inference-header-content-length"


def datatype_from_manifest(dtype: str) -> str:
    """The OIP datatype of a dyt.json dtype string ("float32" -> "FP32")."""
    try:
        return _MANIFEST_DTYPES[dtype]
    except KeyError:
        raise BadRequest(f"dtype {dtype!r} has no Open Inference Protocol datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype; BYTES is ``object``."""
    if datatype == BYTES:
        return np.dtype(object)
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise BadRequest(f"unknown datatype {datatype!r}; known: {', '.join(KNOWN_DATATYPES)}") from None


# --------------------------------------------------------------------------------------------
# Model IO signature


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: ``shape`` holds ints and names of dynamic dims ("batch")."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> TensorSpec:
        return cls(entry["name"], datatype_from_manifest(entry["dtype"]), tuple(entry["shape"]))

    def metadata(self) -> dict[str, Any]:
        """The tensor as model metadata shows it: dynamic dims are -1."""
        return {"name": self.name, "datatype": self.datatype, "shape": [d if isinstance(d, int) else -1
                                                                          for d in self.shape]}


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs; ``max_batch_size`` 0 means dim 0 is not a batch dim."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], max_batch_size: int = 0) -> Signature:
        inputs = tuple(TensorSpec.from_manifest(t) for t in manifest["inputs"])
        outputs = tuple(TensorSpec.from_manifest(t) for t in manifest["outputs"])
        batched = all(t.shape and t.shape[0] == "batch" for t in inputs + outputs)
        return cls(inputs, outputs, max_batch_size if batched else 0)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


# --------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request asks for; ``binary`` None: follow the request's binary_data_output."""

    name: str
    binary: bool | None = None
    classes: int | None = None  # the classification extension: top-k "value:index" strings


@dataclass
class InferRequest:
    """A decoded, validated inference request."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_s(self) -> float | None:
        """The request's ``timeout`` parameter (microseconds, as Triton reads it) in seconds; None when
        absent or 0 (no limit of its own; the server's --timeout still applies)."""
        micros = self.parameters.get("timeout")
        return micros / 1e6 if micros else None

    @property
    def batch_size(self) -> int:
        """Dim 0 of the first input (1 for a scalar input)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """Split a request body into its JSON header and the binary tensor bytes after it."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
    if length < 0 or length > len(body):
        raise BadRequest(f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes")
    if length == 0:
        raise BadRequest("Inference-Header-Content-Length 0 (raw binary requests) is not supported; "
                         "send a JSON header with binary_data_size per input")
    return body[:length], memoryview(body)[length:]


def parse_json_header(header: bytes) -> dict[str, Any]:
    """The request's JSON object; anything else (bad UTF-8, bad JSON, not an object) is a 400."""
    try:
        value = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest("request JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest(f"request JSON must be an object, got {type(value).__name__}")
    return value


def decode_request(body: bytes, header_length: str | None, signature: Signature,
                   allow_nonfinite: bool = False) -> InferRequest:
    """Decode and validate an inference request body against ``signature``.

    ``header_length`` is the Inference-Header-Content-Length header (None: the body is all JSON).
    ``allow_nonfinite``: accept NaN/Inf in floating-point inputs (refused by default).
    """
    header, binary = split_body(body, header_length)
    request = parse_json_header(header)
    parameters = _parameters(request.get("parameters"), "request")
    timeout = parameters.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0):
        raise BadRequest(f"request parameter 'timeout' must be a non-negative integer number of microseconds "
                         f"(0: no limit), got {timeout!r}")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    inputs, consumed = decode_inputs(raw_inputs, binary)
    if consumed != len(binary):
        raise BadRequest(f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to {consumed}")
    check_inputs(inputs, signature, allow_nonfinite)
    return InferRequest(
        inputs=inputs, outputs=decode_requested_outputs(request.get("outputs"), signature),
        binary_output=_flag(parameters, "binary_data_output", "request"), id=_request_id(request.get("id")),
        parameters=parameters,
    )


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"request 'id' must be a string, got {type(value).__name__}")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} 'parameters' must be an object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{where} parameter {key!r} must be true or false")
    return value


def decode_inputs(raw_inputs: list[Any], binary: memoryview) -> tuple[dict[str, np.ndarray], int]:
    """Decode every input tensor; returns them by name and the count of binary bytes consumed."""
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise BadRequest(f"inputs[{index}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{index}] needs a string 'name'")
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        inputs[name], offset = decode_tensor(raw, binary, offset)
    return inputs, offset


def decode_tensor(raw: dict[str, Any], binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor, from JSON ``data`` or from ``binary[offset:]``; returns it and the new offset."""
    name = raw["name"]
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequest(f"input {name!r} needs a string 'datatype'")
    numpy_dtype(datatype)  # raises on an unknown datatype
    shape = _shape(raw.get("shape"), name)
    parameters = _parameters(raw.get("parameters"), f"input {name!r}")
    if "binary_data_size" in parameters:
        if "data" in raw:
            raise BadRequest(f"input {name!r} has both 'data' and binary_data_size")
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                             f"({len(binary) - offset} binary bytes left)")
        return decode_binary(binary[offset:offset + size], datatype, shape, name), offset + size
    if "data" not in raw:
        raise BadRequest(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return decode_json_data(raw["data"], datatype, shape, name), offset


def _shape(value: Any, name: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    if not ok:
        raise BadRequest(f"input {name!r} needs a 'shape' list of non-negative integers, got {value!r}")
    return tuple(value)


def decode_binary(raw: memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes; the byte count must match the shape exactly."""
    if datatype == BYTES:
        return _decode_bytes_elements(raw, shape, name)
    dtype = DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(f"input {name!r}: {len(raw)} binary bytes, but shape {list(shape)} of {datatype} "
                         f"needs {expected}")
    if datatype == "BOOL" and len(raw) and np.frombuffer(raw, np.uint8).max() > 1:
        raise BadRequest(f"input {name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def _decode_bytes_elements(raw: memoryview, shape: tuple[int, ...], name: str) -> np.ndarray:
    """BYTES: each element is a 4-byte little-endian length then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: truncated BYTES length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise BadRequest(f"input {name!r}: BYTES element runs past its binary data")
        items.append(bytes(raw[offset + 4:offset + 4 + length]))
        offset += 4 + length
    if len(items) != math.prod(shape):
        raise BadRequest(f"input {name!r}: {len(items)} BYTES elements, but shape {list(shape)} needs "
                         f"{math.prod(shape)}")
    return np.array(items, dtype=object).reshape(shape)


def decode_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested); element count and element kinds are checked."""
    if not isinstance(data, list):
        data = [data]
    try:
        values = np.asarray(data, dtype=object if datatype == BYTES else None)
    except (ValueError, TypeError):
        raise BadRequest(f"input {name!r}: 'data' is ragged (nested lists of different lengths)") from None
    if values.size != math.prod(shape):
        raise BadRequest(f"input {name!r}: 'data' has {values.size} elements, but shape {list(shape)} needs "
                         f"{math.prod(shape)}")
    if datatype == BYTES:
        return _json_bytes(values, shape, name)
    _check_json_kind(values, datatype, name)
    return values.astype(DATATYPES[datatype]).reshape(shape)


def _json_bytes(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not all(isinstance(v, str) for v in values.flat):
        raise BadRequest(f"input {name!r}: BYTES data must be strings")
    return np.array([v.encode() for v in values.flat], dtype=object).reshape(shape)


def _check_json_kind(values: np.ndarray, datatype: str, name: str) -> None:
    """Refuse JSON values of the wrong kind (strings, nulls, floats for ints, out-of-range ints)."""
    if values.size == 0:
        return
    kind = values.dtype.kind
    allowed = {"BOOL": "b"}.get(datatype, "iu" if datatype in INT_DATATYPES else "iuf")
    if kind not in allowed:
        what = {"b": "booleans", "f": "non-integer numbers", "i": "integers", "u": "integers"}.get(
            kind, "values that are not numbers")
        raise BadRequest(f"input {name!r}: {datatype} data holds {what}")
    if datatype in INT_DATATYPES:
        info = np.iinfo(DATATYPES[datatype])
        if values.min() < info.min or values.max() > info.max:
            raise BadRequest(f"input {name!r}: a value is outside the range of {datatype}")


def check_inputs(inputs: dict[str, np.ndarray], signature: Signature, allow_nonfinite: bool = False) -> None:
    """Check names, datatypes, shapes (static dims, named dims agreeing across inputs, max batch size)
    and finiteness against the model's signature; every problem is collected into one 400."""
    problems = [f"unknown input {n!r}" for n in inputs if signature.input(n) is None]
    problems += [f"missing input {t.name!r}" for t in signature.inputs if t.name not in inputs]
    named_dims: dict[str, int] = {}
    for spec in signature.inputs:
        if spec.name in inputs:
            problems += _tensor_problems(inputs[spec.name], spec, named_dims, allow_nonfinite)
    batch = named_dims.get("batch")
    if signature.batched and batch is not None and batch > signature.max_batch_size:
        problems.append(f"batch size {batch} is over the model's max_batch_size {signature.max_batch_size}")
    if problems:
        expected = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in signature.inputs)
        raise BadRequest("; ".join(problems) + f" (the model takes: {expected})")


def _tensor_problems(array: np.ndarray, spec: TensorSpec, named_dims: dict[str, int],
                     allow_nonfinite: bool) -> list[str]:
    if datatype_of_array(array) != spec.datatype:
        return [f"input {spec.name!r} is {datatype_of_array(array)}, the model takes {spec.datatype}"]
    if array.ndim != len(spec.shape):
        return [f"input {spec.name!r} has shape {list(array.shape)}, the model takes rank {len(spec.shape)} "
                f"{list(spec.shape)}"]
    problems = []
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(want, int) and got != want:
            problems.append(f"input {spec.name!r} dim {axis} is {got}, the model takes {want}")
        elif isinstance(want, str) and named_dims.setdefault(want, got) != got:
            problems.append(f"input {spec.name!r} dim {axis} ({want}) is {got}, another input has "
                            f"{want}={named_dims[want]}")
    if not allow_nonfinite and spec.datatype in FLOAT_DATATYPES and not np.isfinite(array).all():
        problems.append(f"input {spec.name!r} holds NaN or Inf")
    return problems


def datatype_of_array(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object arrays are BYTES)."""
    if array.dtype == object:
        return BYTES
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise BadRequest(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")


def decode_requested_outputs(value: Any, signature: Signature) -> list[RequestedOutput] | None:
    """The request's ``outputs`` list (None when absent: return every output)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("request 'outputs' must be a list")
    requested: list[RequestedOutput] = []
    for index, raw in enumerate(value):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a string 'name'")
        requested.append(_requested_output(raw, signature))
    names = [r.name for r in requested]
    if len(set(names)) != len(names):
        raise BadRequest("an output is requested twice")
    return requested


def _requested_output(raw: dict[str, Any], signature: Signature) -> RequestedOutput:
    name = raw["name"]
    if signature.output(name) is None:
        known = ", ".join(t.name for t in signature.outputs)
        raise BadRequest(f"unknown output {name!r}; the model has: {known}")
    parameters = _parameters(raw.get("parameters"), f"output {name!r}")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise BadRequest(f"output {name!r}: binary_data must be true or false")
    classes = parameters.get("classification")
    if classes is not None:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise BadRequest(f"output {name!r}: classification must be a positive integer (the number of classes "
                             f"to return), got {classes!r}")
        spec = signature.output(name)
        if spec.datatype == BYTES:
            raise BadRequest(f"output {name!r} is BYTES; classification needs a numeric output")
        width = spec.shape[-1] if spec.shape else None
        if isinstance(width, int) and width >= 0 and classes > width:
            raise BadRequest(f"output {name!r} has {width} classes; classification asked for {classes}")
    return RequestedOutput(name, binary, classes)


# --------------------------------------------------------------------------------------------
# Responses


def encode_response(model_name: str, model_version: str | None, request: InferRequest,
                    outputs: dict[str, np.ndarray], signature: Signature) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (``Inference-Header-Content-Length`` and the
    content type when any output is binary)."""
    wanted = request.outputs or [RequestedOutput(t.name) for t in signature.outputs]
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for item in wanted:
        binary = request.binary_output if item.binary is None else item.binary
        array, spec = outputs[item.name], signature.output(item.name)
        if item.classes is not None:
            array, spec = classify(item.name, array, item.classes), None
        entry, blob = encode_output(item.name, array, spec, binary)
        entries.append(entry)
        blobs.extend([blob] if blob is not None else [])
    response: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      "inference-header-content-length": str(len(header))}


def classify(name: str, array: np.ndarray, count: int) -> np.ndarray:
    """The classification extension: the ``count`` highest values along the last dim, highest first,
    as BYTES ``"<value>:<index>"`` (shape ``[..., count]``; ``[batch, count]`` for a classifier).

    Ties keep the lower index first. Raises BadRequest when the output is a scalar or has fewer
    than ``count`` classes (checked here too, for outputs whose class count is dynamic).
    """
    values = np.asarray(array)
    if values.ndim == 0 or values.shape[-1] < count:
        have = "no class dimension" if values.ndim == 0 else f"{values.shape[-1]} classes"
        raise BadRequest(f"output {name!r} has {have}; classification asked for {count}")
    order = np.argsort(-values.astype(np.float64), axis=-1, kind="stable")[..., :count]
    top = np.take_along_axis(values, order, axis=-1)
    text = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        text[pos] = f"{float(top[pos]):f}:{int(order[pos])}".encode()
    return text


def encode_output(name: str, array: np.ndarray, spec: TensorSpec | None,
                  binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One output's JSON entry, and its bytes when it is sent binary."""
    datatype = spec.datatype if spec is not None else datatype_of_array(array)
    if datatype != BYTES:
        array = np.asarray(array).astype(DATATYPES[datatype], copy=False)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        blob = tensor_bytes(array, datatype)
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    entry["data"] = json_values(array, datatype)
    return entry, None


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian bytes of a tensor (BYTES: 4-byte length prefixes)."""
    if datatype == BYTES:
        return b"".join(struct.pack("<I", len(v)) + v for v in (_as_bytes(x) for x in array.flat))
    return np.ascontiguousarray(array, DATATYPES[datatype]).tobytes()


def json_values(array: np.ndarray, datatype: str) -> list[Any]:
    """A tensor's elements as a flat JSON list."""
    if datatype == BYTES:
        return [_as_bytes(x).decode("utf-8", "replace") for x in array.flat]
    if datatype == "BF16":
        return array.astype(np.float32).ravel().tolist()
    return array.ravel().tolist()


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def encode_binary_request(inputs: dict[str, np.ndarray], outputs: Sequence[str] = (),
                          binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request body and headers (for tests and the demo, not the server)."""
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": binary_output}}
    blobs = []
    for name, array in inputs.items():
        datatype = datatype_of_array(array)
        blob = tensor_bytes(array, datatype)
        header["inputs"].append({"name": name, "datatype": datatype, "shape": list(array.shape),
                                 "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    if outputs:
        header["outputs"] = [{"name": n} for n in outputs]
    raw = json.dumps(header).encode()
    return raw + b"".join(blobs), {HEADER_LENGTH: str(len(raw))}


def decode_binary_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """Outputs of a response body, JSON or binary (for tests and the demo)."""
    header, binary = (body, memoryview(b"")) if header_length is None else split_body(body, header_length)
    response = json.loads(header)
    arrays, offset = {}, 0
    for out in response["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.asarray(out["data"], DATATYPES[out["datatype"]]).reshape(out["shape"])
            continue
        arrays[out["name"]] = decode_binary(binary[offset:offset + size], out["datatype"], tuple(out["shape"]),
                                            out["name"])
        offset += size
    return arrays
