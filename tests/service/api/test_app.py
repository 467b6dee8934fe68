"""End to end against a real server on the committed demo models, with generated weld images."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as coco_mask

from export.synthetic import SEGMENTATION_CLASSES, encode_image, generate_weld
from service.api.schemas import ModelDescription
from tests.service.clients import error_of, post, predict

CLASSIFIER, DETECTOR, SEGMENTER = "weld-classifier", "weld-detector", "weld-segmenter"


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def batch_counts(server, model: str) -> tuple[float, float]:
    """(batches run, batches of exactly one image) so far, summed over workers."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = singles = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "inspection_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_count"):
                total = sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 1.0:
                singles = sample.value
    return total, singles


# --- models -----------------------------------------------------------------------------------


def test_models_are_listed_with_version_task_classes_and_provider(server):
    listing = httpx.get(f"{server.url}/v1/models").json()["models"]
    by_name = {m["name"]: ModelDescription.model_validate(m) for m in listing}
    assert set(by_name) == {CLASSIFIER, DETECTOR, SEGMENTER}
    assert by_name[CLASSIFIER].task == "classification"
    assert by_name[CLASSIFIER].classes == ["no_defect", "porosity", "crack", "undercut"]
    assert by_name[DETECTOR].thresholds.nms_iou is not None
    assert {m.provider for m in by_name.values()} == {"CPUExecutionProvider"}
    one = httpx.get(f"{server.url}/v1/models/{SEGMENTER}").json()
    assert one["manifest"]["task"] == "segmentation" and one["thresholds"]["revision"] == 1


# --- each task ----------------------------------------------------------------------------------


def test_generated_crack_is_rejected_by_the_classifier(server):
    sample = generate_weld(70_001, 640, 480, label="crack")
    body = predict(server, CLASSIFIER, encode_image(sample.image))
    assert body["label"] == "crack"
    assert body["decision"] == "reject" and "crack" in body["defects"]
    assert body["image"] == {"width": 640, "height": 480}
    assert body["scores"]["crack"] == body["confidence"]
    assert abs(sum(body["scores"].values()) - 1.0) < 1e-4


def test_clean_welds_are_mostly_accepted(server):
    accepted = [
        predict(server, CLASSIFIER, encode_image(generate_weld(70_100 + i, 640, 480, label="no_defect").image))[
            "decision"
        ]
        == "accept"
        for i in range(6)
    ]
    assert sum(accepted) >= 5, accepted


def test_a_higher_request_threshold_turns_a_reject_into_an_accept(server):
    data = encode_image(generate_weld(70_002, 640, 480, label="crack").image)
    strict = predict(server, CLASSIFIER, data)
    assert strict["decision"] == "reject"
    lenient = predict(server, CLASSIFIER, data, thresholds="crack:1.0,porosity:1.0,undercut:1.0")
    assert lenient["decision"] == "accept" and lenient["defects"] == []
    assert lenient["scores"] == strict["scores"]


@pytest.mark.parametrize(("width", "height"), [(1600, 900), (2448, 2048)])
def test_detector_boxes_land_on_the_drawn_defects_in_original_pixels(server, width, height):
    found_any = 0
    for seed, label in [(70_010, "porosity"), (70_011, "crack"), (70_012, "undercut")]:
        sample = generate_weld(seed, width, height, label=label)
        body = predict(server, DETECTOR, encode_image(sample.image))
        assert body["image"] == {"width": width, "height": height}
        for det in body["detections"]:
            box = det["box"]
            assert 0 <= box["x1"] < box["x2"] <= width and 0 <= box["y1"] < box["y2"] <= height
        for drawn in sample.boxes:
            matches = [
                d
                for d in body["detections"]
                if d["class_name"] == label and box_iou(drawn, [d["box"][k] for k in ("x1", "y1", "x2", "y2")]) >= 0.3
            ]
            found_any += bool(matches)
        assert label in body["defects"] and body["decision"] == "reject"
    assert found_any >= 3


def test_detector_on_a_clean_weld_reports_nothing_and_accepts(server):
    sample = generate_weld(70_020, 1280, 720, label="no_defect")
    body = predict(server, DETECTOR, encode_image(sample.image))
    assert body["detections"] == [] and body["decision"] == "accept"


