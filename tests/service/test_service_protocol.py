"""The protocol codec on its own: datatypes, JSON and binary decoding, validation, encoding."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from service.errors import BadRequest
from service.protocol import oip as protocol
from service.protocol.oip import Signature, TensorSignature

SIGNATURE = Signature(
    inputs=(TensorSignature("ids", "INT64", ("batch", "seq")), TensorSignature("mask", "BOOL", ("batch", "seq")),
            TensorSignature("scale", "FP32", ("batch", 2))),
    outputs=(TensorSignature("out", "FP32", ("batch", "seq", 4)), TensorSignature("half", "FP16", ("batch",))),
    max_batch_size=4,
)


def feed(batch: int = 2, seq: int = 3) -> dict[str, np.ndarray]:
    return {"ids": np.arange(batch * seq, dtype=np.int64).reshape(batch, seq),
            "mask": np.ones((batch, seq), bool),
            "scale": np.linspace(-1, 1, batch * 2, dtype=np.float32).reshape(batch, 2)}


def json_body(inputs: dict[str, np.ndarray], **extra: object) -> bytes:
    tensors = [{"name": n, "shape": list(a.shape), "datatype": protocol.datatype_of_array(a),
                "data": a.tolist()} for n, a in inputs.items()]
    return json.dumps({"inputs": tensors, **extra}).encode()


def decode(body: bytes, header: str | None = None, allow_nonfinite: bool = False) -> protocol.DecodedRequest:
    return protocol.decode_request(body, header, SIGNATURE, allow_nonfinite)


@pytest.mark.parametrize(("datatype", "dtype"), [
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
    ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64), ("FP16", np.float16),
    ("FP32", np.float32), ("FP64", np.float64),
])
def test_datatype_table_matches_the_spec(datatype: str, dtype: type) -> None:
    assert protocol.numpy_dtype_of(datatype) == np.dtype(dtype)
    assert protocol.datatype_of_array(np.zeros(1, dtype)) == datatype


def test_unknown_datatype_lists_the_known_ones() -> None:
    with pytest.raises(BadRequest, match="unknown datatype 'FLOAT'.*FP32"):
        protocol.numpy_dtype_of("FLOAT")


@pytest.mark.parametrize(("dtype", "datatype"), [("float32", "FP32"), ("float16", "FP16"), ("bfloat16", "BF16"),
                                                 ("int64", "INT64"), ("bool", "BOOL")])
def test_manifest_dtypes_map_to_protocol_datatypes(dtype: str, datatype: str) -> None:
    entry = {"name": "x", "dtype": dtype, "shape": ["batch", 4]}
    assert TensorSignature.from_manifest(entry) == TensorSignature("x", datatype, ("batch", 4))


def test_json_request_decodes_nested_data_to_the_declared_dtypes() -> None:
    request = decode(json_body(feed(), id="r1"))
    assert request.id == "r1" and request.outputs is None and request.batch_size == 2
    for name, array in feed().items():
        np.testing.assert_array_equal(request.inputs[name], array)
        assert request.inputs[name].dtype == array.dtype


def test_flat_json_data_is_accepted() -> None:
    body = json.loads(json_body(feed()))
    for tensor in body["inputs"]:
        tensor["data"] = np.asarray(tensor["data"]).ravel().tolist()
    request = decode(json.dumps(body).encode())
    np.testing.assert_array_equal(request.inputs["ids"], feed()["ids"])


def test_binary_request_round_trips() -> None:
    body, headers = protocol.encode_binary_request(feed(), outputs=["half"])
    request = decode(body, headers[protocol.HEADER_LENGTH])
    np.testing.assert_array_equal(request.inputs["scale"], feed()["scale"])
    assert request.outputs == [protocol.RequestedOutput("half", None)]
    assert request.binary_output is True


def test_mixed_json_and_binary_inputs() -> None:
    inputs = feed()
    header = {"inputs": [
        {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": inputs["ids"].ravel().tolist()},
        {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 6}},
        {"name": "scale", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
    ]}
    raw = json.dumps(header).encode()
    body = raw + inputs["mask"].tobytes() + inputs["scale"].tobytes()
    request = decode(body, str(len(raw)))
    np.testing.assert_array_equal(request.inputs["mask"], inputs["mask"])
    np.testing.assert_array_equal(request.inputs["scale"], inputs["scale"])


BAD_CASES = {
    "not json": (b"{nope", None, "not valid JSON"),
    "json array": (b"[1, 2]", None, "must be an object"),
    "no inputs": (b'{"inputs": []}', None, "non-empty 'inputs'"),
    "input not object": (b'{"inputs": [3]}', None, r"inputs\[0\] must be an object"),
    "bad id": (json_body(feed(), id=7), None, "'id' must be a string"),
    "header not int": (json_body(feed()), "ten", "not an integer"),
    "header too long": (json_body(feed()), "100000", "does not fit"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_malformed_requests_are_400(case: str) -> None:
    body, header, message = BAD_CASES[case]
    with pytest.raises(BadRequest, match=message):
        decode(body, header)


def mutate(tensor_name: str, **changes: object) -> bytes:
    """A valid JSON request with one input's fields changed (None removes the field)."""
    body = json.loads(json_body(feed()))
    tensor = next(t for t in body["inputs"] if t["name"] == tensor_name)
    for key, value in changes.items():
        if value is None:
            tensor.pop(key)
        else:
            tensor[key] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize(("body", "message"), [
    (mutate("ids", name="tokens"), "unknown input 'tokens'.*missing input 'ids'"),
    (mutate("ids", datatype="INT32"), "'ids' is INT32, the model takes INT64"),
    (mutate("ids", datatype="STRING"), "unknown datatype 'STRING'"),
    (mutate("ids", shape=[6]), "the model takes rank 2"),
    (mutate("ids", shape=[2, 3, 1]), r"'ids' has shape \[2, 3, 1\], the model takes rank 2"),
    (mutate("ids", shape=[2, -3]), "non-negative integers"),
    (mutate("ids", shape=[3, 2]), r"'mask' dim 0 \(batch\) is 2, another input has batch=3"),
    (mutate("scale", shape=[1, 4]), "'scale' dim 1 is 4, the model takes 2"),
    (mutate("ids", data=[1, 2, 3]), "has 3 elements, but shape \\[2, 3\\] needs 6"),
    (mutate("ids", data=[[1, 2, 3], [4, 5]]), "ragged"),
    (mutate("ids", data=["a", "b", "c", "d", "e", "f"]), "INT64 data holds values that are not numbers"),
    (mutate("ids", data=[0.5, 1, 2, 3, 4, 5]), "INT64 data holds non-integer numbers"),
    (mutate("ids", data=[2**70, 1, 2, 3, 4, 5]), "INT64 data holds values that are not numbers|outside the range"),
    (mutate("mask", data=[1, 0, 1, 0, 1, 0]), "BOOL data holds integers"),
    (mutate("scale", data=[None, 1, 2, 3]), "not numbers"),
    (mutate("ids", data=None), "neither 'data' nor"),
    (mutate("scale", parameters={"binary_data_size": 16}), "both 'data' and binary_data_size"),
    (mutate("scale", parameters=[1]), "'parameters' must be an object"),
])
def test_invalid_tensors_are_400_and_name_the_tensor(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode(body)


def test_batch_over_max_batch_size_is_refused() -> None:
    with pytest.raises(BadRequest, match="batch size 5 is over the model's max_batch_size 4"):
        decode(json_body(feed(batch=5)))


def test_duplicate_input_is_refused() -> None:
    body = json.loads(json_body(feed()))
    body["inputs"].append(body["inputs"][0])
    with pytest.raises(BadRequest, match="given twice"):
        decode(json.dumps(body).encode())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_floats_are_refused_unless_allowed(value: float) -> None:
    inputs = feed()
    inputs["scale"][0, 0] = value
    body, headers = protocol.encode_binary_request(inputs)
    with pytest.raises(BadRequest, match="'scale' holds NaN or Inf"):
        decode(body, headers[protocol.HEADER_LENGTH])
    assert np.isnan(decode(body, headers[protocol.HEADER_LENGTH], allow_nonfinite=True).inputs["scale"][0, 0]) \
        == np.isnan(value)


def test_json_nan_literal_is_refused() -> None:
    body = mutate("scale", data=[1.0, 2.0, 3.0, 4.0]).replace(b"4.0", b"NaN")
    with pytest.raises(BadRequest, match="NaN or Inf"):
        decode(body)


def binary_header(sizes: dict[str, int]) -> tuple[bytes, str]:
    shapes = {"ids": [2, 3], "mask": [2, 3], "scale": [2, 2]}
    types = {"ids": "INT64", "mask": "BOOL", "scale": "FP32"}
    raw = json.dumps({"inputs": [{"name": n, "shape": shapes[n], "datatype": types[n],
                                  "parameters": {"binary_data_size": s}} for n, s in sizes.items()]}).encode()
    return raw, str(len(raw))


def test_binary_size_that_does_not_match_the_shape_is_refused() -> None:
    raw, length = binary_header({"ids": 40, "mask": 6, "scale": 16})
    with pytest.raises(BadRequest, match="'ids': 40 binary bytes, but shape \\[2, 3\\] of INT64 needs 48"):
        decode(raw + bytes(40 + 6 + 16), length)


def test_binary_size_past_the_end_of_the_body_is_refused() -> None:
    raw, length = binary_header({"ids": 48, "mask": 6, "scale": 16})
    with pytest.raises(BadRequest, match="runs past the end of the body"):
        decode(raw + bytes(48 + 6), length)


def test_trailing_binary_bytes_are_refused() -> None:
    raw, length = binary_header({"ids": 48, "mask": 6, "scale": 16})
    with pytest.raises(BadRequest, match="binary data is 75 bytes but the inputs' binary_data_size add up to 70"):
        decode(raw + bytes(75), length)


def test_binary_bool_bytes_must_be_zero_or_one() -> None:
    raw, length = binary_header({"ids": 48, "mask": 6, "scale": 16})
    with pytest.raises(BadRequest, match="BOOL bytes must be 0 or 1"):
        decode(raw + bytes(48) + bytes([2] * 6) + bytes(16), length)


def test_requested_outputs_are_checked() -> None:
    with pytest.raises(BadRequest, match="unknown output 'logits'; the model has: out, half"):
        decode(json_body(feed(), outputs=[{"name": "logits"}]))
    with pytest.raises(BadRequest, match="requested twice"):
        decode(json_body(feed(), outputs=[{"name": "out"}, {"name": "out"}]))

@pytest.mark.parametrize("count", [0, -2, "3", True, 2.5])
def test_classification_count_must_be_a_positive_integer(count: object) -> None:
    with pytest.raises(BadRequest, match="classification must be a positive integer"):
        decode(json_body(feed(), outputs=[{"name": "out", "parameters": {"classification": count}}]))


def test_classification_is_decoded_per_output() -> None:
    request = decode(json_body(feed(), outputs=[{"name": "out", "parameters": {"classification": 2}},
                                                {"name": "half"}]))
    assert [(o.name, o.classes) for o in request.outputs] == [("out", 2), ("half", None)]


def test_classify_orders_by_value_then_index() -> None:
    scores = np.array([[1.0, 5.0, 10.0, 4.0], [0.5, 0.5, -1.0, 0.5]], np.float32)
    top = protocol.classify("out", scores, 3)
    assert top.shape == (2, 3)
    assert top.tolist() == [[b"10.000000:2", b"5.000000:1", b"4.000000:3"],
                            [b"0.500000:0", b"0.500000:1", b"0.500000:3"]]
    with pytest.raises(BadRequest, match="has 4 classes; classification asked for 5"):
        protocol.classify("out", scores, 5)
    with pytest.raises(BadRequest, match="no class dimension"):
        protocol.classify("out", np.float32(3.0), 1)


def outputs() -> dict[str, np.ndarray]:
    return {"out": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7, "half": np.array([0.5, -2], np.float16)}


def test_json_response_has_every_output_and_echoes_the_id() -> None:
    request = protocol.DecodedRequest(inputs=feed(), id="abc")
    body, headers = protocol.encode_response("m", "1", request, outputs(), SIGNATURE)
    assert headers == {"content-type": "application/json"}
    response = json.loads(body)
    assert response["model_name"] == "m" and response["model_version"] == "1" and response["id"] == "abc"
    assert [o["name"] for o in response["outputs"]] == ["out", "half"]
    assert response["outputs"][1] == {"name": "half", "datatype": "FP16", "shape": [2], "data": [0.5, -2.0]}
    np.testing.assert_array_equal(protocol.decode_binary_response(body, None)["out"], outputs()["out"])


def test_binary_response_sets_the_header_and_sizes() -> None:
    request = protocol.DecodedRequest(inputs=feed(), outputs=[protocol.RequestedOutput("half", True),
                                                            protocol.RequestedOutput("out", False)])
    body, headers = protocol.encode_response("m", "1", request, outputs(), SIGNATURE)
    length = int(headers["inference-header-content-length"])
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert "data" in header["outputs"][1] and len(body) == length + 4
    decoded = protocol.decode_binary_response(body, headers["inference-header-content-length"])
    np.testing.assert_array_equal(decoded["half"], outputs()["half"])


def test_binary_data_output_applies_unless_an_output_overrides_it() -> None:
    request = protocol.DecodedRequest(inputs=feed(), binary_output=True,
                                    outputs=[protocol.RequestedOutput("out"), protocol.RequestedOutput("half", False)])
    body, headers = protocol.encode_response("m", None, request, outputs(), SIGNATURE)
    header = json.loads(body[:int(headers["inference-header-content-length"])])
    assert "model_version" not in header
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 96 and "data" in header["outputs"][1]


def test_bytes_tensors_use_length_prefixes() -> None:
    values = np.array([b"ab", b"", b"xyz"], dtype=object)
    blob = protocol.tensor_bytes(values, "BYTES")
    assert blob == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"
    decoded = protocol.decode_binary(memoryview(blob), "BYTES", (3,), "t")
    assert decoded.tolist() == [b"ab", b"", b"xyz"]
    with pytest.raises(BadRequest, match="runs past"):
        protocol.decode_binary(memoryview(blob[:-1]), "BYTES", (3,), "t")


@pytest.mark.parametrize("binary", [False, True])
def test_classified_output_is_sent_as_bytes(binary: bool) -> None:
    request = protocol.DecodedRequest(inputs=feed(), outputs=[protocol.RequestedOutput("out", binary, classes=2)])
    body, headers = protocol.encode_response("m", "1", request, outputs(), SIGNATURE)
    if binary:
        length = int(headers["inference-header-content-length"])
        entry = json.loads(body[:length])["outputs"][0]
        values = protocol.decode_binary(memoryview(body[length:]), "BYTES", (2, 3, 2), "out").tolist()
    else:
        entry = json.loads(body)["outputs"][0]
        values = np.array(entry["data"]).reshape(2, 3, 2).tolist()
    assert entry["datatype"] == "BYTES" and entry["shape"] == [2, 3, 2]
    as_text = [[[v.decode() if isinstance(v, bytes) else v for v in row] for row in seq] for seq in values]
    best = outputs()["out"][0, 0]  # 0, 1/7, 2/7, 3/7: indices 3 then 2
    assert as_text[0][0] == [f"{best[3]:f}:3", f"{best[2]:f}:2"]


def test_classification_beyond_a_fixed_class_count_is_refused_at_decode() -> None:
    with pytest.raises(BadRequest, match="output 'out' has 4 classes; classification asked for 5"):
        decode(json_body(feed(), outputs=[{"name": "out", "parameters": {"classification": 5}}]))


def test_fp16_inputs_decode_as_float16_from_json_and_binary() -> None:
    signature = Signature(inputs=(TensorSignature("x", "FP16", ("batch", 3)),),
                          outputs=(TensorSignature("y", "FP16", ("batch",)),), max_batch_size=4)
    x = np.array([[0.5, -1.25, 3.0], [65504.0, 0.0, -2.0]], np.float16)
    from_json = protocol.decode_request(json_body({"x": x}), None, signature).inputs["x"]
    body, headers = protocol.encode_binary_request({"x": x})
    from_binary = protocol.decode_request(body, headers[protocol.HEADER_LENGTH], signature).inputs["x"]
    for decoded in (from_json, from_binary):
        assert decoded.dtype == np.float16
        np.testing.assert_array_equal(decoded, x)
    with pytest.raises(BadRequest, match="'x': 24 binary bytes, but shape \\[2, 3\\] of FP16 needs 12"):
        raw = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP16",
                                      "parameters": {"binary_data_size": 24}}]}).encode()
        protocol.decode_request(raw + x.astype(np.float32).tobytes(), str(len(raw)), signature)


