"""Heat maps from a real server on the demo models: where their peaks fall on generated frames with
known defects, what an answer that does not ask carries, and what a request may not ask for."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from export.synthetic import DEFECT_CLASSES, encode_image, generate_weld
from service.model_store import load_version
from tests.conftest import MODEL_STORE
from tests.service.clients import error_of, post, predict
from tests.service.test_metrics import scrape, value

FRAMES = 20  # per defect class
SEEDS = range(1000, 1000 + FRAMES)


def _png(image: np.ndarray) -> bytes:
    return encode_image(image, "PNG")


def _intensities(heatmap: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(heatmap["png"]))))


def _inside(x: float, y: float, boxes: np.ndarray, margin: tuple[float, float]) -> bool:
    """(x, y) in one of the defect's boxes, grown by `margin` (half a cell of the map: its resolution)."""
    mx, my = margin
    return any(x0 - mx <= x <= x1 + mx and y0 - my <= y <= y1 + my for x0, y0, x1, y1 in boxes)


# Half a cell of each map on a 640x480 frame: the classifier's 10x10 features over its 160x160 input
# (cells of 64x48 frame pixels), occlusion's 8x8 grid over the frame (80x60), the detector's stride-8
# grid over its letterboxed 256x256 input (20 frame pixels), the segmenter's pixels (a few).
MAPS = {
    ("weld-classifier", "cam"): (32, 24),
    ("weld-classifier", "occlusion"): (40, 30),
    ("weld-detector", "scores"): (10, 10),
    ("weld-segmenter", "scores"): (2, 2),
}


@pytest.mark.parametrize(("model", "method"), sorted(MAPS))
def test_the_map_peaks_on_the_defect(server, model, method):
    """On frames with a known defect, the map of that class peaks inside the defect (grown by half a
    cell) on at least 12 of 20 frames per class: a map peaking at random would on 1 or 2 (a grown box
    covers under a tenth of a frame)."""
    margin = MAPS[(model, method)]
    for defect in DEFECT_CLASSES:
        hits = 0
        for seed in SEEDS:
            sample = generate_weld(seed, 640, 480, label=defect)
            answer = predict(server, model, _png(sample.image), heatmap=method, heatmap_class=defect)
            heatmap = answer["heatmap"]
            assert (heatmap["class_name"], heatmap["method"], heatmap["width"], heatmap["height"]) == (
                defect,
                method,
                320,
                240,
            )
            k = heatmap["downscale"]
            assert k == 2
            assert heatmap["runs"] == (49 if method == "occlusion" else 0)
            pixels = _intensities(heatmap)
            assert pixels.shape == (240, 320) and pixels.dtype == np.uint8
            # The PNG is the map at the stated scale, drawn between the cells' centres: nothing brighter
            # than the peak's intensity, and the peak drawn bright (less than its intensity where no
            # pixel's centre is the peak cell's).
            expected = round(255 * min(max(heatmap["peak"], 0.0) / heatmap["scale"], 1.0))
            assert pixels.max() <= expected
            assert pixels[heatmap["peak_y"] // k, heatmap["peak_x"] // k] >= 0.6 * expected
            hits += _inside(heatmap["peak_x"], heatmap["peak_y"], sample.boxes, margin)
        assert hits >= 12, f"{model} {method}: the {defect} map peaked on the defect on {hits} of {FRAMES} frames"


def test_the_map_is_of_the_defect_class_scored_highest_unless_one_is_named(server):
    sample = generate_weld(1003, 640, 480, label="porosity")
    answer = predict(server, "weld-classifier", _png(sample.image), heatmap="auto")
    top = max(DEFECT_CLASSES, key=lambda name: answer["scores"][name])
    assert answer["heatmap"]["class_name"] == top == "porosity"
    assert answer["heatmap"]["method"] == "cam" and answer["heatmap"]["unit"] == "class activation"
    named = predict(server, "weld-classifier", _png(sample.image), heatmap="auto", heatmap_class="crack")
    assert named["heatmap"]["class_name"] == "crack"
    assert named["heatmap"]["peak"] < answer["heatmap"]["peak"]
    # The rest of the answer is the one without a map.
    plain = predict(server, "weld-classifier", _png(sample.image))
    assert "heatmap" not in plain
    assert {k: v for k, v in answer.items() if k != "heatmap"} == plain


def test_the_scale_is_the_export_s_on_every_frame(server):
    recorded = load_version(MODEL_STORE, "weld-classifier").manifest.activation_map
    scales = {"cam": set(), "occlusion": set()}
    for seed in range(3):
        frame = _png(generate_weld(seed, 640, 480, label=DEFECT_CLASSES[seed]).image)
        for method, seen in scales.items():
            seen.add(predict(server, "weld-classifier", frame, heatmap=method)["heatmap"]["scale"])
    assert scales == {"cam": {recorded.scale}, "occlusion": {1.0}}


def test_a_map_the_model_cannot_give_is_refused_with_422(server):
    frame = _png(generate_weld(0, 320, 240).image)
    for model, params, message in (
        ("weld-detector", {"heatmap": "cam"}, "one of auto, scores"),
        ("weld-classifier", {"heatmap": "scores"}, "one of auto, cam, occlusion"),
        ("weld-classifier", {"heatmap_class": "no_defect"}, "not a defect class"),
        ("weld-segmenter", {"heatmap": "1"}, "one of auto, scores"),
    ):
        response = post(server, model, frame, "image/png", **params)
        assert error_of(response, 422) == "invalid_parameters"
        assert message in response.json()["error"]["message"]


def test_the_open_inference_protocol_takes_the_option_and_answers_the_map(server):
    frame = _png(generate_weld(1001, 640, 480, label="crack").image)
    images = triton.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([frame], dtype=object))
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60) as client:
        result = client.infer("weld-classifier", [images], parameters={"heatmap": "cam", "heatmap_class": "crack"})
    (answer,) = [json.loads(text) for text in result.as_numpy("answer")]
    expected = predict(server, "weld-classifier", frame, heatmap="cam", heatmap_class="crack")
    assert answer["heatmap"] == expected["heatmap"] and answer["heatmap"]["class_name"] == "crack"


def test_heat_maps_are_timed_as_their_own_stage(server):
    def timed() -> float:
        samples = scrape(server.url)
        return value(samples, "inspection_stage_duration_seconds_count", model="weld-segmenter", stage="heatmap")

    before = timed()
    frame = _png(generate_weld(5, 320, 240, label="crack").image)
    predict(server, "weld-segmenter", frame, heatmap="auto")
    predict(server, "weld-segmenter", frame)
    assert timed() - before == 1
