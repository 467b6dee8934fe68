"""The Open Inference Protocol against a real server, with the real client (`tritonclient`, sync and
asyncio): health, metadata, inference with JSON and binary tensors, BYTES and UINT8 inputs, every
demo model, a versioned path, requested outputs; the same frame answers the same through `/v1` and
`/v2`; every malformed request is a 4xx `{"error": "..."}`."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as coco_mask
from tritonclient.utils import InferenceServerException

from export.synthetic import encode_image, generate_weld
from tests.service.api.v2.malformed import MALFORMED
from tests.service.clients import post

CLASSIFIER, DETECTOR, SEGMENTER = "weld-classifier", "weld-detector", "weld-segmenter"
MODELS = (CLASSIFIER, DETECTOR, SEGMENTER)
LABEL_OF = {CLASSIFIER: "crack", DETECTOR: "porosity", SEGMENTER: "crack"}


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60) as c:
        yield c


def frame(seed: int, model: str, fmt: str = "JPEG", size: tuple[int, int] = (640, 480)) -> tuple[np.ndarray, bytes]:
    pixels = generate_weld(seed, *size, label=LABEL_OF[model]).image
    return pixels, encode_image(pixels, fmt)


def images_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    given = triton.InferInput("images", [len(files)], "BYTES")
    elements = files if binary else [base64.b64encode(f) for f in files]
    given.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
    return given


def strings(result, name: str) -> list[str]:
    """A BYTES output's elements as text (the client gives binary ones as bytes, JSON ones as str)."""
    return [e.decode() if isinstance(e, bytes) else e for e in result.as_numpy(name)]


def answers_of(result) -> list[dict]:
    return [json.loads(a) for a in strings(result, "answer")]


def v1_answer(server, model: str, data: bytes, **params) -> dict:
    response = post(server, model, data, **params)
    assert response.status_code == 200, response.text
    return response.json()


# --- health and metadata -------------------------------------------------------------------------


