"""Edges of the protocol codec, as pure functions (no server): signatures from manifests, body splitting,
messages, BYTES from JSON, datatype kinds and ranges, classification bounds, response encoding and decoding.

Written against the mutants `make mutation` found surviving in ``service/protocol/oip.py``; each test
fails fast, so a mutant is killed here before the slower served tests run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import BadRequest
from service.protocol import oip as protocol
from service.protocol.oip import DecodedRequest, RequestedOutput, Signature, TensorSignature

TEXT = Signature(inputs=(TensorSignature("text", "BYTES", ("batch",)),),
                 outputs=(TensorSignature("logits", "FP32", ("batch", 3)), TensorSignature("tag", "BYTES", ("batch",))),
                 max_batch_size=8)
SMALL = Signature(inputs=(TensorSignature("u", "UINT8", (2,)), TensorSignature("x", "FP32", (2,))),
                  outputs=(TensorSignature("y", "FP32", (2, "classes")),))


def request_json(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def tensor(name: str, datatype: str, shape: list[int], data: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def small_inputs(u: object = (1, 2), x: object = (0.5, 1.5)) -> tuple[dict, dict]:
    return tensor("u", "UINT8", [2], list(u)), tensor("x", "FP32", [2], list(x))


def decode(body: bytes, signature: Signature = SMALL, header: str | None = None,
           allow_nonfinite: bool = False) -> DecodedRequest:
    return protocol.decode_request(body, header, signature, allow_nonfinite)


def refused(body: bytes, signature: Signature = SMALL, header: str | None = None) -> str:
    with pytest.raises(BadRequest) as info:
        decode(body, signature, header)
    return str(info.value)


# -- signatures -----------------------------------------------------------------------------------

def test_tensor_signature_from_a_manifest_entry_and_its_metadata() -> None:
    spec = TensorSignature.from_manifest({"name": "pixels", "dtype": "float16", "shape": ["batch", 3, 224]})
    assert spec == TensorSignature("pixels", "FP16", ("batch", 3, 224))
    assert spec.metadata() == {"name": "pixels", "datatype": "FP16", "shape": [-1, 3, 224]}


def manifest(inputs: list[list], outputs: list[list]) -> dict:
    def entries(shapes: list[list], prefix: str) -> list[dict]:
        return [{"name": f"{prefix}{i}", "dtype": "float32", "shape": s} for i, s in enumerate(shapes)]

    return {"inputs": entries(inputs, "in"), "outputs": entries(outputs, "out")}


@pytest.mark.parametrize(("inputs", "outputs", "max_batch"), [
    ([["batch", 4]], [["batch"]], 16),  # every tensor leads with "batch": batched
    ([["batch", 4], ["batch"]], [["batch", 2], ["batch"]], 16),
    ([["batch", 4]], [[4]], 0),  # an output without the batch dim
    ([["batch", 4], [4]], [["batch"]], 0),  # an input without it
    ([[]], [["batch"]], 0),  # a scalar input
    ([["seq", 4]], [["seq"]], 0),  # another dynamic name is not a batch
])
def test_signature_is_batched_only_when_every_tensor_leads_with_batch(inputs: list, outputs: list,
                                                                      max_batch: int) -> None:
    signature = Signature.from_manifest(manifest(inputs, outputs), max_batch_size=16)
    assert signature.max_batch_size == max_batch
    assert signature.batched is (max_batch > 0)
    assert [t.name for t in signature.inputs] == [f"in{i}" for i in range(len(inputs))]
    assert [t.name for t in signature.outputs] == [f"out{i}" for i in range(len(outputs))]
    assert signature.inputs[0].shape == tuple(inputs[0])


def test_signature_default_max_batch_size_is_0_and_lookups_by_name() -> None:
    signature = Signature.from_manifest(manifest([["batch"]], [["batch"]]))
    assert signature.max_batch_size == 0 and not signature.batched
    assert SMALL.input("x") == TensorSignature("x", "FP32", (2,))
    assert SMALL.input("y") is None and SMALL.output("x") is None
    assert SMALL.output("y").name == "y"


# -- request properties ---------------------------------------------------------------------------

@pytest.mark.parametrize(("timeout_us", "seconds"), [(None, None), (0, None), (1, 1e-6), (2_500_000, 2.5)])
def test_timeout_in_seconds(timeout_us: int | None, seconds: float | None) -> None:
    assert DecodedRequest({"x": np.zeros(1)}, timeout_us=timeout_us).timeout_s == seconds


def test_batch_size_is_dim_0_of_the_first_input_or_1_for_a_scalar() -> None:
    assert DecodedRequest({"a": np.zeros((5, 2)), "b": np.zeros((7,))}).batch_size == 5
    assert DecodedRequest({"a": np.float32(1.0) * np.ones(())}).batch_size == 1


def test_request_level_fields_are_carried_over() -> None:
    request = decode(request_json(*small_inputs(), id="r-7", parameters={"timeout": 30, "binary_data_output": True}))
    assert (request.id, request.timeout_us, request.binary_output, request.outputs) == ("r-7", 30, True, None)
    plain = decode(request_json(*small_inputs()))
    assert (plain.id, plain.timeout_us, plain.binary_output) == (None, None, False)


# -- splitting and parsing the body ----------------------------------------------------------------

def test_split_body() -> None:
    header, binary = protocol.split_body(b"{}abc", None)
    assert (header, bytes(binary)) == (b"{}abc", b"")
    header, binary = protocol.split_body(b"{}abc", "2")
    assert (header, bytes(binary)) == (b"{}", b"abc")
    header, binary = protocol.split_body(b"{}abc", "5")  # all header, no binary bytes
    assert (header, bytes(binary)) == (b"{}abc", b"")


@pytest.mark.parametrize(("length", "message"), [
    ("2.5", "Inference-Header-Content-Length '2.5' is not an integer"),
    ("-1", "Inference-Header-Content-Length -1 does not fit a body of 5 bytes"),
    ("6", "Inference-Header-Content-Length 6 does not fit a body of 5 bytes"),
    ("0", "Inference-Header-Content-Length 0 (raw binary requests) is not supported; send a JSON header with "
          "binary_data_size per input"),
])
def test_bad_header_lengths(length: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        protocol.split_body(b"{}abc", length)
    assert str(info.value) == message


@pytest.mark.parametrize(("header", "message"), [
    (b"\xff\xfe", "request body is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "request JSON is nested too deeply"),
    (b'"text"', "request JSON must be an object, got str"),
    (b"[1]", "request JSON must be an object, got list"),
])
def test_parse_json_header_refusals(header: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        protocol.parse_json_header(header)
    assert str(info.value).startswith(message)


# -- messages for schema problems -------------------------------------------------------------------

@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "parameters": 3},
     "request 'parameters' must be an object"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
      "parameters": {"binary_data_output": "yes"}}, "request parameter 'binary_data_output' must be true or false"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "parameters": {"timeout": -5}},
     "request parameter 'timeout' must be a non-negative integer number of microseconds "
     "up to 2^64 - 1 (0: no limit), got -5"),
    ({"inputs": [{"name": 5, "datatype": "FP32", "shape": [2], "data": [1, 2]}]}, "inputs[0] needs a string 'name'"),
    ({"inputs": [{"datatype": "FP32", "shape": [2], "data": [1, 2]}]}, "inputs[0] needs a string 'name'"),
    ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [2], "data": [1, 2]}]},
     "input 'x': unknown datatype 'FP8'; known: BOOL, UINT8"),
    ({"inputs": [{"datatype": "FP8", "shape": [2], "data": [1, 2]}]}, "inputs[0]: unknown datatype 'FP8'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": "2", "data": [1, 2]}]},
     "input 'x' needs a 'shape' list of non-negative integers, got '2'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": -1}}]},
     "input 'x': binary_data_size must be a non-negative integer"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "outputs": {"name": "y"}},
     "request 'outputs' must be a list"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "outputs": [{"name": 1}]},
     "outputs[0] must be an object with a string 'name'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
      "outputs": [{"name": "y", "parameters": 3}]}, "output 'y' 'parameters' must be an object"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
      "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "output 'y': binary_data must be true or false"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
      "outputs": [{"name": "y", "parameters": {"classification": 0}}]},
     "output 'y': classification must be a positive integer (the number of classes to return), got 0"),
])
def test_each_schema_problem_has_its_own_words(body: dict, message: str) -> None:
    text = refused(json.dumps(body).encode())
    assert text.startswith(message) or f"; {message}" in text
    assert "pydantic" not in text and "validation error" not in text


def test_problems_are_joined_once_each_with_semicolons() -> None:
    body = {"id": 3, "inputs": [{"name": 1, "datatype": "FP32", "shape": [2], "data": [1, 2]},
                                {"name": 2, "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    assert refused(json.dumps(body).encode()) == ("request 'id' must be a string, got int; "
                                                  "inputs[0] needs a string 'name'; inputs[1] needs a string 'name'")


def test_a_field_outside_the_table_gets_the_generic_message() -> None:
    class Error(Exception):
        def errors(self) -> list[dict]:
            return [{"loc": ("extra", 0, "x"), "type": "int_type", "msg": "Input should be an integer"}]

    assert str(protocol.bad_request(Error(), {"extra": [{"x": "a"}]})) == (
        "request extra.0.x: Input should be an integer")


def test_lookup_follows_dicts_by_key_and_lists_by_index_only() -> None:
    raw = {"inputs": [{"name": "x"}], "n": 3}
    assert protocol._lookup(raw, ("inputs", 0, "name")) == "x"
    assert protocol._lookup(raw, ("inputs", "0")) is None  # a list is not indexed by a string
    assert protocol._lookup(raw, (0,)) is None  # nor a dict by an int
    assert protocol._lookup(raw, ("n", 0)) is None  # nor a number by anything
    assert protocol._lookup(raw, ("inputs", 5)) is None
    assert protocol._lookup(raw, ("missing",)) is None


@pytest.mark.parametrize(("loc", "named"), [
    (("inputs", 0, "shape"), "input 'x'"),
    (("inputs", 1, "shape"), "inputs[1]"),  # no string name
    (("outputs", 0), "output 'y'"),
    (("inputs",), "request"),
    (("inputs", "0"), "request"),
    (("id",), "request"),
])
def test_tensor_is_named_by_its_name_or_its_place(loc: tuple, named: str) -> None:
    raw = {"inputs": [{"name": "x"}, {"name": 7}], "outputs": [{"name": "y"}]}
    assert protocol._tensor(raw, loc) == named


# -- BYTES, kinds and ranges --------------------------------------------------------------------------

def test_json_bytes_are_utf8_encoded_strings() -> None:
    request = decode(request_json(tensor("text", "BYTES", [2], ["héllo", ""])), TEXT)
    text = request.inputs["text"]
    assert text.dtype == object and text.shape == (2,)
    assert list(text) == ["héllo".encode(), b""]


@pytest.mark.parametrize("data", [[1, 2], ["a", None], ["a", 3.5]])
def test_json_bytes_must_be_strings(data: list) -> None:
    assert refused(request_json(tensor("text", "BYTES", [2], data)), TEXT) == (
        "input 'text': BYTES data must be strings")


def test_json_bytes_that_are_not_unicode_are_a_400() -> None:
    """JSON may escape a lone surrogate, which no UTF-8 carries: refused, not a 500."""
    assert refused(request_json(tensor("text", "BYTES", [2], ["fine", "a\ud800"])), TEXT) == (
        "input 'text': BYTES data holds text that is not valid Unicode (a lone surrogate); send binary BYTES "
        "data for arbitrary bytes")


def test_nested_json_bytes_keep_their_shape() -> None:
    signature = Signature((TensorSignature("text", "BYTES", ("batch", 2)),), TEXT.outputs)
    request = decode(request_json(tensor("text", "BYTES", [1, 2], [["a", "b"]])), signature)
    assert request.inputs["text"].shape == (1, 2)
    assert request.inputs["text"][0, 1] == b"b"


def test_binary_bytes_element_count_must_match_the_shape() -> None:
    blob = protocol.tensor_bytes(np.array([b"ab", b"c", b"d"], dtype=object), "BYTES")
    with pytest.raises(BadRequest) as info:
        protocol.decode_binary(memoryview(blob), "BYTES", (2,), "text")
    assert str(info.value) == "input 'text': 3 BYTES elements, but shape [2] needs 2"


def test_an_empty_binary_bool_tensor_is_fine() -> None:
    assert protocol.decode_binary(memoryview(b""), "BOOL", (0,), "m").shape == (0,)


def test_a_scalar_json_value_is_one_element() -> None:
    assert protocol.decode_json_data(7, "INT32", (1,), "n").tolist() == [7]


@pytest.mark.parametrize(("u", "x", "message"), [
    ((1, 256), (0.5, 1.5), "input 'u': a value is outside the range of UINT8"),
    ((-1, 2), (0.5, 1.5), "input 'u': a value is outside the range of UINT8"),
    ((1, 2), (True, False), "input 'x': FP32 data holds booleans"),
    ((1.0, 2), (0.5, 1.5), "input 'u': UINT8 data holds non-integer numbers"),
])
def test_json_kinds_and_ranges(u: tuple, x: tuple, message: str) -> None:
    assert refused(request_json(*small_inputs(u, x))).startswith(message)


def test_the_full_range_of_an_int_type_is_accepted_and_ints_pass_as_floats() -> None:
    request = decode(request_json(*small_inputs((0, 255), (1, 2))))
    assert request.inputs["u"].tolist() == [0, 255] and request.inputs["u"].dtype == np.uint8
    assert request.inputs["x"].dtype == np.float32


def test_empty_tensors_skip_the_kind_check() -> None:
    signature = Signature((TensorSignature("u", "UINT8", (0,)),), SMALL.outputs)
    assert decode(request_json(tensor("u", "UINT8", [0], [])), signature).inputs["u"].shape == (0,)


# -- checking against the signature ---------------------------------------------------------------

def test_every_problem_is_listed_with_what_the_model_takes() -> None:
    body = request_json(tensor("u", "UINT8", [3], [1, 2, 3]), tensor("z", "FP32", [2], [1, 2]))
    assert refused(body) == ("unknown input 'z'; missing input 'x'; input 'u' dim 0 is 3, the model takes 2 "
                             "(the model takes: u UINT8 [2], x FP32 [2])")


def test_a_rank_problem_stops_that_tensors_other_checks() -> None:
    body = request_json(tensor("u", "UINT8", [2, 1], [[1], [2]]), small_inputs()[1])
    assert refused(body).startswith("input 'u' has shape [2, 1], the model takes rank 1 [2] (the model takes")


def test_integer_inputs_are_not_checked_for_nan() -> None:
    request = decode(request_json(*small_inputs()), allow_nonfinite=False)
    assert set(request.inputs) == {"u", "x"}


def test_nonfinite_floats_pass_when_allowed() -> None:
    body, headers = protocol.encode_binary_request({"u": np.array([1, 2], np.uint8),
                                                    "x": np.array([np.nan, np.inf], np.float32)})
    header = headers[protocol.HEADER_LENGTH]
    assert np.isnan(decode(body, header=header, allow_nonfinite=True).inputs["x"][0])
    assert refused(body, header=header).startswith("input 'x' holds NaN or Inf")


def test_batch_limit_applies_only_to_batched_models() -> None:
    unbatched = Signature(TEXT.inputs, TEXT.outputs, max_batch_size=0)
    assert decode(request_json(tensor("text", "BYTES", [9], ["a"] * 9)), unbatched).batch_size == 9
    assert refused(request_json(tensor("text", "BYTES", [9], ["a"] * 9)), TEXT).startswith(
        "batch size 9 is over the model's max_batch_size 8")
    assert decode(request_json(tensor("text", "BYTES", [8], ["a"] * 8)), TEXT).batch_size == 8


# -- requested outputs -------------------------------------------------------------------------------

def test_requested_outputs_keep_order_binary_and_classes() -> None:
    outputs = [{"name": "tag", "parameters": {"binary_data": True}}, {"name": "logits", "parameters":
                                                                      {"classification": 3}}, {"name": "logits"}]
    request = decode(request_json(tensor("text", "BYTES", [1], ["a"]), outputs=outputs[:2]), TEXT)
    assert request.outputs == [RequestedOutput("tag", True, None), RequestedOutput("logits", None, 3)]


def test_unknown_output_lists_the_known_ones() -> None:
    body = request_json(tensor("text", "BYTES", [1], ["a"]), outputs=[{"name": "probs"}])
    assert refused(body, TEXT) == "unknown output 'probs'; the model has: logits, tag"


def test_classification_needs_a_numeric_output_with_enough_classes() -> None:
    text = tensor("text", "BYTES", [1], ["a"])
    assert refused(request_json(text, outputs=[{"name": "tag", "parameters": {"classification": 1}}]), TEXT) == (
        "output 'tag' is BYTES; classification needs a numeric output")
    assert refused(request_json(text, outputs=[{"name": "logits", "parameters": {"classification": 4}}]), TEXT) == (
        "output 'logits' has 3 classes; classification asked for 4")
    dynamic = decode(request_json(*small_inputs(), outputs=[{"name": "y", "parameters": {"classification": 50}}]))
    assert dynamic.outputs == [RequestedOutput("y", None, 50)]  # a dynamic class count is checked at encode time


# -- classification -----------------------------------------------------------------------------------

def test_classify_bounds() -> None:
    with pytest.raises(BadRequest) as info:
        protocol.classify("p", np.float32(1.0) * np.ones(()), 1)
    assert str(info.value) == "output 'p' has no class dimension; classification asked for 1"
    with pytest.raises(BadRequest) as info:
        protocol.classify("p", np.zeros((4, 2, 3)), 4)
    assert str(info.value) == "output 'p' has 3 classes; classification asked for 4"
    every = protocol.classify("p", np.array([[0.5, 2.0, 1.0]]), 3)  # as many as there are
    assert every.tolist() == [[b"2.000000:1", b"1.000000:2", b"0.500000:0"]]


def test_classify_ranks_along_the_last_axis_of_each_row() -> None:
    values = np.array([[[3.0, 1.0], [1.0, 3.0]], [[2.0, 2.0], [0.0, -1.0]]], dtype=np.float16)
    top = protocol.classify("p", values, 1)
    assert top.shape == (2, 2, 1)
    assert top[..., 0].tolist() == [[b"3.000000:0", b"3.000000:1"], [b"2.000000:0", b"0.000000:0"]]


def test_classify_ties_keep_the_lower_index_first() -> None:
    values = np.zeros((1, 40))
    values[0, [31, 7, 19]] = 1.0
    top = protocol.classify("p", values, 5)
    assert [int(s.split(b":")[1]) for s in top[0]] == [7, 19, 31, 0, 1]


# -- responses ----------------------------------------------------------------------------------------

def test_response_fields_and_content_type() -> None:
    request = DecodedRequest({"text": np.array([b"a"], dtype=object)}, id="q1")
    outputs = {"logits": np.array([[1.0, 2.0, 3.0]]), "tag": np.array([b"t"], dtype=object)}
    body, headers = protocol.encode_response("m", None, request, outputs, TEXT)
    response = json.loads(body)
    assert headers == {"content-type": "application/json"}
    assert list(response) == ["model_name", "id", "outputs"]  # no model_version when there is none
    assert response["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
    assert response["outputs"][1] == {"name": "tag", "datatype": "BYTES", "shape": [1], "data": ["t"]}
    body, _ = protocol.encode_response("m", "2", DecodedRequest(request.inputs), outputs, TEXT)
    assert json.loads(body)["model_version"] == "2" and "id" not in json.loads(body)


def test_output_cast_to_the_signature_dtype_or_described_by_its_own() -> None:
    entry, blob = protocol.encode_output("y", np.array([1.5, 2.5], np.float64), TensorSignature("y", "FP16", (2,)),
                                         binary=True)
    assert entry == {"name": "y", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}}
    assert blob == np.array([1.5, 2.5], "<f2").tobytes()
    entry, blob = protocol.encode_output("k", np.array([3, 4], np.int16), None, binary=False)
    assert (entry, blob) == ({"name": "k", "datatype": "INT16", "shape": [2], "data": [3, 4]}, None)


def test_tensor_bytes_and_json_values() -> None:
    assert protocol.tensor_bytes(np.array([], dtype=object), "BYTES") == b""
    assert protocol.tensor_bytes(np.array([b"ab"], dtype=object), "BYTES") == b"\x02\x00\x00\x00ab"
    assert protocol.tensor_bytes(np.array([1, 256], np.int32), "INT32") == b"\x01\x00\x00\x00\x00\x01\x00\x00"
    assert protocol.tensor_bytes(np.array([1.0]), "FP32") == np.array([1.0], "<f4").tobytes()
    assert protocol.json_values(np.array([b"\xff", "x", 3], dtype=object), "BYTES") == ["\ufffd", "x", "3"]
    bf16 = protocol.numpy_dtype_of("BF16")
    assert protocol.json_values(np.array([[1.5], [-2.0]], dtype=bf16), "BF16") == [1.5, -2.0]


def test_binary_request_helper() -> None:
    body, headers = protocol.encode_binary_request({"x": np.array([1.0, 2.0], np.float32)}, outputs=["y"],
                                                   binary_output=False)
    length = int(headers[protocol.HEADER_LENGTH])
    header = json.loads(body[:length])
    assert header == {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                  "parameters": {"binary_data_size": 8}}],
                      "parameters": {"binary_data_output": False}, "outputs": [{"name": "y"}]}
    assert body[length:] == np.array([1.0, 2.0], "<f4").tobytes()
    body, _ = protocol.encode_binary_request({"x": np.array([1.0], np.float32)})
    assert "outputs" not in json.loads(body[:int(_[protocol.HEADER_LENGTH])])


def test_decode_binary_response_reads_json_and_consecutive_binary_outputs() -> None:
    request = DecodedRequest({"text": np.array([b"a"], dtype=object)},
                             outputs=[RequestedOutput("logits", False), RequestedOutput("logits", True),
                                      RequestedOutput("tag", True)])
    outputs = {"logits": np.array([[1.0, 2.0, 3.0]]), "tag": np.array([b"xy"], dtype=object)}
    body, headers = protocol.encode_response("m", None, request, outputs, TEXT)
    decoded = protocol.decode_binary_response(body, headers["inference-header-content-length"])
    assert decoded["tag"].tolist() == [b"xy"]
    np.testing.assert_array_equal(decoded["logits"], outputs["logits"].astype(np.float32))
    assert decoded["logits"].dtype == np.float32

    json_only = DecodedRequest(request.inputs, outputs=[RequestedOutput("logits"), RequestedOutput("tag")])
    body, _ = protocol.encode_response("m", None, json_only, outputs, TEXT)
    decoded = protocol.decode_binary_response(body, None)
    assert decoded["logits"].dtype == np.float32 and decoded["logits"].shape == (1, 3)
    assert decoded["tag"].tolist() == ["xy"]  # JSON BYTES come back as text


# -- edges found by the second mutation run --------------------------------------------------------

def test_classify_counts_classes_in_the_last_dim_not_dim_1() -> None:
    top = protocol.classify("p", np.array([[[0.1, 0.7, 0.2]]]), 2)  # shape (1, 1, 3): 3 classes
    assert top.tolist() == [[[b"0.700000:1", b"0.200000:2"]]]


def test_a_dynamic_class_count_is_checked_when_encoding_and_names_the_output() -> None:
    request = DecodedRequest({"u": np.zeros(2, np.uint8)}, outputs=[RequestedOutput("y", None, 5)])
    with pytest.raises(BadRequest) as info:
        protocol.encode_response("m", None, request, {"y": np.zeros((2, 3), np.float32)}, SMALL)
    assert str(info.value) == "output 'y' has 3 classes; classification asked for 5"


def test_classification_of_a_scalar_output_is_left_to_encoding_and_zero_classes_are_too_few() -> None:
    signature = Signature(SMALL.inputs, (TensorSignature("s", "FP32", ()), TensorSignature("e", "FP32", (2, 0))))
    request = decode(request_json(*small_inputs(), outputs=[{"name": "s", "parameters": {"classification": 1}}]),
                     signature)
    assert request.outputs == [RequestedOutput("s", None, 1)]
    assert refused(request_json(*small_inputs(), outputs=[{"name": "e", "parameters": {"classification": 1}}]),
                   signature) == "output 'e' has 0 classes; classification asked for 1"


def test_json_output_values_keep_their_python_types_and_the_signature_precision() -> None:
    ints = protocol.json_values(np.array([3, 4], np.int64), "INT64")
    assert ints == [3, 4] and all(type(v) is int for v in ints)
    assert protocol.json_values(np.array([0.1]), "FP64") == [0.1]  # not rounded through float32
    bf16 = protocol.json_values(np.array([1.5], dtype=protocol.numpy_dtype_of("BF16")), "BF16")
    assert bf16 == [1.5] and type(bf16[0]) is float
    entry, _ = protocol.encode_output("y", np.array([0.1]), TensorSignature("y", "FP32", (1,)), binary=False)
    assert entry["data"] == [float(np.float32(0.1))]  # cast to the model's FP32 before it is written
    entry, _ = protocol.encode_output("b", np.array([b"x"], dtype=object), TensorSignature("b", "BYTES", (1,)),
                                      binary=False)
    assert entry["data"] == ["x"]


def test_string_arrays_serialize_as_bytes() -> None:
    assert protocol.tensor_bytes(np.array(["ab", "c"]), "BYTES") == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


def test_binary_response_headers() -> None:
    request = DecodedRequest({"u": np.zeros(2, np.uint8)}, binary_output=True)
    body, headers = protocol.encode_response("m", None, request, {"y": np.ones((2, 3), np.float32)}, SMALL)
    length = int(headers["inference-header-content-length"])
    assert headers == {"content-type": "application/octet-stream", "inference-header-content-length": str(length)}
    assert len(body) == length + 24


def test_decode_binary_response_walks_every_binary_output_in_order() -> None:
    outputs = [TensorSignature(n, "FP32", (2,)) for n in ("a", "b", "c")]
    signature = Signature(SMALL.inputs, tuple(outputs))
    values = {n: np.array([i, i + 0.5], np.float32) for i, n in enumerate("abc")}
    body, headers = protocol.encode_response("m", None, DecodedRequest({}, binary_output=True), values, signature)
    decoded = protocol.decode_binary_response(body, headers["inference-header-content-length"])
    for name, value in values.items():
        np.testing.assert_array_equal(decoded[name], value)


def test_decode_binary_response_names_a_badly_sized_output() -> None:
    header = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [2],
                                      "parameters": {"binary_data_size": 4}}]}).encode()
    with pytest.raises(BadRequest, match="'logits': 4 binary bytes, but shape \\[2\\] of FP32 needs 8"):
        protocol.decode_binary_response(header + b"\x00" * 4, str(len(header)))


# -- edges found by the third mutation run ---------------------------------------------------------

def test_unknown_datatypes_either_way_are_named() -> None:
    with pytest.raises(BadRequest) as info:
        protocol.numpy_dtype_of("FP8")
    assert str(info.value) == ("unknown datatype 'FP8'; known: BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, "
                               "INT32, INT64, FP16, FP32, FP64, BF16, BYTES")
    with pytest.raises(BadRequest) as info:
        protocol.datatype_of_array(np.zeros(2, np.complex64))
    assert str(info.value) == "numpy dtype complex64 has no Open Inference Protocol datatype"


def test_nonfinite_inputs_are_refused_by_default() -> None:
    body = request_json(*small_inputs(x=(float("nan"), 1.0)))
    body = body.replace(b"NaN", b"1e999")  # JSON has no NaN; 1e999 reads as inf
    with pytest.raises(BadRequest, match="input 'x' holds NaN or Inf"):
        protocol.decode_request(body, None, SMALL)
    inputs = {"u": np.zeros(2, np.uint8), "x": np.array([np.inf, 0], np.float32)}
    with pytest.raises(BadRequest, match="input 'x' holds NaN or Inf"):
        protocol.check_inputs(inputs, SMALL)


def test_a_binary_size_past_the_end_says_how_many_bytes_are_left() -> None:
    header = request_json({"name": "u", "datatype": "UINT8", "shape": [2], "parameters": {"binary_data_size": 2}},
                          {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}})
    body = header + b"\x01\x02" + b"\x00" * 5  # 7 binary bytes: 2 for u, 5 of the 8 x needs
    with pytest.raises(BadRequest) as info:
        decode(body, header=str(len(header)))
    assert str(info.value) == "input 'x': binary_data_size 8 runs past the end of the body (5 binary bytes left)"


def test_bool_data_with_integers_past_int64_is_refused_as_integers() -> None:
    """numpy reads [2**63, 2**63 + 1] as uint64 (kind "u"): still integers, not "values that are not numbers"."""
    signature = Signature((TensorSignature("m", "BOOL", (2,)),), SMALL.outputs)
    assert refused(request_json(tensor("m", "BOOL", [2], [2**63, 2**63 + 1])), signature) == (
        "input 'm': BOOL data holds integers")
