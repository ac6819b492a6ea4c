"""Pydantic models that describe the routes in the OpenAPI document, and the body of the one route
that FastAPI parses itself (the controlled comparison).

The inference route reads its raw body (the binary extension appends tensor bytes to the JSON),
so its request schema is added to the document by :func:`add_infer_request_body`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Parameters = dict[str, Any]


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


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(None, description="binary_data_size: the tensor's bytes follow the JSON")
    data: list[Any] | None = Field(None, description="row-major elements, flat or nested")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(None, description="binary_data: return this output as raw bytes")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(None, description="binary_data_output: all outputs as raw bytes")
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


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


class CompareRequest(BaseModel):
    """A controlled latency comparison of the ready variants of one family."""

    family: str = Field(description="the family (dyt.json 'family') whose variants to compare")
    dims: dict[str, int] = Field(default_factory=lambda: {"batch": 1},
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