def test_health_and_server_metadata_with_both_clients(server, client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "weld-inspection" and "binary_tensor_data" in metadata["extensions"]

    async def aio():
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as c:
            return await c.is_server_live(), await c.is_server_ready(), await c.is_model_ready(DETECTOR)

    assert asyncio.run(aio()) == (True, True, True)
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(CLASSIFIER, "2")


def test_model_metadata_names_every_input_and_output_with_datatype_and_shape(client):
    described = {m: client.get_model_metadata(m) for m in MODELS}
    for model, metadata in described.items():
        assert metadata["name"] == model and metadata["versions"] == ["1"]
        assert metadata["platform"] == "onnxruntime_onnx"
        inputs = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
        assert inputs == {"images": ("BYTES", [-1]), "pixels": ("UINT8", [-1, -1, -1, 1])}
    outputs = {m: [(o["name"], o["datatype"], o["shape"]) for o in d["outputs"]] for m, d in described.items()}
    common = [("decision", "BYTES", [-1]), ("answer", "BYTES", [-1])]
    assert outputs[CLASSIFIER] == [("scores", "FP32", [-1, 4]), ("label", "BYTES", [-1]), *common]
    assert outputs[DETECTOR] == [
        ("boxes", "FP32", [-1, -1, 4]),
        ("scores", "FP32", [-1, -1]),
        ("class_ids", "INT32", [-1, -1]),
        ("counts", "INT32", [-1]),
        *common,
    ]
    assert outputs[SEGMENTER] == [("mask", "UINT8", [-1, -1, -1]), *common]
    assert client.get_model_metadata(CLASSIFIER, "1") == described[CLASSIFIER]
    with pytest.raises(InferenceServerException, match="version 2 of weld-classifier is not loaded") as raised:
        client.get_model_metadata(CLASSIFIER, "2")
    assert raised.value.status() == "404"


# --- the same frame through both protocols -------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_a_frame_answers_the_same_through_v1_and_v2_binary_json_and_raw_pixels(server, client, model):
    pixels, png = frame(3_100 + MODELS.index(model), model, "PNG")
    expected = v1_answer(server, model, png)
    binary = client.infer(model, [images_input([png])])
    as_json = client.infer(
        model,
        [images_input([png], binary=False)],
        outputs=[triton.InferRequestedOutput(n, binary_data=False) for n in ("answer", "decision")],
    )
    raw = triton.InferInput("pixels", [1, *pixels.shape, 1], "UINT8")
    raw.set_data_from_numpy(pixels[None, :, :, None])
    from_pixels = client.infer(model, [raw])
    for result in (binary, as_json, from_pixels):
        assert answers_of(result) == [expected]
        assert strings(result, "decision") == [expected["decision"]]
    assert binary.get_response()["model_name"] == model and binary.get_response()["model_version"] == "1"
    # The task's own tensors say what the answer says.
    if model == CLASSIFIER:
        scores = binary.as_numpy("scores")[0]
        assert scores.shape == (4,) and scores.dtype == np.float32
        assert [round(float(s), 6) for s in scores] == list(expected["scores"].values())
        assert strings(binary, "label") == [expected["label"]]
    elif model == DETECTOR:
        (count,) = binary.as_numpy("counts")
        assert count == len(expected["detections"]) > 0
        boxes, scores, ids = (binary.as_numpy(n)[0][:count] for n in ("boxes", "scores", "class_ids"))
        for found, box, score, class_id in zip(expected["detections"], boxes, scores, ids, strict=True):
            assert [round(float(v), 2) for v in box] == list(found["box"].values())
            assert round(float(score), 6) == found["confidence"] and class_id == found["class_id"]
    else:
        mask = binary.as_numpy("mask")[0]
        assert mask.shape == (480, 640) and mask.dtype == np.uint8
        assert expected["segments"], "the crack frame has a crack"
        for segment in expected["segments"]:
            drawn = coco_mask.decode({**segment["mask"], "counts": segment["mask"]["counts"].encode()}).astype(bool)
            assert np.array_equal(mask == segment["class_id"], drawn)
        assert set(np.unique(mask)) <= {0} | {s["class_id"] for s in expected["segments"]}  # 0: the background


def test_the_asyncio_client_infers_with_a_versioned_path_and_options_as_parameters(server):
    _, jpeg = frame(3_200, DETECTOR)
    expected = v1_answer(server, DETECTOR, jpeg, thresholds="0.05", max_detections="1")

    async def infer():
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as c:
            return await c.infer(
                DETECTOR,
                [images_input([jpeg])],
                model_version="1",
                parameters={"thresholds": "0.05", "max_detections": 1},
            )

    result = asyncio.run(infer())
    assert answers_of(result) == [expected] and len(expected["detections"]) == 1


def test_requested_outputs_come_in_the_order_asked_each_binary_or_json_as_asked(client):
    _, jpeg = frame(3_300, CLASSIFIER)
    outputs = [triton.InferRequestedOutput("label", binary_data=False), triton.InferRequestedOutput("scores")]
    result = client.infer(CLASSIFIER, [images_input([jpeg])], outputs=outputs)
    described = result.get_response()["outputs"]
    assert [o["name"] for o in described] == ["label", "scores"]
    assert "data" in described[0] and "binary_data_size" in described[1]["parameters"]
    assert result.as_numpy("decision") is None and strings(result, "label") == ["crack"]


# --- several images, each failing alone ----------------------------------------------------------


def test_several_images_are_answered_together_and_a_bad_one_fails_alone(server, client):
    files = [frame(3_400 + i, SEGMENTER, size=(320 + 64 * i, 240))[1] for i in range(3)]
    singles = [v1_answer(server, SEGMENTER, f) for f in files]
    files.insert(1, b"not an image at all")
    result = client.infer(SEGMENTER, [images_input(files)])
    answers = answers_of(result)
    assert [a for i, a in enumerate(answers) if i != 1] == singles
    assert answers[1]["error"]["code"] == "undecodable_image"
    decisions = [s["decision"] for s in singles]
    assert strings(result, "decision") == [decisions[0], "error", *decisions[1:]]
    masks = result.as_numpy("mask")
    assert masks.shape == (4, 240, 448)  # padded to the widest frame, 255 outside each frame
    assert (masks[0][:, 320:] == 255).all() and (masks[1] == 255).all() and (masks[3] != 255).all()
    with pytest.raises(InferenceServerException, match="not an image") as raised:
        client.infer(SEGMENTER, [images_input([b"junk", b"more junk"])])
    assert raised.value.status() == "400"


# --- mistakes: 4xx {"error": "..."} --------------------------------------------------------------


def infer_raw(
    server, body: bytes, header_length: int | None = None, path: str = f"/v2/models/{CLASSIFIER}/infer", **headers
) -> httpx.Response:
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=60)


