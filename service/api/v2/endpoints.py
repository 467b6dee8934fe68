"""The Open Inference Protocol v2 (REST; KServe v2, Triton's HTTP API): the second adapter onto the
prediction core, for `tritonclient`, KServe's clients and the gateways in front of them.

- `GET /v2`: the server's metadata; `GET /v2/health/live`, `/v2/health/ready`: 200, or 503 when the
  server is not ready (clients read only the status).
- `GET /v2/models/{model}[/versions/{version}]`: the model's metadata, its inputs and outputs with
  datatype and shape; `.../ready`: 200, 404 for a model or version not served, 503 when not ready.
- `POST /v2/models/{model}[/versions/{version}]/infer`: a prediction (`V2Inference`).

A request sends one input, either `images` (BYTES `[N]`, each element one image file: binary data,
or base64 text in JSON) or `pixels` (UINT8 `[N, H, W, C]`, raw frames with the model's channels).
The N images are answered together, one row of every output each; an image that fails alone gets
`decision` "error" and its error as `answer`, the others their answers, and the request fails only
when every image does. Outputs: the task's (`service.tasks.<task>.tensors`), then `decision`
(BYTES `[N]`) and `answer` (BYTES `[N]`: the whole typed answer as `/v1`'s JSON). The request's
`parameters` are the prediction's options, the same as `/v1`'s query; the latency budget header,
limits, token and admission are `/v1`'s. Errors are `{"error": "message"}`, 4xx for a client's
mistake.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.body import read_body
from service.api.contract import error_response
from service.api.v2.codec import (
    INFERENCE_HEADER,
    InferRequest,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
)
from service.config import Settings
from service.errors import (
    InspectionError,
    MalformedRequest,
    PayloadTooLarge,
    UnknownModel,
    UnsupportedMediaType,
)
from service.inference import LATENCY_BUDGET_HEADER, Inference, PredictionCall, Received
from service.manifest import ModelManifest
from service.pipeline.decode import Frame
from service.served_models import ServedModels
from service.tasks import Answer, TensorSpec, head_for
from service.tasks.base import bytes_tensor

IMAGES, PIXELS = "images", "pixels"
DECISION, ANSWER = "decision", "answer"
# What a failed image's `decision` says.
FAILED = "error"
# Images in one request: each is a prediction of its own in the batcher.
MAX_IMAGES = 64
SERVER_NAME = "weld-inspection"
PLATFORM = "onnxruntime_onnx"


def server_metadata() -> dict:
    try:
        release = version("weld-inspection")
    except PackageNotFoundError:
        release = "unknown"
    return {"name": SERVER_NAME, "version": release, "extensions": ["binary_tensor_data"]}


def model_metadata(manifest: ModelManifest, versions: list[int]) -> dict:
    """A model's loaded versions, inputs and outputs, each with its datatype and shape (-1: varies)."""
    inputs = [
        TensorSpec(name=IMAGES, datatype="BYTES", shape=[-1]),
        TensorSpec(name=PIXELS, datatype="UINT8", shape=[-1, -1, -1, manifest.input.channels]),
    ]
    return {
        "name": manifest.name,
        "versions": [str(version) for version in versions],
        "platform": PLATFORM,
        "inputs": [spec.model_dump() for spec in inputs],
        "outputs": [spec.model_dump() for spec in output_specs(manifest)],
    }


def output_specs(manifest: ModelManifest) -> list[TensorSpec]:
    return [
        *head_for(manifest).output_specs(manifest),
        TensorSpec(name=DECISION, datatype="BYTES", shape=[-1]),
        TensorSpec(name=ANSWER, datatype="BYTES", shape=[-1]),
    ]


def version_number(model: str, given: str | None) -> int | None:
    """A version in the path as a number; 404 for one that cannot be a version of anything."""
    if given is None:
        return None
    if not (given.isascii() and given.isdigit()) or len(given) > 18:
        raise UnknownModel(f"{model} has no version {given!r}; versions are numbers")
    return int(given)


class V2Inference:
    """`POST /v2/models/{model}[/versions/{version}]/infer`."""

    def __init__(self, settings: Settings, inference: Inference, served_models: Callable[[], ServedModels]) -> None:
        self._settings = settings
        self._inference = inference
        self._served_models = served_models

    async def __call__(self, request: Request, model: str, given_version: str | None) -> Response:
        arrived_at = time.perf_counter()
        settings = self._settings
        sent: list[tuple[ModelManifest, InferRequest]] = []
        try:
            version = version_number(model, given_version)
            header_length = parse_header_length(request.headers.get(INFERENCE_HEADER))
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":
                raise UnsupportedMediaType(f"Content-Encoding {encoding} is not accepted; send the body uncompressed")
        except InspectionError as exc:
            self._inference.refused(model, "v2", exc, arrived_at)
            return error_response(exc, path=request.url.path)

        async def read(arrived: Callable[[], object]) -> Received:
            manifest = self._served_models().get(model, version).manifest
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s, arrived=arrived)
            infer = parse_infer_request(body, header_length, max_elements=settings.max_body_bytes)
            check_outputs(infer, manifest)
            sent.append((manifest, infer))
            return Received(frames_of(infer), infer.parameters)

        call = PredictionCall(
            model=model,
            version=version,
            options=None,
            read_body=read,
            budget_ms=request.headers.get(LATENCY_BUDGET_HEADER),
            arrived_at=arrived_at,
            protocol="v2",
        )
        try:
            answers = await self._inference.predict(call)
        except InspectionError as exc:
            return error_response(exc, path=request.url.path)
        manifest, infer = sent[0]
        return infer_response(manifest, infer, answers)


