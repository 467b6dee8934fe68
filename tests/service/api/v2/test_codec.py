"""The v2 codec against Triton's own client: the client's request bodies parse, and it reads our responses."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import np_to_triton_dtype

from service.api.v2.codec import (
    InferRequest,
    RequestedOutput,
    encode_infer_response,
    error_body,
    parse_header_length,
    parse_infer_request,
)
from service.errors import MalformedRequest, PayloadTooLarge
from service.tensors import NUMPY_DTYPES, Tensor, tensor
from tests.service.api.v2.malformed import MALFORMED, MESSAGES

LIMIT = 50_000_000
NUMERIC = sorted(NUMPY_DTYPES)


def client_input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
    sent = triton.InferInput(name, list(array.shape), datatype)
    sent.set_data_from_numpy(array, binary_data=binary)
    return sent


def parse(
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict | None = None,
    max_elements: int = LIMIT,
) -> InferRequest:
    body, length = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )
    return parse_infer_request(body, length, max_elements=max_elements)


def read_back(body: bytes, header_length: int | None) -> triton.InferResult:
    return triton.InferenceServerClient.parse_response_body(
        body, verbose=False, header_length=header_length, content_encoding=None
    )


def jpeg_like(rng: np.random.Generator, size: int) -> bytes:
    """Bytes that start as a JPEG does and are not UTF-8."""
    return b"\xff\xd8\xff\xe0" + rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def extremes(datatype: str) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "b":
        return np.array([[True, False, True]], dtype)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.array([[info.min, info.max, info.tiny], [0.1, -2.5, 0.0]], dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [1, 2, 3]], dtype)


def test_binary_and_json_inputs_from_the_client_parse_to_the_same_arrays():
    rng = np.random.default_rng(3)
    jpegs = np.array([jpeg_like(rng, 3_000_000), b"", jpeg_like(rng, 1000)], dtype=object)
    images = rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    scores = rng.standard_normal((2, 5)).astype(np.float32)
    counts = np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], dtype=np.int64)
    request = parse(
        [
            client_input("jpegs", jpegs, binary=True),
            client_input("images", images, binary=True),
            client_input("scores", scores, binary=False),
            client_input("counts", counts, binary=False),
        ]
    )
    assert [(t.name, t.datatype, t.shape, t.binary) for t in request.inputs] == [
        ("jpegs", "BYTES", (3,), True),
        ("images", "UINT8", (2, 64, 48, 3), True),
        ("scores", "FP32", (2, 5), False),
        ("counts", "INT64", (4,), False),
    ]
    got = {t.name: t.data for t in request.inputs}
    assert got["jpegs"].dtype == object
    assert list(got["jpegs"]) == list(jpegs)
    for name, sent in [("images", images), ("scores", scores), ("counts", counts)]:
        assert got[name].dtype == sent.dtype
        np.testing.assert_array_equal(got[name], sent)


def test_binary_numeric_inputs_are_read_only_views_of_the_body():
    images = np.random.default_rng(4).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    body, length = triton.InferenceServerClient.generate_request_body([client_input("images", images, binary=True)])
    (parsed,) = parse_infer_request(body, length, max_elements=LIMIT).inputs
    assert np.shares_memory(parsed.data, np.frombuffer(body, np.uint8))
    assert not parsed.data.flags.writeable
    np.testing.assert_array_equal(parsed.data, images)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_from_the_client_parses_exactly(datatype, binary):
    sent = extremes(datatype)
    (parsed,) = parse([client_input("x", sent, binary)]).inputs
    assert (parsed.datatype, parsed.binary) == (datatype, binary)
    assert parsed.data.dtype == NUMPY_DTYPES[datatype]
    np.testing.assert_array_equal(parsed.data, sent)


def test_bytes_sent_as_json_arrive_as_their_utf8_bytes():
    labels = np.array([["Schweißnaht", "ok"], ["", "潜在裂纹"]], dtype=object)
    (parsed,) = parse([client_input("labels", labels, binary=False)]).inputs
    assert (parsed.datatype, parsed.shape, parsed.binary) == ("BYTES", (2, 2), False)
    assert parsed.data.tolist() == [["Schweißnaht".encode(), b"ok"], [b"", "潜在裂纹".encode()]]


def test_empty_tensors_parse_with_their_shapes():
    request = parse(
        [
            client_input("jpegs", np.empty(0, dtype=object), binary=True),
            client_input("boxes", np.empty((0, 4), np.float32), binary=True),
            client_input("ids", np.empty(0, np.int64), binary=False),
        ]
    )
    assert [(t.shape, t.data.dtype) for t in request.inputs] == [
        ((0,), np.dtype(object)),
        ((0, 4), np.dtype(np.float32)),
        ((0,), np.dtype(np.int64)),
    ]


def test_requested_outputs_id_and_parameters_come_through():
    parameters = {"threshold": 0.35, "line": "L4", "strict": True, "max_boxes": 7}
    request = parse(
        [client_input("scores", np.zeros(2, np.float32), binary=False)],
        outputs=[triton.InferRequestedOutput("boxes", binary_data=True), triton.InferRequestedOutput("label", False)],
        request_id="req-17",
        parameters=parameters,
    )
    assert request.id == "req-17"
    assert request.outputs == [RequestedOutput("boxes", True), RequestedOutput("label", False)]
    assert request.parameters == parameters
    assert [type(v) for v in request.parameters.values()] == [float, str, bool, int]
    assert request.binary_data_output is False


def test_a_request_naming_no_outputs_asks_for_all_and_binary_data_output_is_separated():
    request = parse([client_input("scores", np.zeros(2, np.float32), binary=True)], parameters={"line": "L4"})
    assert request.outputs is None
    assert request.binary_data_output is True
    assert request.parameters == {"line": "L4"}
    assert request.id is None


def test_an_output_without_binary_data_and_an_empty_outputs_list():
    body = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}], "outputs": [{"name": "y"}]}'
    assert parse_infer_request(body, None, max_elements=LIMIT).outputs == [RequestedOutput("y", None)]
    # Triton answers every output to an empty list, as to none.
    body = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}], "outputs": []}'
    assert parse_infer_request(body, None, max_elements=LIMIT).outputs is None


def test_nested_json_data_is_read_row_major():
    body = json.dumps(
        {
            "inputs": [
                {"name": "nested", "datatype": "INT32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]},
                {"name": "flat", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
                {"name": "cube", "datatype": "FP64", "shape": [2, 1, 2], "data": [[[1, 2.5]], [[3, 4]]]},
            ]
        }
    ).encode()
    nested, flat, cube = parse_infer_request(body, None, max_elements=LIMIT).inputs
    np.testing.assert_array_equal(nested.data, np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    np.testing.assert_array_equal(flat.data, nested.data)
    np.testing.assert_array_equal(cube.data, np.array([[[1, 2.5]], [[3, 4]]]))


def test_bytes_elements_are_split_at_their_length_prefixes_across_inputs():
    rng = np.random.default_rng(5)
    first = np.array([[jpeg_like(rng, 10), b"\x00\x00\x00\x00"], [b"", jpeg_like(rng, 70_000)]], dtype=object)
    second = np.array([b"\xff" * 3], dtype=object)
    request = parse([client_input("a", first, binary=True), client_input("b", second, binary=True)])
    assert request.inputs[0].data.tolist() == first.tolist()
    assert request.inputs[1].data.tolist() == second.tolist()


@pytest.mark.parametrize(("description", "body", "header_length"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_is_refused_naming_the_problem(description, body, header_length):
    with pytest.raises(MalformedRequest) as refused:
        parse_infer_request(body, header_length, max_elements=LIMIT)
    assert refused.value.status == 400
    assert MESSAGES[description] in refused.value.message


def test_the_malformed_cases_are_many_and_each_says_what_to_expect():
    assert len(MALFORMED) >= 30
    assert len({description for description, _, _ in MALFORMED}) == len(MALFORMED)
    assert set(MESSAGES) == {description for description, _, _ in MALFORMED}


@pytest.mark.parametrize(
    "tensor_json",
    [
        {"datatype": "FP32", "shape": [2**40, 2**40], "parameters": {"binary_data_size": 0}},
        {"datatype": "UINT8", "shape": [2**40, 2**40], "data": []},
        {"datatype": "BYTES", "shape": [2**40, 2**40], "parameters": {"binary_data_size": 0}},
        {"datatype": "INT64", "shape": [2**40, 2**40, 0], "data": []},
        {"datatype": "FP64", "shape": [10**200], "data": [1.0]},
    ],
    ids=["binary", "json", "bytes", "empty but vast", "hundreds of digits"],
)
def test_a_huge_shape_is_refused_as_too_large_at_once(tensor_json):
    header = json.dumps({"inputs": [{"name": "images", **tensor_json}]}).encode()
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge) as refused:
        parse_infer_request(header, len(header), max_elements=1_000_000)
    assert time.perf_counter() - started < 0.5
    assert refused.value.status == 413
    assert "input 'images': shape [" in refused.value.message
    assert "over the limit of 1000000 elements" in refused.value.message


def test_the_element_limit_counts_the_inputs_together():
    inputs = [client_input(name, np.zeros(600, np.float32), binary=True) for name in ("a", "b")]
    with pytest.raises(PayloadTooLarge, match="the inputs hold 1200 elements together, over the limit of 1000"):
        parse(inputs, max_elements=1000)
    assert len(parse(inputs, max_elements=1200).inputs) == 2


def test_the_header_length_value_is_a_plain_non_negative_integer():
    assert parse_header_length(None) is None
    assert parse_header_length("123") == 123
    assert parse_header_length(" 0 ") == 0
    for text in ["-1", "1.5", "abc", "", "0x10", "+5", "٣", "9" * 30]:
        with pytest.raises(MalformedRequest, match="Inference-Header-Content-Length must be a non-negative integer"):
            parse_header_length(text)


def test_mixed_binary_and_json_outputs_read_back_with_the_client():
    rng = np.random.default_rng(6)
    crops = np.array([jpeg_like(rng, 5000), b"", b"\x80\xfe"], dtype=object)
    labels = np.array(["Schweißnaht".encode(), b"ok"], dtype=object)
    boxes = rng.standard_normal((3, 4)).astype(np.float32)
    scores = rng.random((2, 3)).astype(np.float32)
    mask = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    counts = np.array([[-(2**62), 3]], dtype=np.int64)
    outputs = [
        tensor("crops", "BYTES", crops),
        tensor("labels", "BYTES", labels),
        tensor("boxes", "FP32", boxes),
        tensor("scores", "FP32", scores),
        tensor("mask", "UINT8", mask),
        tensor("counts", "INT64", counts),
    ]
    body, length = encode_infer_response(
        "welds", "3", "req-9", outputs, lambda name: name in {"crops", "boxes", "mask"}
    )
    result = read_back(body, length)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("welds", "3", "req-9")
    assert [o["name"] for o in response["outputs"]] == ["crops", "labels", "boxes", "scores", "mask", "counts"]
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in response["outputs"] if "parameters" in o}
    assert sizes == {"crops": 4 * 3 + 5004 + 0 + 2, "boxes": boxes.nbytes, "mask": mask.nbytes}
    assert length + sum(sizes.values()) == len(body)
    assert result.get_output("scores")["data"] == scores.ravel().tolist()
    assert result.get_output("labels") == {
        "name": "labels",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["Schweißnaht", "ok"],
    }
    assert result.as_numpy("crops").tolist() == crops.tolist()
    assert result.as_numpy("labels").tolist() == ["Schweißnaht", "ok"]
    for name, sent in [("boxes", boxes), ("scores", scores), ("mask", mask), ("counts", counts)]:
        got = result.as_numpy(name)
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got, sent)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_reads_back_exactly(datatype, binary):
    sent = extremes(datatype)
    body, length = encode_infer_response("m", "1", None, [tensor("y", datatype, sent)], lambda _: binary)
    assert (length is not None) == binary
    got = read_back(body, length).as_numpy("y")
    assert got.dtype == sent.dtype
    np.testing.assert_array_equal(got, sent)


def test_an_all_json_response_has_no_header_length_and_no_id_unless_asked():
    body, length = encode_infer_response(
        "m", "1", None, [tensor("y", "INT32", np.arange(4, dtype=np.int32))], lambda _: False
    )
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [4], "data": [0, 1, 2, 3]}],
    }
    np.testing.assert_array_equal(read_back(body, None).as_numpy("y"), np.arange(4))
    body, _ = encode_infer_response("m", "1", "", [], lambda _: False)
    assert json.loads(body)["id"] == ""


def test_the_response_json_is_compact():
    outputs = [tensor("y", "FP32", np.array([0.5, 1.0], np.float32)), tensor("b", "BYTES", np.array([b"a b"], object))]
    body, length = encode_infer_response("m", "1", "r", outputs, lambda name: name == "y")
    header = body[:length]
    assert header == json.dumps(json.loads(header), separators=(",", ":")).encode()
    assert b'"data":["a b"]' in header


def test_empty_outputs_read_back_with_their_shapes():
    outputs = [tensor("boxes", "FP32", np.empty((0, 4), np.float32)), tensor("crops", "BYTES", np.empty(0, object))]
    for binary in (True, False):
        body, length = encode_infer_response("m", "1", None, outputs, lambda _, b=binary: b)
        result = read_back(body, length)
        assert result.as_numpy("boxes").shape == (0, 4)
        assert result.as_numpy("crops").shape == (0,)


def test_non_contiguous_and_big_endian_outputs_go_little_endian_row_major():
    data = np.arange(12, dtype=">i4").reshape(3, 4).T
    for binary in (True, False):
        body, length = encode_infer_response("m", "1", None, [tensor("y", "INT32", data)], lambda _, b=binary: b)
        np.testing.assert_array_equal(read_back(body, length).as_numpy("y"), data)


def test_bytes_that_are_not_utf8_cannot_go_as_json_but_go_binary():
    crops = [tensor("crops", "BYTES", np.array([b"ok", b"\xff\xd8"], dtype=object))]
    with pytest.raises(ValueError, match="output 'crops' has an element that is not UTF-8"):
        encode_infer_response("m", "1", None, crops, lambda _: False)
    body, length = encode_infer_response("m", "1", None, crops, lambda _: True)
    assert read_back(body, length).as_numpy("crops").tolist() == [b"ok", b"\xff\xd8"]


def test_nan_cannot_go_as_json_but_goes_binary():
    scores = [tensor("scores", "FP32", np.array([0.5, np.nan, np.inf], np.float32))]
    with pytest.raises(ValueError, match="output 'scores' holds NaN or infinity"):
        encode_infer_response("m", "1", None, scores, lambda _: False)
    body, length = encode_infer_response("m", "1", None, scores, lambda _: True)
    np.testing.assert_array_equal(read_back(body, length).as_numpy("scores"), scores[0].data)


def test_an_output_whose_array_does_not_fit_its_datatype_is_refused():
    with pytest.raises(ValueError, match="FP32 needs dtype float32, got float64"):
        encode_infer_response("m", "1", None, [Tensor("y", "FP32", np.zeros(2))], lambda _: True)


def test_error_body_is_the_protocols_error_object():
    assert error_body('input "x": bad') == b'{"error":"input \\"x\\": bad"}'
    assert json.loads(error_body("shape [2] holds 2 elements, data has 3")) == {
        "error": "shape [2] holds 2 elements, data has 3"
    }


def test_tensor_checks_that_the_array_fits_its_datatype():
    assert tensor("y", "UINT8", np.zeros((2, 3), np.uint8)).shape == (2, 3)
    assert tensor("b", "BYTES", np.array([b"a"], dtype=object)).datatype == "BYTES"
    for datatype, data, message in [
        ("FP32", np.zeros(2, np.float64), "FP32 needs dtype float32, got float64"),
        ("INT64", np.zeros(2, np.int32), "INT64 needs dtype int64, got int32"),
        ("BYTES", np.array(["text"], dtype=object), "BYTES elements must be bytes, found str"),
        ("BYTES", np.array([b"a"]), "BYTES data must be an object array"),
        ("BF16", np.zeros(2, np.float32), "unknown datatype 'BF16'"),
        ("FP32", [1.0], "must be a numpy array"),
    ]:
        with pytest.raises(ValueError, match=message):
            tensor("y", datatype, data)  # type: ignore[arg-type]