def test_segmenter_rle_decodes_to_a_mask_on_the_drawn_defect(server):
    sample = generate_weld(70_030, 800, 600, label="crack")
    body = predict(server, SEGMENTER, encode_image(sample.image))
    crack = next(s for s in body["segments"] if s["class_name"] == "crack")
    rle = {"size": crack["mask"]["size"], "counts": crack["mask"]["counts"].encode()}
    decoded = coco_mask.decode(rle).astype(bool)
    assert decoded.shape == (600, 800)
    assert crack["area_px"] == int(decoded.sum())
    drawn = sample.mask == SEGMENTATION_CLASSES.index("crack")
    iou = (decoded & drawn).sum() / (decoded | drawn).sum()
    assert iou >= 0.3, iou
    assert body["decision"] == "reject" and "crack" in body["defects"]


def test_segmenter_png_mask_is_the_same_mask_as_the_rle(server):
    data = encode_image(generate_weld(70_031, 640, 480, label="porosity").image)
    as_rle = predict(server, SEGMENTER, data)
    as_png = predict(server, SEGMENTER, data, mask_format="png")
    import base64

    for rle_segment, png_segment in zip(as_rle["segments"], as_png["segments"], strict=True):
        assert png_segment["mask"]["format"] == "png"
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_segment["mask"]["data"])))).astype(bool)
        rle = rle_segment["mask"]
        expected = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert (png == expected).all()


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("TIFF", "image/tiff"), ("BMP", "image/bmp"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_every_format_gives_the_same_label_as_jpeg(server, fmt, content_type):
    sample = generate_weld(70_040, 640, 480, label="crack")
    body = predict(server, CLASSIFIER, encode_image(sample.image, fmt), content_type=content_type)
    assert body["label"] == "crack"


def test_sixteen_bit_png_is_scaled_not_clipped(server):
    sample = generate_weld(70_041, 640, 480, label="crack")
    wide = sample.image.astype(np.uint16) * 257  # the same picture on 16 bits
    eight = predict(server, CLASSIFIER, encode_image(sample.image, "PNG"), content_type="image/png")
    sixteen = predict(server, CLASSIFIER, encode_image(wide, "PNG"), content_type="image/png")
    assert sixteen["label"] == "crack"
    assert abs(sixteen["scores"]["crack"] - eight["scores"]["crack"]) < 1e-3


def test_exif_rotated_frame_reports_its_upright_size(server):
    sample = generate_weld(70_042, 640, 480, label="no_defect")
    exif = Image.Exif()
    exif[0x0112] = 6
    body = predict(server, CLASSIFIER, encode_image(sample.image, "JPEG", exif=exif.tobytes()))
    assert body["image"] == {"width": 480, "height": 640}


def test_multipart_upload_answers_like_a_raw_body(server):
    data = encode_image(generate_weld(70_043, 640, 480, label="crack").image)
    raw = predict(server, CLASSIFIER, data)
    response = httpx.post(
        f"{server.url}/v1/models/{CLASSIFIER}/predict", files={"image": ("frame.jpg", data, "image/jpeg")}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == raw["scores"]


# --- batching -----------------------------------------------------------------------------------


def test_concurrent_requests_form_batches_and_answer_as_one_at_a_time(server):
    frames = [encode_image(generate_weld(70_200 + i, 640, 480).image) for i in range(24)]
    one_at_a_time = [predict(server, CLASSIFIER, f)["scores"] for f in frames]
    # Whether requests meet in a batch depends on when each arrives while another batch runs: on a
    # busy host a burst can pass one at a time, so up to three bursts.
    for _ in range(3):
        before = batch_counts(server, CLASSIFIER)
        with ThreadPoolExecutor(max_workers=24) as pool:
            together = list(pool.map(lambda f: predict(server, CLASSIFIER, f)["scores"], frames))
        after = batch_counts(server, CLASSIFIER)
        batches, singles = after[0] - before[0], after[1] - before[1]
        for alone, batched in zip(one_at_a_time, together, strict=True):
            for cls in alone:
                assert abs(alone[cls] - batched[cls]) < 1e-4
        if batches - singles >= 1:
            break
    assert batches < len(frames), "every request ran alone"
    assert batches - singles >= 1, "no batch held more than one image"


def test_truncated_image_fails_alone_among_good_images_in_the_same_batch_window(server):
    good = [encode_image(generate_weld(70_300 + i, 640, 480, label="crack").image) for i in range(7)]
    truncated = good[0][: len(good[0]) // 2]
    expected = [predict(server, CLASSIFIER, f)["scores"] for f in good]
    frames = good[:3] + [truncated] + good[3:]
    with ThreadPoolExecutor(max_workers=len(frames)) as pool:
        responses = list(pool.map(lambda f: post(server, CLASSIFIER, f), frames))
    assert error_of(responses[3], 400) == "undecodable_image"
    answers = [r.json()["scores"] for i, r in enumerate(responses) if i != 3]
    assert all(r.status_code == 200 for i, r in enumerate(responses) if i != 3)
    for got, want in zip(answers, expected, strict=True):
        assert abs(got["crack"] - want["crack"]) < 1e-4


# --- errors -------------------------------------------------------------------------------------


def test_bytes_that_are_no_image_answer_400(server):
    assert error_of(post(server, CLASSIFIER, b"\x00" * 100), 400) == "undecodable_image"


def test_unknown_model_answers_404(server):
    assert error_of(post(server, "weld-nope", b"x"), 404) == "unknown_model"
    assert error_of(httpx.get(f"{server.url}/v1/models/weld-nope"), 404) == "unknown_model"


def test_body_over_the_limit_answers_413(server):
    assert error_of(post(server, CLASSIFIER, b"\xff\xd8\xff" + b"\x00" * 4_100_000), 413) == "payload_too_large"


def test_pixel_count_over_the_limit_answers_413_before_decoding(server):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4000, 4000), dtype=bool)).save(buffer, "PNG")  # 16 MP in a few KB
    response = post(server, CLASSIFIER, buffer.getvalue(), content_type="image/png")
    assert error_of(response, 413) == "payload_too_large"
    assert "4000x4000" in response.json()["error"]["message"]