def check_outputs(infer: InferRequest, manifest: ModelManifest) -> None:
    if infer.outputs is None:
        return
    known = [spec.name for spec in output_specs(manifest)]
    unknown = [output.name for output in infer.outputs if output.name not in known]
    if unknown:
        raise MalformedRequest(f"{manifest.name} has no output {unknown[0]!r}; its outputs: {', '.join(known)}")
    names = [output.name for output in infer.outputs]
    if len(set(names)) != len(names):
        raise MalformedRequest("an output is requested twice")


def frames_of(infer: InferRequest) -> list[Frame]:
    """The request's images: its one input, `images` or `pixels`."""
    if len(infer.inputs) != 1:
        given = ", ".join(repr(t.name) for t in infer.inputs) or "none"
        raise MalformedRequest(f"send exactly one input, '{IMAGES}' (BYTES) or '{PIXELS}' (UINT8); got {given}")
    (given,) = infer.inputs
    if given.name == IMAGES and given.datatype == "BYTES":
        if given.data.ndim != 1:
            raise MalformedRequest(f"'{IMAGES}' has shape [N], one image file per element; got {list(given.shape)}")
        frames: list[Frame] = (
            list(given.data) if given.binary else [_base64(item, i) for i, item in enumerate(given.data)]
        )
    elif given.name == PIXELS and given.datatype == "UINT8":
        if given.data.ndim != 4:
            raise MalformedRequest(f"'{PIXELS}' has shape [N, H, W, C]; got {list(given.shape)}")
        frames = list(given.data)
    elif given.name in (IMAGES, PIXELS):
        wanted = "BYTES" if given.name == IMAGES else "UINT8"
        raise MalformedRequest(f"input '{given.name}' must be {wanted}, got {given.datatype}")
    else:
        raise MalformedRequest(f"no input {given.name!r}: send '{IMAGES}' (BYTES) or '{PIXELS}' (UINT8)")
    if not frames:
        raise MalformedRequest("the request holds no image")
    if len(frames) > MAX_IMAGES:
        raise PayloadTooLarge(f"{len(frames)} images in one request; the limit is {MAX_IMAGES}")
    return frames


def _base64(text: bytes, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest(
            f"'{IMAGES}' element {index} is not base64: in JSON, image files go as base64 text "
            "(or send them as binary data)"
        ) from None


def infer_response(manifest: ModelManifest, infer: InferRequest, answers: list[Answer | InspectionError]) -> Response:
    """The answers as the model's outputs, those the request names (all when it names none)."""
    typed = [answer if isinstance(answer, Answer) else None for answer in answers]
    tensors = [
        *head_for(manifest).output_tensors(manifest, typed),
        bytes_tensor(DECISION, [(a.decision if isinstance(a, Answer) else FAILED).encode() for a in answers]),
        bytes_tensor(ANSWER, [_answer_json(a) for a in answers]),
    ]
    binary = {output.name: output.binary_data for output in infer.outputs or ()}
    if infer.outputs is not None:
        by_name = {t.name: t for t in tensors}
        tensors = [by_name[output.name] for output in infer.outputs]
    body, header_length = encode_infer_response(
        manifest.name,
        str(manifest.version),
        infer.id,
        tensors,
        lambda name: infer.binary_data_output if binary.get(name) is None else bool(binary[name]),
    )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={INFERENCE_HEADER: str(header_length)})


def _answer_json(answer: Answer | InspectionError) -> bytes:
    content = answer.to_json() if isinstance(answer, InspectionError) else answer.model_dump(mode="json")
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def health(what: str, ready: bool) -> Response:
    """`{"live": true}` or `{"ready": true}`, or 503 with the protocol's error when not ready."""
    if ready:
        return JSONResponse({what: True})
    return JSONResponse({"error": "not ready: the models are loading or warming up"}, status_code=503)


_PREFIX, _INFER = "/v2/models/", "/infer"


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version or None) of an infer path, as the routes `/v2/models/{model}[/versions/{version}]/infer`
    read it; None for any other path."""
    if not (path.startswith(_PREFIX) and path.endswith(_INFER)):
        return None
    parts = path[len(_PREFIX) : -len(_INFER)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None
