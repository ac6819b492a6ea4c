"""Open Inference Protocol v2 (REST) codec: datatypes, request decoding, response encoding.

The request side lives here; datatypes, signatures and the binary extension's raw decoding in
:mod:`~service.protocol.oip_types`, the response side in :mod:`~service.protocol.oip_response`;
every name of the three is reachable as ``oip.X``. Pure functions over bytes and numpy arrays, so
every rule can be unit-tested without a server.

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
import sys
import zlib
from typing import Any

import msgspec
import numpy as np
from pydantic import ValidationError

from ..errors import BadRequest, PayloadTooLarge
from .oip_response import (  # noqa: F401  (the codec's one face: oip.X for every part)
    classify,
    decode_binary_response,
    encode_binary_request,
    encode_output,
    encode_response,
    json_values,
    tensor_bytes,
)
from .oip_types import (  # noqa: F401
    BYTES,
    FLOAT_DATATYPES,
    HEADER_LENGTH,
    INT_DATATYPES,
    DecodedRequest,
    RequestedOutput,
    Signature,
    TensorSignature,
    datatype_of_array,
    decode_binary,
    numpy_dtype_of,
    split_body,
)
from .schemas import DATATYPES, REQUEST_ERROR, InferenceRequest, RequestInput, RequestOutput


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
