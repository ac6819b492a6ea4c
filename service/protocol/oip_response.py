"""The Open Inference Protocol's response side: a decoded request's outputs encoded as JSON or as
Triton's binary tensor data (with classification), and the client side of the binary extension
(:func:`encode_binary_request`, :func:`decode_binary_response`) that tests and demos use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.utils import serialize_byte_tensor

from ..errors import BadRequest
from .oip_types import (
    BYTES,
    HEADER_LENGTH,
    DecodedRequest,
    RequestedOutput,
    Signature,
    TensorSignature,
    datatype_of_array,
    decode_binary,
    numpy_dtype_of,
    split_body,
)


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
