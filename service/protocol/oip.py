"""Open Inference Protocol v2 (REST) codec: datatypes, request decoding, response encoding.

Pure functions over bytes and numpy arrays, so every rule can be unit-tested without a server.

* JSON tensors: ``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested, row-major.
* Triton's binary tensor data extension: the body is a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of every input
  whose ``parameters.binary_data_size`` is set, in the order the inputs appear in the JSON.
  Outputs are returned binary when the request asks (``outputs[].parameters.binary_data`` or the
  request-level ``parameters.binary_data_output``).

The request's JSON is validated by the pydantic model :class:`~service.protocol.schemas.InferenceRequest`
(the same one the OpenAPI document shows); what is left by hand here is the binary extension's
slicing, JSON data against its datatype, and the check against the model's signature (names,
ranks, dims, datatypes, batch size). Datatypes map to numpy and BYTES tensors are (de)serialised
as ``tritonclient.utils`` does it.

Every malformed request raises :class:`~service.errors.BadRequest` with a message that names the
tensor or field and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from pydantic import ValidationError
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, serialize_byte_tensor, triton_to_np_dtype

from dyt_deploy.dtypes import oip_datatype

from ..errors import BadRequest, PayloadTooLarge
from .schemas import DATATYPES, REQUEST_ERROR, InferenceRequest, RequestInput, RequestOutput

BYTES = "BYTES"
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
INT_DATATYPES = frozenset(name for name in DATATYPES if name.startswith(("INT", "UINT")))
HEADER_LENGTH = "inference-header-content-length"


def numpy_dtype_of(datatype: str) -> np.dtype:
    """The (little-endian) numpy dtype of an OIP datatype, as tritonclient maps it; BYTES is ``object``,
    BF16 ``ml_dtypes.bfloat16``."""
    numpy_type = triton_to_np_dtype(datatype)
    if numpy_type is None:
        raise BadRequest(f"unknown datatype {datatype!r}; known: {', '.join(DATATYPES)}")
    return np.dtype(numpy_type).newbyteorder("<")


def datatype_of_array(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array, as tritonclient maps it (object arrays are BYTES)."""
    datatype = np_to_triton_dtype(array.dtype)
    if datatype is None:
        raise BadRequest(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
    return datatype


# --------------------------------------------------------------------------------------------
# Model IO signature


@dataclass(frozen=True)
class TensorSignature:
    """One input or output of a served model: ``shape`` holds ints and names of dynamic dims ("batch")."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> TensorSignature:
        return cls(entry["name"], oip_datatype(entry["dtype"]), tuple(entry["shape"]))

    def metadata(self) -> dict[str, Any]:
        """The tensor as model metadata shows it: dynamic dims are -1."""
        return {"name": self.name, "datatype": self.datatype, "shape": [d if isinstance(d, int) else -1
                                                                          for d in self.shape]}


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs; ``max_batch_size`` 0 means dim 0 is not a batch dim."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    max_batch_size: int = 0

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], max_batch_size: int = 0) -> Signature:
        inputs = tuple(TensorSignature.from_manifest(t) for t in manifest["inputs"])
        outputs = tuple(TensorSignature.from_manifest(t) for t in manifest["outputs"])
        batched = all(t.shape and t.shape[0] == "batch" for t in inputs + outputs)
        return cls(inputs, outputs, max_batch_size if batched else 0)

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSignature | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSignature | None:
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
class DecodedRequest:
    """An inference request decoded into arrays and checked against the model's signature."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    id: str | None = None
    timeout_us: int | None = None

    @property
    def timeout_s(self) -> float | None:
        """The request's ``timeout`` parameter (microseconds, as Triton reads it) in seconds; None when
        absent or 0 (no limit of its own; the server's --timeout still applies)."""
        return self.timeout_us / 1e6 if self.timeout_us else None

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


def inflate_body(body: bytes, encoding: str, limit: int, max_ratio: int) -> bytes:
    """A request body sent with Content-Encoding gzip or deflate, inflated; "identity" passes through.

    Inflation stops past ``limit`` bytes or past ``max_ratio`` times the compressed size (413 for
    either), so a small compressed bomb never grows in memory.
    """
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    bound = min(limit, max_ratio * len(body))
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, bound + 1)
    except zlib.error as err:
        raise BadRequest(f"body is not valid {encoding} data: {err}") from None
    if len(inflated) > limit:
        raise PayloadTooLarge(f"inflated request body is over the limit of {limit} bytes")
    if len(inflated) > bound:
        raise PayloadTooLarge(f"{encoding} body inflated to more than {max_ratio} times its {len(body)} bytes "
                              "(the server's limit on the inflation ratio); send it uncompressed")
    return inflated