def v2_error(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_every_malformed_wire_form_answers_4xx_json(server):
    assert len(MALFORMED) >= 30
    for description, body, header_length in MALFORMED:
        response = infer_raw(server, body, header_length)
        assert response.status_code in (400, 413), (description, response.status_code, response.text)
        v2_error(response)


def _request(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


_JPEG = base64.b64encode(encode_image(generate_weld(3_500, 320, 240).image)).decode()
_IMAGES = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [_JPEG]}


@pytest.mark.parametrize(
    ("what", "body", "path", "status", "says"),
    [
        ("no input", _request([]), None, 400, "exactly one input"),
        ("two inputs", _request([_IMAGES, {**_IMAGES, "name": "pixels"}]), None, 400, "exactly one input"),
        ("unknown input", _request([{**_IMAGES, "name": "image"}]), None, 400, "no input 'image'"),
        (
            "images as FP32",
            _request([{"name": "images", "datatype": "FP32", "shape": [1], "data": [1.0]}]),
            None,
            400,
            "must be BYTES",
        ),
        (
            "pixels as FP32",
            _request([{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 1, 1], "data": [1.0]}]),
            None,
            400,
            "must be UINT8",
        ),
        (
            "pixels of 3 channels",
            _request([{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}]),
            None,
            400,
            "(height, width, 1)",
        ),
        (
            "pixels of 3 axes",
            _request([{"name": "pixels", "datatype": "UINT8", "shape": [2, 2, 1], "data": [0] * 4}]),
            None,
            400,
            "[N, H, W, C]",
        ),
        ("images of 2 axes", _request([{**_IMAGES, "shape": [1, 1]}]), None, 400, "shape [N]"),
        ("not base64", _request([{**_IMAGES, "data": ["%%%"]}]), None, 400, "not base64"),
        ("no image bytes", _request([{**_IMAGES, "data": [""]}]), None, 400, "no image bytes"),
        ("empty batch", _request([{**_IMAGES, "shape": [0], "data": []}]), None, 400, "no image"),
        ("unknown output", _request([_IMAGES], outputs=[{"name": "boxes"}]), None, 400, "no output 'boxes'"),
        ("output twice", _request([_IMAGES], outputs=[{"name": "label"}, {"name": "label"}]), None, 400, "twice"),
        ("unknown parameter", _request([_IMAGES], parameters={"colour": "red"}), None, 422, "unknown parameters"),
        (
            "another task's parameter",
            _request([_IMAGES], parameters={"nms_iou": 0.5}),
            None,
            422,
            "applies to detection models only",
        ),
        ("threshold out of range", _request([_IMAGES], parameters={"thresholds": 1.5}), None, 422, "between 0 and 1"),
        ("unknown class", _request([_IMAGES], parameters={"classes": "rust"}), None, 422, "unknown defect classes"),
        ("boolean threshold", _request([_IMAGES], parameters={"thresholds": True}), None, 422, "true or false"),
        ("unknown model", _request([_IMAGES]), "/v2/models/nope/infer", 404, "no model named 'nope'"),
        (
            "version not loaded",
            _request([_IMAGES]),
            f"/v2/models/{CLASSIFIER}/versions/7/infer",
            404,
            "version 7 of weld-classifier is not loaded",
        ),
        (
            "version not a number",
            _request([_IMAGES]),
            f"/v2/models/{CLASSIFIER}/versions/latest/infer",
            404,
            "versions are numbers",
        ),
        ("no such route", b"", "/v2/models/x/y/z", 404, "no route"),
        ("65 images", _request([{**_IMAGES, "shape": [65], "data": [_JPEG] * 65}]), None, 413, "the limit is 64"),
    ],
)
def test_a_request_the_service_cannot_take_answers_4xx_naming_the_problem(server, what, body, path, status, says):
    response = infer_raw(server, body, path=path or f"/v2/models/{CLASSIFIER}/infer")
    assert response.status_code == status, (what, response.text)
    assert says in v2_error(response), what


