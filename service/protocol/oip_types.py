"""The Open Inference Protocol's datatypes and the model-side shapes of a request: the model's IO
signature (:class:`Signature`), a decoded request (:class:`DecodedRequest`), the binary tensor
extension's body split and raw tensor decoding. The request side is :mod:`~service.protocol.oip`, the
response side :mod:`~service.protocol.oip_response`; both build on this module.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, triton_to_np_dtype

from dyt_deploy.dtypes import oip_datatype

from ..errors import BadRequest
from .schemas import DATATYPES

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