# The most bytes one element takes in a JSON ``data`` list: its longest text and a ", " after it
# ("-2.2250738585072014e-308" for a float, as Python and most clients write a double).
JSON_ELEMENT_BYTES = {"BOOL": 7, "INT8": 6, "UINT8": 5, "INT16": 8, "UINT16": 7, "INT32": 13, "UINT32": 12,
                      "INT64": 22, "UINT64": 22, "FP16": 26, "FP32": 26, "FP64": 26, "BF16": 26}
JSON_ROW_BYTES = 4  # "[", "]" and ", " around each innermost row of nested data
JSON_REST_BYTES = 64 << 10  # names, shapes, parameters, outputs, whitespace


def json_body_limit(signature: Signature, cap: int) -> int:
    """The largest all-JSON request the model can validly take: its max batch of every input, each
    element at its longest JSON text; at most ``cap`` (and ``cap`` when the size is open: BYTES
    inputs, dynamic dims other than the batch)."""
    if not signature.batched:
        return cap
    per_item = 0
    for tensor in signature.inputs:
        dims = tensor.shape[1:]
        if tensor.datatype not in JSON_ELEMENT_BYTES or not all(isinstance(d, int) for d in dims):
            return cap
        elements = math.prod(dims)  # type: ignore[arg-type]
        rows = elements // dims[-1] if dims and dims[-1] else 1  # type: ignore[operator]
        per_item += elements * JSON_ELEMENT_BYTES[tensor.datatype] + (rows + 1) * JSON_ROW_BYTES
    return min(cap, signature.max_batch_size * per_item + JSON_REST_BYTES)


def parse_json_header(header: bytes) -> dict[str, Any]:
    """The request's JSON object; anything else (bad UTF-8, bad JSON, not an object) is a 400.

    msgspec decodes it: a fifth less peak memory than the standard library for a large tensor's
    ``data``, and faster. What strict JSON and msgspec do not take (NaN and Infinity, which
    Python's clients write; integers past 64 bits) is read by the standard library, as before.
    """
    try:
        value = msgspec.json.decode(header)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        value = _parse_json_leniently(header)
    if not isinstance(value, dict):
        raise BadRequest(f"request JSON must be an object, got {type(value).__name__}")
    return value


def _parse_json_leniently(header: bytes) -> Any:
    """The standard library's reading of JSON (NaN, Infinity, long integers), refusals as 400s."""
    try:
        return json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest("request JSON is nested too deeply") from None
    except ValueError as err:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise BadRequest(f"request JSON has a number too long to read ({err}); integers may have at most "
                         f"{sys.get_int_max_str_digits()} digits") from None


def parse_request(header: bytes) -> InferenceRequest:
    """The request's JSON, validated by :class:`~service.protocol.schemas.InferenceRequest`."""
    raw = parse_json_header(header)
    try:
        return InferenceRequest.model_validate(raw)
    except ValidationError as err:
        raise bad_request(err, raw) from None


