"""The wire form of Open Inference Protocol v2 inference requests and responses, with Triton's binary data.

A body is a JSON header, then, when the `Inference-Header-Content-Length` header gives the JSON's length,
the binary data of the tensors whose `parameters.binary_data_size` says so, concatenated in tensor order.
Numeric binary data are little-endian and row-major; a binary BYTES tensor is its elements in row-major
order, each a 4-byte little-endian length and then that many bytes. Without the header the whole body is
JSON. No HTTP here: the endpoint hands over the body and the header's value, and sends what comes back.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from service.errors import MalformedRequest, PayloadTooLarge
from service.tensors import BYTES, DATATYPES, NUMPY_DTYPES, Tensor, check_fits

INFERENCE_HEADER = "Inference-Header-Content-Length"
MAX_DIMENSIONS = 32  # numpy holds 64 at most; no model of ours takes more than 5

_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
_INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS = ("name", "parameters")
_LENGTH = struct.Struct("<I")

_INTEGERS = frozenset({int})
# datatype -> (the Python types its JSON data may hold, what to call them)
_JSON_DATA: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "true or false"),
    **{name: (_INTEGERS, "integers") for name, dtype in NUMPY_DTYPES.items() if dtype.kind in "iu"},
    **{name: (frozenset({int, float}), "numbers") for name, dtype in NUMPY_DTYPES.items() if dtype.kind == "f"},
    BYTES: (frozenset({str}), "strings"),
}
_JSON_KINDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a fractional number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary_data: bool | None  # the output's `parameters.binary_data`, None when not given


@dataclass(frozen=True)
class InferRequest:
    """An inference request as sent. Binary numeric inputs are read-only views into the body."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: the request names no outputs (all of them)
    parameters: dict[str, bool | int | float | str]  # request-level, without the protocol's binary_data_output
    binary_data_output: bool  # request parameter `binary_data_output` (default False)