def test_unsupported_media_answers_415(server):
    assert error_of(post(server, CLASSIFIER, b"hello", content_type="text/plain"), 415) == "unsupported_media_type"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, "PPM")
    # Declared as JPEG, sniffed as what it is.
    assert error_of(post(server, CLASSIFIER, buffer.getvalue()), 415) == "unsupported_media_type"


def test_bad_parameters_answer_422(server):
    data = encode_image(generate_weld(70_050, 640, 480).image)
    assert error_of(post(server, CLASSIFIER, data, thresholds="crack:7"), 422) == "invalid_parameters"
    assert error_of(post(server, CLASSIFIER, data, classes="rust"), 422) == "invalid_parameters"
    assert error_of(post(server, DETECTOR, data, nms_iou="high"), 422) == "invalid_parameters"
    assert error_of(post(server, SEGMENTER, data, mask_format="bmp"), 422) == "invalid_parameters"
    assert error_of(post(server, CLASSIFIER, data, threshold="crack:0.3"), 422) == "invalid_parameters"
    no_image = httpx.post(f"{server.url}/v1/models/{CLASSIFIER}/predict", files={"photo": ("a.jpg", data)})
    assert error_of(no_image, 422) == "invalid_parameters"


def test_malformed_multipart_answers_400(server):
    response = post(server, CLASSIFIER, b"--xyz\r\nnot a part", content_type="multipart/form-data; boundary=xyz")
    assert error_of(response, 400) in {"malformed_request", "invalid_parameters"}


# --- errors from the layers under the routes ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nothing", 404, "not_found"),
        ("POST", "/v1/models//predict", 404, "not_found"),
        ("POST", "/v1/models/..%2F/predict", 404, "not_found"),
        ("DELETE", "/v1/models", 405, "method_not_allowed"),
        ("GET", "/nothing", 404, "not_found"),
        ("GET", "/v1/models/a%0Ab/thresholds/history", 404, "not_found"),
        ("POST", "/livez", 405, "method_not_allowed"),
    ],
)
def test_paths_and_methods_without_a_route_answer_the_error_contract(server, method, path, status, code):
    response = httpx.request(method, f"{server.url}{path}", content=b"x", timeout=10)
    assert error_of(response, status) == code
    assert response.headers["content-type"] == "application/json"


def test_a_body_that_is_not_json_answers_400_in_the_error_contract(server):
    response = httpx.put(
        f"{server.url}/v1/models/{CLASSIFIER}/thresholds",
        content=b'{"thresholds": {"crack": 0.3',
        headers={"Content-Type": "application/json", "Authorization": "Bearer whatever"},
        timeout=10,
    )
    assert error_of(response, 400) == "malformed_request"
    assert "not valid JSON" in response.json()["error"]["message"]