def decode_request(body: bytes, header_length: str | None, signature: Signature,
                   allow_nonfinite: bool = False) -> DecodedRequest:
    """Decode and validate an inference request body against ``signature``.

    ``header_length`` is the Inference-Header-Content-Length header (None: the body is all JSON).
    ``allow_nonfinite``: accept NaN/Inf in floating-point inputs (refused by default).
    """
    header, binary = split_body(body, header_length)
    request = parse_request(header)
    inputs = decode_inputs(request.inputs, binary)
    check_inputs(inputs, signature, allow_nonfinite)
    parameters = request.parameters
    return DecodedRequest(
        inputs=inputs, outputs=requested_outputs(request.outputs, signature),
        binary_output=parameters is not None and parameters.binary_data_output, id=request.id,
        timeout_us=parameters.timeout if parameters is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Validation errors as one 400 in the protocol's words

_INPUT, _OUTPUT = ("inputs", "*"), ("outputs", "*")
# field (list indices as "*") -> the message for any problem with it or inside it
_FIELD_MESSAGES: dict[tuple[str, ...], str] = {
    ("id",): "request 'id' must be a string, got {kind}",
    ("parameters",): "request 'parameters' must be an object",
    ("parameters", "binary_data_output"): "request parameter 'binary_data_output' must be true or false",
    ("parameters", "timeout"): "request parameter 'timeout' must be a non-negative integer number of microseconds "
                               "up to 2^64 - 1 (0: no limit), got {value!r}",
    ("inputs",): "request needs a non-empty 'inputs' list",
    _INPUT: "inputs[{index}] must be an object",
    (*_INPUT, "name"): "inputs[{index}] needs a string 'name'",
    (*_INPUT, "datatype"): "{tensor}: unknown datatype {value!r}; known: " + ", ".join(DATATYPES),
    (*_INPUT, "shape"): "{tensor} needs a 'shape' list of non-negative integers, got {value!r}",
    (*_INPUT, "parameters"): "{tensor} 'parameters' must be an object",
    (*_INPUT, "parameters", "binary_data_size"): "{tensor}: binary_data_size must be a non-negative integer",
    ("outputs",): "request 'outputs' must be a list",
    _OUTPUT: "outputs[{index}] must be an object with a string 'name'",
    (*_OUTPUT, "name"): "outputs[{index}] must be an object with a string 'name'",
    (*_OUTPUT, "parameters"): "{tensor} 'parameters' must be an object",
    (*_OUTPUT, "parameters", "binary_data"): "{tensor}: binary_data must be true or false",
    (*_OUTPUT, "parameters", "classification"): "{tensor}: classification must be a positive integer (the number "
                                                "of classes to return), got {value!r}",
}


def bad_request(err: ValidationError, raw: dict[str, Any]) -> BadRequest:
    """One BadRequest for every problem pydantic found in ``raw``, each naming its field."""
    messages = dict.fromkeys(_message(error, raw) for error in err.errors())
    return BadRequest("; ".join(messages))


def _message(error: Any, raw: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == REQUEST_ERROR:  # the schema's own checks word their messages fully
        return error["msg"]
    field = tuple("*" if isinstance(part, int) else part for part in loc)
    while field and field not in _FIELD_MESSAGES:
        field, loc = field[:-1], loc[:-1]
    template = _FIELD_MESSAGES.get(field, "request {path}: {msg}")
    value = _lookup(raw, loc)
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    return template.format(value=value, kind=type(value).__name__, index=index, tensor=_tensor(raw, loc),
                           path=".".join(str(p) for p in error["loc"]), msg=error["msg"])


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    """The raw JSON value at ``loc`` (None where it is missing)."""
    for part in loc:
        if isinstance(raw, dict) and isinstance(part, str) or isinstance(raw, list) and isinstance(part, int):
            try:
                raw = raw[part]
            except (KeyError, IndexError):
                return None
        else:
            return None
    return raw


def _tensor(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """How a message names the tensor at ``loc``: "input 'x'", or "inputs[0]" when it has no name."""
    if len(loc) < 2 or not isinstance(loc[1], int):
        return "request"
    name = _lookup(raw, loc[:2] + ("name",))
    kind = "input" if loc[0] == "inputs" else "output"
    return f"{kind} {name!r}" if isinstance(name, str) else f"{loc[0]}[{loc[1]}]"


# --------------------------------------------------------------------------------------------
# Tensors


def decode_inputs(inputs: list[RequestInput], binary: memoryview) -> dict[str, np.ndarray]:
    """Every input tensor by name, from JSON ``data`` or from its slice of ``binary`` (in order);
    the binary bytes must be consumed exactly."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        shape, size = tuple(tensor.shape), tensor.binary_data_size
        if size is None:
            arrays[tensor.name] = decode_json_data(tensor.data, tensor.datatype, shape, tensor.name)
            continue
        if offset + size > len(binary):
            raise BadRequest(f"input {tensor.name!r}: binary_data_size {size} runs past the end of the body "
                             f"({len(binary) - offset} binary bytes left)")
        arrays[tensor.name] = decode_binary(binary[offset:offset + size], tensor.datatype, shape, tensor.name)
        offset += size
    if offset != len(binary):
        raise BadRequest(f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to {offset}")
    return arrays


def decode_binary(raw: memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes; the byte count must match the shape exactly."""
    if datatype == BYTES:
        return _decode_bytes_elements(raw, shape, name)
    dtype = numpy_dtype_of(datatype)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(f"input {name!r}: {len(raw)} binary bytes, but shape {list(shape)} of {datatype} "
                         f"needs {expected}")
    if datatype == "BOOL" and len(raw) and np.frombuffer(raw, np.uint8).max() > 1:
        raise BadRequest(f"input {name!r}: BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def _decode_bytes_elements(raw: memoryview, shape: tuple[int, ...], name: str) -> np.ndarray:
    """BYTES: each element is a 4-byte little-endian length then that many bytes."""
    try:
        items = deserialize_bytes_tensor(raw)
    except struct.error:
        raise BadRequest(f"input {name!r}: a BYTES element (or its 4-byte length) runs past its binary data") from None
    if len(items) != math.prod(shape):
        raise BadRequest(f"input {name!r}: {len(items)} BYTES elements, but shape {list(shape)} needs "
                         f"{math.prod(shape)}")
    return items.reshape(shape)


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
    if values.dtype == object and all(type(v) is int for v in values.flat):  # integers past 64 bits
        if datatype in INT_DATATYPES:
            raise BadRequest(f"input {name!r}: a value is outside the range of {datatype}")
        values = np.asarray([float(v) if abs(v) < 1 << 1024 else math.inf for v in values.flat])
    _check_json_kind(values, datatype, name)
    return values.astype(numpy_dtype_of(datatype)).reshape(shape)


def _json_bytes(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not all(isinstance(v, str) for v in values.flat):
        raise BadRequest(f"input {name!r}: BYTES data must be strings")
    try:
        return np.array([v.encode() for v in values.flat], dtype=object).reshape(shape)
    except UnicodeEncodeError:  # JSON may escape a lone surrogate (\ud800), which no UTF-8 carries
        raise BadRequest(f"input {name!r}: BYTES data holds text that is not valid Unicode (a lone surrogate); "
                         "send binary BYTES data for arbitrary bytes") from None


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
        info = np.iinfo(numpy_dtype_of(datatype))
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


def _tensor_problems(array: np.ndarray, spec: TensorSignature, named_dims: dict[str, int],
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


def requested_outputs(outputs: list[RequestOutput] | None, signature: Signature) -> list[RequestedOutput] | None:
    """The request's ``outputs`` checked against the model (None when absent: return every output)."""
    if outputs is None:
        return None
    return [_requested_output(output, signature) for output in outputs]


def _requested_output(output: RequestOutput, signature: Signature) -> RequestedOutput:
    name, parameters = output.name, output.parameters
    spec = signature.output(name)
    if spec is None:
        known = ", ".join(t.name for t in signature.outputs)
        raise BadRequest(f"unknown output {name!r}; the model has: {known}")
    classes = parameters.classification if parameters is not None else None
    if classes is not None:
        if spec.datatype == BYTES:
            raise BadRequest(f"output {name!r} is BYTES; classification needs a numeric output")
        width = spec.shape[-1] if spec.shape else None
        if isinstance(width, int) and width >= 0 and classes > width:
            raise BadRequest(f"output {name!r} has {width} classes; classification asked for {classes}")
    return RequestedOutput(name, parameters.binary_data if parameters is not None else None, classes)


# --------------------------------------------------------------------------------------------
# Responses


def encode_response(model_name: str, model_version: str | None, request: DecodedRequest,
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


def encode_output(name: str, array: np.ndarray, spec: TensorSignature | None,
                  binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One output's JSON entry, and its bytes when it is sent binary."""
    datatype = spec.datatype if spec is not None else datatype_of_array(array)
    if datatype != BYTES:
        array = np.asarray(array).astype(numpy_dtype_of(datatype), copy=False)
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
        return serialize_byte_tensor(np.asarray(array, dtype=object)).item() if array.size else b""
    return np.ascontiguousarray(array, numpy_dtype_of(datatype)).tobytes()


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
            arrays[out["name"]] = np.asarray(out["data"], numpy_dtype_of(out["datatype"])).reshape(out["shape"])
            continue
        arrays[out["name"]] = decode_binary(binary[offset:offset + size], out["datatype"], tuple(out["shape"]),
                                            out["name"])
        offset += size
    return arrays
