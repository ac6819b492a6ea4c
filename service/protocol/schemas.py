"""Pydantic models of the service's JSON: the inference request (validated with them, and shown in
the OpenAPI document), the responses the document describes, and the controlled comparison's body.

The inference route reads its raw body (the binary extension appends tensor bytes to the JSON),
so :mod:`service.protocol.oip` validates the JSON part with :class:`InferenceRequest` itself, and
:func:`add_infer_request_body` adds the schema to the document.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

Parameters = dict[str, Any]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BF16", "BYTES"]
DATATYPES: tuple[str, ...] = Datatype.__args__  # type: ignore[attr-defined]
REQUEST_ERROR = "bad_request"
MAX_TIMEOUT_US = (1 << 64) - 1


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, and what to change.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveBody(BaseModel):
    live: bool


class ReadyBody(BaseModel):
    ready: bool


class ModelReadyBody(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BF16 or BYTES")
    shape: list[int] = Field(description="-1 for a dynamic dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters = Field(default_factory=dict, description="family and norm variant")


class StrictModel(BaseModel):
    """Strict JSON types (no "3" for 3, no 1 for true); unknown keys are ignored."""

    model_config = ConfigDict(strict=True)


class RequestParameters(StrictModel):
    model_config = ConfigDict(extra="allow")

    binary_data_output: bool = Field(False, description="return every output as raw bytes (binary extension)")
    timeout: Annotated[int, Field(ge=0, le=MAX_TIMEOUT_US)] | None = Field(
        None, description="microseconds this request may wait for its answer (504 past it); 0 or absent: no "
                          "limit of its own; at most 2^64 - 1, as Triton's uint64")


class InputParameters(StrictModel):
    model_config = ConfigDict(extra="allow")

    binary_data_size: NonNegativeInt | None = Field(None, description="the tensor's bytes follow the JSON "
                                                                      "(binary extension), this many")


class OutputParameters(StrictModel):
    model_config = ConfigDict(extra="allow")

    binary_data: bool | None = Field(None, description="return this output as raw bytes (default: the "
                                                       "request's binary_data_output)")
    classification: PositiveInt | None = Field(None, description="return the top k classes as BYTES "
                                                                 "\"value:index\" strings")


# What RequestInput.data_or_binary checks, in the document's words: ``data``, or a
# ``parameters.binary_data_size``, never both.
DATA_OR_BINARY: dict[str, Any] = {
    "anyOf": [{"required": ["data"]},
              {"required": ["parameters"], "properties": {"parameters": {
                  "required": ["binary_data_size"],
                  "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}}],
    "not": {"required": ["data", "parameters"], "properties": {"parameters": {
        "required": ["binary_data_size"], "properties": {"binary_data_size": {"type": "integer"}}}}},
}


class RequestInput(StrictModel):
    model_config = ConfigDict(json_schema_extra=DATA_OR_BINARY)

    name: str
    shape: list[NonNegativeInt]
    datatype: Datatype
    parameters: InputParameters | None = None
    data: Annotated[Any, WithJsonSchema({"type": "array", "items": {}})] = Field(
        None, description="row-major elements, flat or nested (absent when sent as binary)")

    @model_validator(mode="after")
    def data_or_binary(self) -> RequestInput:
        """Exactly one of ``data`` and ``parameters.binary_data_size``."""
        binary = self.parameters is not None and self.parameters.binary_data_size is not None
        if binary and "data" in self.model_fields_set:
            raise request_error(f"input {self.name!r} has both 'data' and binary_data_size")
        if not binary and "data" not in self.model_fields_set:
            raise request_error(f"input {self.name!r} has neither 'data' nor parameters.binary_data_size")
        return self

    @property
    def binary_data_size(self) -> int | None:
        return self.parameters.binary_data_size if self.parameters is not None else None


class RequestOutput(StrictModel):
    name: str
    parameters: OutputParameters | None = None


class InferenceRequest(StrictModel):
    """An inference request's JSON (the header of a binary-extension body)."""

    id: str | None = None
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="absent: every output")

    @model_validator(mode="after")
    def unique_names(self) -> InferenceRequest:
        names: set[str] = set()
        for tensor in self.inputs:
            if tensor.name in names:
                raise request_error(f"input {tensor.name!r} is given twice")
            names.add(tensor.name)
        outputs = [o.name for o in self.outputs or []]
        if len(set(outputs)) != len(outputs):
            raise request_error("an output is requested twice")
        return self


def request_error(message: str) -> PydanticCustomError:
    """A validation error whose message is complete as it is (see service.protocol.oip.bad_request)."""
    return PydanticCustomError(REQUEST_ERROR, "{message}", {"message": message})


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class CompareRequest(StrictModel):
    """A controlled latency comparison of the ready variants of one family (the server's bounds on
    rounds and batch are its settings; the document shows them: see service.http.app.documented_limits)."""

    family: str = Field(description="the family (dyt.json 'family') whose variants to compare")
    dims: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: {"batch": 1},
                                 description="sizes of named dynamic dims; unnamed ones are 1")
    rounds: int = Field(30, ge=1, description="timed calls per variant, interleaved")
    warmup: int = Field(3, ge=0, le=100, description="untimed calls per variant first")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request"},
    404: {"model": ErrorBody, "description": "Unknown model or version"},
    503: {"model": ErrorBody, "description": "Not ready, or too many requests in flight"},
}


def add_infer_request_body(document: dict[str, Any]) -> dict[str, Any]:
    """Describe the inference routes' body (JSON, or JSON + binary tensors) in an OpenAPI document."""
    schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["InferenceRequest"] = schema
    body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "description": (
            "Triton binary tensor extension: the JSON request (Inference-Header-Content-Length bytes) "
            "followed by the raw bytes of each input with parameters.binary_data_size, in order.")},
    }}
    for path, operations in document.get("paths", {}).items():
        if path.endswith("/infer") and "post" in operations:
            operations["post"]["requestBody"] = body
    return document


def add_service_limits(document: dict[str, Any], limits: dict[str, dict[tuple[str, ...], dict[str, Any]]]) -> dict[
        str, Any]:
    """A copy of ``document`` whose request bodies carry the server's configured limits (the very
    values its checks use): ``limits`` maps a path suffix to {property path: JSON Schema keywords}."""
    document = copy.deepcopy(document)  # the routes' body schemas are shared by every app
    for path, operations in document.get("paths", {}).items():
        for suffix, properties in limits.items():
            if not path.endswith(suffix) or "post" not in operations:
                continue
            schema = operations["post"]["requestBody"]["content"]["application/json"]["schema"]
            for where, keywords in properties.items():
                node = schema
                for part in where:
                    node = node["properties"][part] if part != "*" else node["additionalProperties"]
                node.update(keywords)
    return document


def validation_errors_are_400(document: dict[str, Any]) -> dict[str, Any]:
    """The service answers invalid parameters with 400 (the protocol's status), not FastAPI's 422."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                del responses["422"]
                responses.setdefault("400", {"description": "Bad request", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    document.get("components", {}).get("schemas", {}).setdefault("ErrorBody", ErrorBody.model_json_schema())
    return document