def test_headers_and_limits_answer_in_the_protocols_error_form(server):
    body = _request([_IMAGES])
    assert "must be a non-negative integer" in v2_error(
        infer_raw(server, body, None, **{"Inference-Header-Content-Length": "-3"})
    )
    assert "Content-Encoding gzip" in v2_error(infer_raw(server, body, None, **{"Content-Encoding": "gzip"}))
    assert "X-Latency-Budget-Ms" in v2_error(infer_raw(server, body, None, **{"X-Latency-Budget-Ms": "0"}))
    oversize = infer_raw(server, b"{" + b" " * 4_100_000 + b"}")  # the test server's body limit is 4 MB
    assert oversize.status_code == 413 and "limit" in v2_error(oversize)
    wrong_method = httpx.get(f"{server.url}/v2/models/{CLASSIFIER}/infer")
    assert wrong_method.status_code == 405 and "POST" in v2_error(wrong_method)
    assert wrong_method.headers["allow"] == "POST"


def test_v2_requests_are_counted_by_model_status_and_protocol(server, client):
    def count(status: str) -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            if family.name == "inspection_request_duration_seconds"
            for s in family.samples
            if s.name.endswith("_count") and s.labels == {"model": CLASSIFIER, "status": status, "protocol": "v2"}
        )

    ok, bad = count("200"), count("400")
    client.infer(CLASSIFIER, [images_input([frame(3_600, CLASSIFIER)[1]])])
    infer_raw(server, _request([{**_IMAGES, "data": ["%%%"]}]))
    infer_raw(server, _request([_IMAGES]), **{"Inference-Header-Content-Length": "x"})  # refused before the core
    assert (count("200"), count("400")) == (ok + 1, bad + 2)


def test_pixels_given_as_json_numbers_answer_as_the_same_png(server):
    pixels, png = frame(3_700, CLASSIFIER, "PNG", size=(160, 128))
    body = _request(
        [{"name": "pixels", "datatype": "UINT8", "shape": [1, 128, 160, 1], "data": pixels.ravel().tolist()}]
    )
    response = infer_raw(server, body)
    assert response.status_code == 200, response.text
    (answer,) = [o for o in response.json()["outputs"] if o["name"] == "answer"]
    assert json.loads(answer["data"][0]) == v1_answer(server, CLASSIFIER, png)
    assert Image.open(io.BytesIO(png)).size == (160, 128)


def test_the_readme_session_runs_against_the_server(server, capsys):
    from loadtests.tritonclient_session import main

    assert main(["--url", server.url.removeprefix("http://")]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("live True, ready True")
    for model in MODELS:
        assert f"{model} <- JPEG bytes" in shown and f"{model} <- raw pixels" in shown
    assert shown.count("decision [1]: ['reject']") == 6  # every frame shows a crack
