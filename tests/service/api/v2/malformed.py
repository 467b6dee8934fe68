"""Malformed v2 inference request bodies, each refused with 400 (`MalformedRequest`).

`MALFORMED` holds (description, body, Inference-Header-Content-Length or None); `MESSAGES` says, for each
description, what the refusal's message must contain. The codec's tests and the server's use both.
"""

from __future__ import annotations

import json
import struct

FP32_INPUT = {"name": "scores", "datatype": "FP32", "shape": [2], "data": [0.5, 1.5]}


def _request(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _one_input(**changes: object) -> bytes:
    """A request of FP32_INPUT with `changes` to its fields (a value of ... drops the field)."""
    tensor = {**FP32_INPUT, **changes}
    return _request(inputs=[{k: v for k, v in tensor.items() if v is not ...}])


def _binary(data: bytes, *inputs: dict, extra: bytes = b"") -> tuple[bytes, int]:
    """A body whose JSON has `inputs`, followed by `data` and `extra`, and the JSON's length."""
    header = _request(inputs=list(inputs))
    return header + data + extra, len(header)


def _binary_input(name: str, datatype: str, shape: list[int], size: object) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def _elements(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


FOUR_FLOATS = struct.pack("<4f", 1, 2, 3, 4)

_CASES: list[tuple[str, bytes, int | None, str]] = [
    ("JSON cut short", b'{"inputs": [', None, "not valid"),
    ("empty body", b"", None, "not valid"),
    ("JSON not UTF-8", b'{"id": "\xff", "inputs": []}', None, "not UTF-8"),
    ("NaN token", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', None, "NaN"),
    (
        "Infinity token",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [Infinity]}]}',
        None,
        "Infinity",
    ),
    (
        "-Infinity token",
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [-Infinity]}]}',
        None,
        "-Infinity",
    ),
    ("JSON nested too deeply", b"[" * 100_000 + b"]" * 100_000, None, "too deeply"),
    ("duplicate JSON key", b'{"inputs": [], "inputs": []}', None, "'inputs' twice"),
    ("top level is a list", b"[]", None, "must be an object, got a list"),
    ("top level is a string", b'"inputs"', None, "must be an object, got a string"),
    ("unexpected top-level key", _request(inputs=[FP32_INPUT], model_name="m"), None, "unexpected keys ['model_name']"),
    ("no inputs", _request(id="1"), None, "no 'inputs'"),
    ("inputs not a list", _request(inputs=FP32_INPUT), None, "'inputs' must be a list, got an object"),
    ("input not an object", _request(inputs=[[1, 2]]), None, "inputs[0] must be an object, got a list"),
    ("id not a string", _request(id=7, inputs=[FP32_INPUT]), None, "'id' must be a string, got an integer"),
    ("input without name", _one_input(name=...), None, "inputs[0] has no 'name'"),
    ("input name not a string", _one_input(name=3), None, "'name' must be a non-empty string"),
    ("input name empty", _one_input(name=""), None, "'name' must be a non-empty string"),
    ("input without datatype", _one_input(datatype=...), None, "input 'scores' has no 'datatype'"),
    ("input without shape", _one_input(shape=...), None, "input 'scores' has no 'shape'"),
    ("unexpected input key", _one_input(contents=[1]), None, "input 'scores' has unexpected keys ['contents']"),
    ("unknown datatype", _one_input(datatype="FP8"), None, "datatype 'FP8' is not supported"),
    ("BF16 datatype", _one_input(datatype="BF16"), None, "datatype 'BF16' is not supported"),
    ("datatype not a string", _one_input(datatype=32), None, "'datatype' must be a string"),
    ("negative dimension", _one_input(shape=[-2]), None, "'shape' must be a list of non-negative integers, got [-2]"),
    ("fractional dimension", _one_input(shape=[2.0]), None, "'shape' must be a list of non-negative integers"),
    ("boolean dimension", _one_input(shape=[True, 2]), None, "'shape' must be a list of non-negative integers"),
    ("shape not a list", _one_input(shape=2), None, "'shape' must be a list of non-negative integers, got 2"),
    ("too many dimensions", _one_input(shape=[1] * 40, data=[1.0]), None, "40 dimensions"),
    ("data not a list", _one_input(shape=[], data=1.0), None, "'data' must be a list, got a fractional number"),
    ("more data than the shape", _one_input(data=[1.0, 2.0, 3.0]), None, "shape [2] holds 2 elements, data has 3"),
    ("less data than the shape", _one_input(shape=[2, 2]), None, "shape [2, 2] holds 4 elements, data has 2"),
    ("nested data ragged", _one_input(shape=[2, 2], data=[[1, 2], [3]]), None, "does not match shape [2, 2]"),
    ("nested data transposed", _one_input(shape=[2, 3], data=[[1, 2], [3, 4], [5, 6]]), None, "in dimension 0"),
    ("nested data deeper than shape", _one_input(data=[[1.0], [2.0]]), None, "must be numbers, found a list"),
    ("UINT8 over 255", _one_input(datatype="UINT8", data=[255, 256]), None, "256 is out of the range of UINT8"),
    ("UINT32 negative", _one_input(datatype="UINT32", data=[0, -1]), None, "-1 is out of the range of UINT32"),
    ("INT64 over 2**63-1", _one_input(datatype="INT64", data=[0, 2**63]), None, f"{2**63} is out of the range"),
    ("INT8 under -128", _one_input(datatype="INT8", data=[-129, 0]), None, "-129 is out of the range of INT8"),
    ("FP32 over its largest", _one_input(data=[1e39, 0.0]), None, "1e+39 is out of the range of FP32"),
    ("FP16 over its largest", _one_input(datatype="FP16", data=[70000, 0]), None, "70000 is out of the range of FP16"),
    ("FP64 integer beyond floats", _one_input(datatype="FP64", data=[10**400, 0]), None, "out of the range of FP64"),
    ("fraction in INT32", _one_input(datatype="INT32", data=[1, 2.5]), None, "must be integers, found a fractional"),
    ("boolean in INT32", _one_input(datatype="INT32", data=[1, True]), None, "must be integers, found a boolean"),
    ("boolean in FP32", _one_input(data=[False, 1.0]), None, "must be numbers, found a boolean"),
    ("number in BOOL", _one_input(datatype="BOOL", data=[True, 0]), None, "must be true or false, found an integer"),
    ("string in FP32", _one_input(data=["1.0", 2.0]), None, "must be numbers, found a string"),
    ("null in FP32", _one_input(data=[None, 2.0]), None, "must be numbers, found null"),
    ("number in BYTES", _one_input(datatype="BYTES", data=["a", 1]), None, "must be strings, found an integer"),
    ("lone surrogate in BYTES", _one_input(datatype="BYTES", data=["a", "\ud800"]), None, "not valid Unicode"),
    ("duplicate input names", _request(inputs=[FP32_INPUT, FP32_INPUT]), None, "input 'scores' is given twice"),
    ("both data and binary_data_size", _one_input(parameters={"binary_data_size": 8}), None, "has both 'data'"),
    ("neither data nor binary_data_size", _one_input(data=...), None, "neither 'data' nor"),
    ("shared memory input", _one_input(data=..., parameters={"shared_memory_region": "r"}), None, "shared memory"),
    ("input parameters not an object", _one_input(parameters=[1]), None, "'parameters' must be an object"),
    ("negative header length", b'{"inputs": []}', -1, "must be a non-negative integer, got -1"),
    ("header length past the body", b'{"inputs": []}', 15, "is 15, larger than the body (14 bytes)"),
    ("header length cuts the JSON", b'{"inputs": []}', 10, "not valid"),
    (
        "binary_data_size not the shape's bytes",
        *_binary(FOUR_FLOATS[:12], _binary_input("x", "FP32", [2, 2], 12)),
        "shape [2, 2] of FP32 is 16 bytes, binary_data_size is 12",
    ),
    (
        "bytes left after the binary data",
        *_binary(FOUR_FLOATS, _binary_input("x", "FP32", [2, 2], 16), extra=b"\0"),
        "17 bytes after its JSON header; the inputs' binary_data_size add up to 16",
    ),
    (
        "binary data shorter than binary_data_size",
        *_binary(FOUR_FLOATS[:15], _binary_input("x", "FP32", [2, 2], 16)),
        "15 bytes after its JSON header",
    ),
    (
        "binary data after an all-JSON request",
        *_binary(FOUR_FLOATS, FP32_INPUT),
        "16 bytes after its JSON header; the inputs' binary_data_size add up to 0",
    ),
    (
        "binary_data_size without the header length",
        _request(inputs=[_binary_input("x", "FP32", [1], 4)]),
        None,
        "has parameters.binary_data_size, but the request has no Inference-Header-Content-Length header",
    ),
    (
        "binary data without the header length",
        _request(inputs=[_binary_input("x", "FP32", [2], 8)]) + struct.pack("<2f", 1, 2),
        None,
        "a body with binary data needs the Inference-Header-Content-Length header",
    ),
    (
        "binary_data_size negative",
        *_binary(b"", _binary_input("x", "FP32", [0], -4)),
        "binary_data_size must be a non-negative integer, got -4",
    ),
    (
        "binary_data_size a string",
        *_binary(FOUR_FLOATS[:4], _binary_input("x", "FP32", [1], "4")),
        'binary_data_size must be a non-negative integer, got "4"',
    ),
    (
        "binary_data_size a boolean",
        *_binary(b"\x01", _binary_input("x", "BOOL", [1], True)),
        "binary_data_size must be a non-negative integer, got true",
    ),
    (
        "BOOL binary byte other than 0 or 1",
        *_binary(b"\x00\x02", _binary_input("flags", "BOOL", [2], 2)),
        "must be bytes 0 or 1, found 2",
    ),
    (
        "BYTES length prefix past its data",
        *_binary(struct.pack("<I", 9) + b"12345678", _binary_input("jpegs", "BYTES", [1], 12)),
        "element 0 has length 9, past the end of the input's binary data (8 bytes left)",
    ),
    (
        "BYTES length prefix past its input into the next",
        *_binary(
            struct.pack("<I", 6) + b"abcd" + FOUR_FLOATS[:4],
            _binary_input("jpegs", "BYTES", [1], 8),
            _binary_input("x", "FP32", [1], 4),
        ),
        "input 'jpegs': element 0 has length 6",
    ),
    (
        "BYTES fewer elements than the shape",
        *_binary(_elements(b"abcd", b"efgh"), _binary_input("jpegs", "BYTES", [3], 16)),
        "binary data ends after 2 of the 3 elements",
    ),
    (
        "BYTES more elements than the shape",
        *_binary(_elements(b"ab", b"cd"), _binary_input("jpegs", "BYTES", [1], 12)),
        "6 bytes of binary data are left after the 1 elements of shape [1]",
    ),
    (
        "BYTES binary_data_size under 4 per element",
        *_binary(b"\0\0\0", _binary_input("jpegs", "BYTES", [1], 3)),
        "binary_data_size 3 is too small for the 1 elements",
    ),
    ("parameters not an object", _request(inputs=[FP32_INPUT], parameters=[1]), None, "'parameters' must be an object"),
    ("parameter a list", _request(inputs=[FP32_INPUT], parameters={"tags": ["a"]}), None, "'tags' must be a boolean"),
    ("parameter an object", _request(inputs=[FP32_INPUT], parameters={"o": {}}), None, "'o' must be a boolean"),
    ("parameter null", _request(inputs=[FP32_INPUT], parameters={"n": None}), None, "'n' must be a boolean"),
    (
        "binary_data_output not a boolean",
        _request(inputs=[FP32_INPUT], parameters={"binary_data_output": 1}),
        None,
        "'binary_data_output' must be true or false, got 1",
    ),
    ("outputs not a list", _request(inputs=[FP32_INPUT], outputs={"name": "y"}), None, "'outputs' must be a list"),
    ("outputs null", _request(inputs=[FP32_INPUT], outputs=None), None, "'outputs' must be a list, got null"),
    ("output without name", _request(inputs=[FP32_INPUT], outputs=[{}]), None, "outputs[0] has no 'name'"),
    (
        "output binary_data not a boolean",
        _request(inputs=[FP32_INPUT], outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        None,
        "output 'y': binary_data must be true or false",
    ),
    (
        "output requested twice",
        _request(inputs=[FP32_INPUT], outputs=[{"name": "y"}, {"name": "y"}]),
        None,
        "output 'y' is requested twice",
    ),
    (
        "unexpected output key",
        _request(inputs=[FP32_INPUT], outputs=[{"name": "y", "binary_data": True}]),
        None,
        "output 'y' has unexpected keys ['binary_data']",
    ),
]

MALFORMED: list[tuple[str, bytes, int | None]] = [
    (description, body, length) for description, body, length, _ in _CASES
]
MESSAGES: dict[str, str] = {description: says for description, _, _, says in _CASES}