@dataclass(frozen=True, slots=True)
class _InputHeader:
    """An input as its JSON describes it, checked, before any of its data is read."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    data: list | None  # None: the input comes as binary data
    binary_size: int  # 0 for an input given as JSON


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header's value as a number of bytes (None when not sent)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise MalformedRequest(f"{INFERENCE_HEADER} must be a non-negative integer, got {value[:40]!r}")
    return int(text)


def parse_infer_request(body: bytes, header_length: int | None, *, max_elements: int) -> InferRequest:
    """The request in `body`, whose JSON is its first `header_length` bytes (all of it when None).

    Every input is checked against `max_elements` (and so is their sum) before any array is made."""
    json_end = _json_end(body, header_length)
    if header_length is None:
        request = _load_json(body, hint=f"; a body with binary data needs the {INFERENCE_HEADER} header")
    else:
        request = _load_json(body[:json_end], hint="")
    if type(request) is not dict:
        raise MalformedRequest(f"the request's JSON must be an object, got {_kind(request)}")
    _check_keys(request, _REQUEST_KEYS, "the request")
    request_id = request.get("id")
    if "id" in request and type(request_id) is not str:
        raise MalformedRequest(f"the request's 'id' must be a string, got {_kind(request_id)}")
    parameters = _parameters(request, "the request")
    binary_data_output = parameters.pop("binary_data_output", False)
    if type(binary_data_output) is not bool:
        raise MalformedRequest(f"parameter 'binary_data_output' must be true or false, got {_show(binary_data_output)}")
    headers = _input_headers(request)
    _check_elements(headers, max_elements)
    _check_binary_sizes(headers, len(body) - json_end, header_length is not None)
    inputs = []
    offset = json_end
    for header in headers:
        if header.data is not None:
            inputs.append(_from_json(header, header.data))
        else:
            inputs.append(_from_binary(header, body, offset))
            offset += header.binary_size
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_requested_outputs(request),
        parameters=parameters,
        binary_data_output=binary_data_output,
    )


def encode_infer_response(
    model_name: str, model_version: str, request_id: str | None, outputs: list[Tensor], binary: Callable[[str], bool]
) -> tuple[bytes, int | None]:
    """The body of a response, and the length of its JSON header (None when no output is binary).

    `binary(name)` says whether that output goes as binary data. ValueError when an output that goes as
    JSON cannot: a BYTES element that is not UTF-8, or a NaN or infinity; the caller may send it binary."""
    described = []
    chunks: list[Any] = []
    any_binary = False
    for output in outputs:
        check_fits(output.name, output.datatype, output.data)
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if binary(output.name):
            any_binary = True
            size = _append_binary(output, chunks)
            entry["parameters"] = {"binary_data_size": size}
        else:
            entry["data"] = _json_data(output)
        described.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = described
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not any_binary:
        return header, None
    return b"".join([header, *chunks]), len(header)


def error_body(message: str) -> bytes:
    """The body of an error answer: `{"error": message}`."""
    return json.dumps({"error": message}, separators=(",", ":")).encode()


def _json_end(body: bytes, header_length: int | None) -> int:
    if header_length is None:
        return len(body)
    if type(header_length) is not int or header_length < 0:
        raise MalformedRequest(f"{INFERENCE_HEADER} must be a non-negative integer, got {header_length!r}")
    if header_length > len(body):
        raise MalformedRequest(f"{INFERENCE_HEADER} is {header_length}, larger than the body ({len(body)} bytes)")
    return header_length


def _load_json(text: bytes, hint: str) -> Any:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"the request's JSON is not UTF-8: {exc}{hint}") from None
    try:
        return json.loads(decoded, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise MalformedRequest("the request's JSON nests too deeply") from None
    except ValueError as exc:
        raise MalformedRequest(f"the request's JSON is not valid: {exc}{hint}") from None


def _reject_constant(name: str) -> None:
    raise MalformedRequest(f"the request's JSON has {name}, which is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise MalformedRequest(f"the request's JSON has key {twice!r} twice in one object")
    return obj


def _list(request: dict, key: str) -> list:
    items = request[key]
    if type(items) is not list:
        raise MalformedRequest(f"the request's {key!r} must be a list, got {_kind(items)}")
    return items


def _input_headers(request: dict) -> list[_InputHeader]:
    if "inputs" not in request:
        raise MalformedRequest("the request has no 'inputs'")
    items = _list(request, "inputs")
    headers = []
    names: set[str] = set()
    for index, item in enumerate(items):
        header = _input_header(index, item)
        if header.name in names:
            raise MalformedRequest(f"input {header.name!r} is given twice")
        names.add(header.name)
        headers.append(header)
    return headers


def _input_header(index: int, item: Any) -> _InputHeader:
    if type(item) is not dict:
        raise MalformedRequest(f"inputs[{index}] must be an object, got {_kind(item)}")
    name = _name(item, f"inputs[{index}]")
    where = f"input {name!r}"
    _check_keys(item, _INPUT_KEYS, where)
    for key in ("datatype", "shape"):
        if key not in item:
            raise MalformedRequest(f"{where} has no '{key}'")
    datatype = item["datatype"]
    if type(datatype) is not str:
        raise MalformedRequest(f"{where}: 'datatype' must be a string, got {_kind(datatype)}")
    if datatype not in DATATYPES:
        raise MalformedRequest(f"{where}: datatype {datatype!r} is not supported; one of {', '.join(DATATYPES)}")
    shape = _shape(item["shape"], where)
    parameters = _parameters(item, where)
    if "shared_memory_region" in parameters:
        raise MalformedRequest(f"{where}: shared memory is not supported; send the data in the body")
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None and (type(binary_size) is not int or binary_size < 0):
        raise MalformedRequest(f"{where}: binary_data_size must be a non-negative integer, got {_show(binary_size)}")
    data = item.get("data")
    if "data" in item and binary_size is not None:
        raise MalformedRequest(f"{where} has both 'data' and parameters.binary_data_size; give one of them")
    if "data" not in item and binary_size is None:
        raise MalformedRequest(f"{where} has neither 'data' nor parameters.binary_data_size")
    if "data" in item and type(data) is not list:
        raise MalformedRequest(f"{where}: 'data' must be a list, got {_kind(data)}")
    return _InputHeader(name, datatype, shape, math.prod(shape), data, binary_size or 0)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if type(value) is not list or any(type(d) is not int or d < 0 for d in value):
        raise MalformedRequest(f"{where}: 'shape' must be a list of non-negative integers, got {_show(value)}")
    if len(value) > MAX_DIMENSIONS:
        raise MalformedRequest(f"{where}: shape has {len(value)} dimensions, more than {MAX_DIMENSIONS}")
    return tuple(value)


def _check_elements(headers: list[_InputHeader], max_elements: int) -> None:
    total = 0
    for header in headers:
        # The non-zero dimensions too: numpy cannot shape [2**40, 2**40, 0] even though it holds nothing.
        if math.prod(max(d, 1) for d in header.shape) > max_elements:
            raise PayloadTooLarge(
                f"input {header.name!r}: shape {_show(list(header.shape))} is over the limit of {max_elements} elements"
            )
        total += header.count
    if total > max_elements:
        raise PayloadTooLarge(f"the inputs hold {total} elements together, over the limit of {max_elements}")


def _check_binary_sizes(headers: list[_InputHeader], available: int, has_header_length: bool) -> None:
    declared = 0
    for header in headers:
        if header.data is not None:
            continue
        size = header.binary_size
        if not has_header_length:
            raise MalformedRequest(
                f"input {header.name!r} has parameters.binary_data_size, but the request has no {INFERENCE_HEADER} "
                "header: its whole body is JSON"
            )
        shape = list(header.shape)
        if header.datatype == BYTES:
            if size < 4 * header.count:
                raise MalformedRequest(
                    f"input {header.name!r}: binary_data_size {size} is too small for the {header.count} elements of "
                    f"shape {shape}, each of which starts with a 4-byte length"
                )
        elif size != (needed := header.count * NUMPY_DTYPES[header.datatype].itemsize):
            raise MalformedRequest(
                f"input {header.name!r}: shape {shape} of {header.datatype} is {needed} bytes, "
                f"binary_data_size is {size}"
            )
        declared += size
    if declared != available:
        raise MalformedRequest(
            f"the body has {available} bytes after its JSON header; the inputs' binary_data_size add up to {declared}"
        )


def _from_binary(header: _InputHeader, body: bytes, offset: int) -> Tensor:
    if header.datatype == BYTES:
        return Tensor(header.name, BYTES, _bytes_elements(header, body, offset).reshape(header.shape), binary=True)
    if header.datatype == "BOOL":
        raw = np.frombuffer(body, np.uint8, header.count, offset)
        if header.count and (largest := int(raw.max())) > 1:
            raise MalformedRequest(f"input {header.name!r}: BOOL binary data must be bytes 0 or 1, found {largest}")
        data = raw.view(np.bool_)
    else:
        data = np.frombuffer(body, NUMPY_DTYPES[header.datatype], header.count, offset)
    return Tensor(header.name, header.datatype, data.reshape(header.shape), binary=True)


def _bytes_elements(header: _InputHeader, body: bytes, offset: int) -> np.ndarray:
    end = offset + header.binary_size
    elements = []
    unpack = _LENGTH.unpack_from
    at = offset
    for index in range(header.count):
        if at + 4 > end:
            raise MalformedRequest(
                f"input {header.name!r}: binary data ends after {index} of the {header.count} elements of "
                f"shape {list(header.shape)}"
            )
        (length,) = unpack(body, at)
        at += 4
        if at + length > end:
            raise MalformedRequest(
                f"input {header.name!r}: element {index} has length {length}, past the end of the input's binary "
                f"data ({end - at} bytes left)"
            )
        elements.append(body[at : at + length])
        at += length
    if at != end:
        raise MalformedRequest(
            f"input {header.name!r}: {end - at} bytes of binary data are left after the {header.count} elements of "
            f"shape {list(header.shape)}"
        )
    return _object_array(elements)


def _from_json(header: _InputHeader, data: list) -> Tensor:
    where = f"input {header.name!r}"
    flat = _flatten(data, header.shape, where)
    if len(flat) != header.count:
        raise MalformedRequest(
            f"{where}: shape {list(header.shape)} holds {header.count} elements, data has {len(flat)}"
        )
    allowed, wanted = _JSON_DATA[header.datatype]
    wrong = set(map(type, flat)) - allowed
    if wrong:
        found = next(v for v in flat if type(v) in wrong)
        raise MalformedRequest(f"{where}: {header.datatype} data must be {wanted}, found {_kind(found)}")
    if header.datatype == BYTES:
        try:
            array = _object_array([s.encode("utf-8") for s in flat])
        except UnicodeEncodeError:
            raise MalformedRequest(f"{where}: a string of its data is not valid Unicode") from None
    else:
        array = _numbers(flat, header.datatype, where)
    return Tensor(header.name, header.datatype, array.reshape(header.shape))


def _flatten(data: list, shape: tuple[int, ...], where: str) -> list:
    """Row-major data, flat as given or from lists nested as the shape says."""
    if not data or type(data[0]) is not list:
        return data  # flat; a list inside it fails the type check of its elements
    rows = [data]
    for dimension, size in enumerate(shape):
        if any(type(row) is not list or len(row) != size for row in rows):
            raise MalformedRequest(f"{where}: nested data does not match shape {list(shape)} in dimension {dimension}")
        rows = list(chain.from_iterable(rows))
    return rows


def _numbers(flat: list, datatype: str, where: str) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    try:
        with np.errstate(over="ignore"):
            data = np.array(flat, dtype=dtype)
        in_range = dtype.kind != "f" or bool(np.isfinite(data).all())
    except OverflowError:
        in_range = False
    if not in_range:
        raise MalformedRequest(f"{where}: {_out_of_range(flat, dtype)} is out of the range of {datatype}")
    return data


def _out_of_range(flat: list, dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        top = float(np.finfo(dtype).max)
        return next(v for v in flat if not -top <= v <= top)
    info = np.iinfo(dtype)
    return next(v for v in flat if not info.min <= v <= info.max)


def _requested_outputs(request: dict) -> list[RequestedOutput] | None:
    if "outputs" not in request:
        return None
    items = _list(request, "outputs")
    outputs = []
    names: set[str] = set()
    for index, item in enumerate(items):
        if type(item) is not dict:
            raise MalformedRequest(f"outputs[{index}] must be an object, got {_kind(item)}")
        name = _name(item, f"outputs[{index}]")
        where = f"output {name!r}"
        _check_keys(item, _OUTPUT_KEYS, where)
        binary_data = _parameters(item, where).get("binary_data")
        if binary_data is not None and type(binary_data) is not bool:
            raise MalformedRequest(f"{where}: binary_data must be true or false, got {_show(binary_data)}")
        if name in names:
            raise MalformedRequest(f"output {name!r} is requested twice")
        names.add(name)
        outputs.append(RequestedOutput(name, binary_data))
    # Triton answers `"outputs": []` with every output, as if none were named.
    return outputs or None


def _name(item: dict, where: str) -> str:
    if "name" not in item:
        raise MalformedRequest(f"{where} has no 'name'")
    name = item["name"]
    if type(name) is not str or not name:
        raise MalformedRequest(f"{where}: 'name' must be a non-empty string, got {_show(name)}")
    return name


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unexpected = [key for key in obj if key not in allowed]
    if unexpected:
        raise MalformedRequest(f"{where} has unexpected keys {unexpected}; it may have {', '.join(allowed)}")


def _parameters(obj: dict, where: str) -> dict[str, bool | int | float | str]:
    """The `parameters` of a request, input or output (a copy), whose values must be booleans, numbers or strings."""
    if "parameters" not in obj:
        return {}
    parameters = obj["parameters"]
    if type(parameters) is not dict:
        raise MalformedRequest(f"{where}: 'parameters' must be an object, got {_kind(parameters)}")
    for key, value in parameters.items():
        if type(value) not in (bool, int, float, str):
            raise MalformedRequest(
                f"{where}: parameter {key!r} must be a boolean, number or string, got {_kind(value)}"
            )
    return dict(parameters)


def _append_binary(output: Tensor, chunks: list[Any]) -> int:
    """Add the output's binary data to `chunks`; its size in bytes."""
    if output.datatype != BYTES:
        data = np.ascontiguousarray(output.data, dtype=NUMPY_DTYPES[output.datatype])
        chunks.append(data)
        return data.nbytes
    elements = output.data.ravel()
    pack = _LENGTH.pack
    size = 4 * len(elements)
    for element in elements:
        chunks.append(pack(len(element)))
        chunks.append(element)
        size += len(element)
    return size


def _json_data(output: Tensor) -> list:
    if output.datatype == BYTES:
        try:
            return [element.decode("utf-8") for element in output.data.ravel()]
        except UnicodeDecodeError:
            raise ValueError(
                f"output {output.name!r} has an element that is not UTF-8, which JSON cannot carry; send it binary"
            ) from None
    if output.data.dtype.kind == "f" and not np.isfinite(output.data).all():
        raise ValueError(f"output {output.name!r} holds NaN or infinity, which JSON cannot carry; send it binary")
    return output.data.ravel().tolist()


def _object_array(elements: list[bytes]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """A JSON value as the request had it, cut short."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