@pytest.mark.parametrize(("request_json", "message"), [
    ({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [0] * 6}], "parameters":
      {"binary_data_output": "yes"}}, "request parameter 'binary_data_output' must be true or false"),
    ({"inputs": [{"shape": [2], "datatype": "INT64", "data": [1, 2]}]}, r"inputs\[0\] needs a string 'name'"),
    ({"inputs": [{"name": "ids", "shape": "2x3", "datatype": "INT64", "data": [0] * 6}]},
     "input 'ids' needs a 'shape' list of non-negative integers, got '2x3'"),
    ({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [0] * 6,
                  "parameters": {"binary_data_size": -1}}]}, "input 'ids': binary_data_size must be a non-negative"),
    ({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [0] * 6}], "outputs": {"name": "out"}},
     "request 'outputs' must be a list"),
    ({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [0] * 6}], "outputs": [{"name": 3}]},
     r"outputs\[0\] must be an object with a string 'name'"),
    ({"inputs": [{"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [0] * 6}],
      "outputs": [{"name": "out", "parameters": {"binary_data": 1}}]},
     "output 'out': binary_data must be true or false"),
])
def test_schema_errors_name_the_field_without_a_pydantic_dump(request_json: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as refused:
        decode(json.dumps(request_json).encode())
    text = str(refused.value)
    assert "pydantic" not in text and "validation error" not in text and "\n" not in text


def test_every_schema_problem_is_reported_at_once() -> None:
    body = {"id": 7, "inputs": [{"name": "ids", "shape": [-1], "datatype": "FLOAT", "data": [1]}],
            "parameters": {"timeout": -5}}
    with pytest.raises(BadRequest) as refused:
        decode(json.dumps(body).encode())
    text = str(refused.value)
    for problem in ("request 'id' must be a string, got int", "input 'ids': unknown datatype 'FLOAT'; known: BOOL",
                    "input 'ids' needs a 'shape' list of non-negative integers, got [-1]",
                    "request parameter 'timeout' must be a non-negative integer number of microseconds"):
        assert problem in text
