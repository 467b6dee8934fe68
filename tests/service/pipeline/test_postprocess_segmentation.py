import base64
import io
import math

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from service.pipeline.geometry import Geometry
from service.tasks.segmentation.answer import Component, PixelBox, RleMask
from service.tasks.segmentation.postprocess import (
    NO_CLASS,
    connected_components,
    encode_png,
    encode_rle,
    postprocess_segmentation,
    thresholded_class_map,
)
from service.thresholds.rules import ThresholdSet
from tests.service.manifests import segmenter_manifest

CLASSES = ["background", "porosity", "crack", "undercut"]
THRESHOLDS = {"porosity": 0.5, "crack": 0.5, "undercut": 0.5}
LETTERBOX = Geometry.letterbox((640, 480), (320, 320))  # scale 0.5, pad_y 40
# The fields every task's answer starts with; the tests below compare the rest.
HEADER = ("model", "model_version", "task", "image", "thresholds_revision")


def threshold_set(values: dict[str, float] = THRESHOLDS) -> ThresholdSet:
    return ThresholdSet(revision=1, values=values, nms_iou=None)


def segmentation_body(answer) -> dict:
    """The answer's wire form without the fields every task's answer starts with."""
    return {k: v for k, v in answer.model_dump(mode="json").items() if k not in HEADER}


def component(x1: int, y1: int, x2: int, y2: int, area_px: int) -> Component:
    return Component(box=PixelBox(x1=x1, y1=y1, x2=x2, y2=y2), area_px=area_px)


def decoded(mask: RleMask) -> np.ndarray:
    """An answer's RLE mask as a bool array, read as a client would."""
    rle = mask.model_dump()
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def background_logits(height: int = 320, width: int = 320) -> np.ndarray:
    logits = np.zeros((len(CLASSES), height, width), dtype=np.float32)
    logits[0] = math.log(10)  # background at 10 / 13 everywhere
    return logits


def claim(logits: np.ndarray, class_id: int, rows: slice, cols: slice, odds: float = 8.0) -> None:
    """Make `class_id` the winner over the region with probability odds / (odds + 3)."""
    logits[:, rows, cols] = 0.0
    logits[class_id, rows, cols] = math.log(odds)


def test_pixel_takes_the_argmax_class_only_when_its_probability_reaches_the_threshold():
    logits = np.zeros((3, 1, 3), dtype=np.float32)
    logits[:, 0, 0] = [0, math.log(8), 0]  # class 1 at 0.8
    logits[:, 0, 1] = [0, 0, math.log(4)]  # class 2 at 4 / 6 = 0.667
    logits[:, 0, 2] = [math.log(8), 0, 0]  # background at 0.8

    class_map, probability = thresholded_class_map(logits, np.array([np.inf, 0.7, 0.7], dtype=np.float32))

    np.testing.assert_array_equal(class_map, [[1, NO_CLASS, NO_CLASS]])
    np.testing.assert_allclose(probability, [[0.8, 4 / 6, 0.8]], rtol=1e-6)


def test_rle_decodes_back_to_the_same_mask():
    mask = np.zeros((7, 5), dtype=bool)
    mask[1:3, 1:4] = True
    mask[6, 4] = True

    rle = encode_rle(mask)

    assert rle.size == [7, 5]
    assert isinstance(rle.counts, str)
    np.testing.assert_array_equal(coco_mask.decode({"size": rle.size, "counts": rle.counts.encode()}), mask)


def test_png_decodes_back_to_the_same_mask():
    mask = np.zeros((7, 5), dtype=bool)
    mask[2:6, 0] = True

    with Image.open(io.BytesIO(encode_png(mask))) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.array(png), mask)


def test_components_are_8_connected_and_sorted_by_area_with_pixel_edge_boxes():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:6, 3:9] = True  # 24 px
    mask[10, 10] = True  # these two touch only at a corner: one component of 2 px
    mask[11, 11] = True
    mask[15:20, 25:30] = True  # 25 px, touching the frame corner

    components = connected_components(mask)

    assert components == [
        component(25, 15, 30, 20, area_px=25),
        component(3, 2, 9, 6, area_px=24),
        component(10, 10, 12, 12, area_px=2),
    ]


def test_empty_mask_has_no_components():
    assert connected_components(np.zeros((4, 4), dtype=bool)) == []


def test_crack_on_a_letterboxed_frame_is_measured_at_original_size():
    logits = background_logits()
    claim(logits, 2, slice(40 + 10, 40 + 20), slice(30, 50))  # crack: 20 x 10 input px
    claim(logits, 2, slice(40 + 100, 40 + 101), slice(200, 201), odds=30.0)  # one more crack pixel
    claim(logits, 2, slice(10, 30), slice(0, 320))  # in the padding: must not count

    result = postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), threshold_set())

    assert (result.decision, result.defects) == ("reject", ["crack"])
    (crack,) = result.segments
    expected = np.zeros((480, 640), dtype=bool)
    expected[20:40, 60:100] = True
    expected[200:202, 400:402] = True
    np.testing.assert_array_equal(decoded(crack.mask), expected)
    np.testing.assert_array_equal(result.class_map == 2, expected)
    assert result.class_map.dtype == np.uint8 and set(np.unique(result.class_map).tolist()) == {2, NO_CLASS}
    assert (crack.class_id, crack.area_px) == (2, 800 + 4)
    assert crack.area_fraction == pytest.approx(804 / (640 * 480))
    assert crack.confidence == pytest.approx(30 / 33, rel=1e-6)
    assert crack.components == [component(60, 20, 100, 40, 800), component(400, 200, 402, 202, 4)]


def test_json_answer_carries_rle_masks_readable_by_pycocotools():
    logits = background_logits()
    claim(logits, 1, slice(60, 70), slice(100, 110))

    answer = segmentation_body(postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), threshold_set()))

    (segment,) = answer["segments"]
    mask = segment.pop("mask")
    assert segment == {
        "class_name": "porosity",
        "class_id": 1,
        "confidence": round(8 / 11, 6),
        "area_px": 400,
        "area_fraction": round(400 / (640 * 480), 6),
        "components": [{"box": {"x1": 200, "y1": 40, "x2": 220, "y2": 60}, "area_px": 400}],
    }
    decoded = coco_mask.decode({"size": mask["size"], "counts": mask["counts"].encode()})
    assert decoded.shape == (480, 640)
    assert decoded.sum() == 400 and decoded[40:60, 200:220].all()


def test_png_mask_format_answers_base64_png_at_original_size():
    logits = background_logits()
    claim(logits, 3, slice(60, 70), slice(100, 110))

    answer = segmentation_body(
        postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), threshold_set(), mask_format="png")
    )

    mask = answer["segments"][0]["mask"]
    assert mask["format"] == "png"
    with Image.open(io.BytesIO(base64.b64decode(mask["data"]))) as png:
        decoded = np.array(png)
    assert decoded.shape == (480, 640)
    assert decoded.sum() == 400 and decoded[40:60, 200:220].all()


def test_region_below_its_class_threshold_is_not_a_defect():
    logits = background_logits()
    claim(logits, 2, slice(60, 70), slice(100, 110), odds=6.0)  # crack at 6 / 9 = 0.667

    assert postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), threshold_set()).defects == ["crack"]
    strict = threshold_set({**THRESHOLDS, "crack": 0.7})
    result = postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), strict)
    assert (result.segments, result.decision) == ([], "accept")


def test_background_only_output_is_accepted_with_no_segments():
    result = postprocess_segmentation(background_logits(), LETTERBOX, segmenter_manifest(), threshold_set())

    assert (result.segments, result.defects, result.decision) == ([], [], "accept")
    assert segmentation_body(result) == {"decision": "accept", "defects": [], "segments": []}
    assert result.class_map is None


def test_each_class_gets_its_own_segment_in_class_order():
    logits = background_logits()
    claim(logits, 3, slice(60, 70), slice(10, 20))
    claim(logits, 1, slice(100, 110), slice(10, 20))

    result = postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), threshold_set())

    assert [(s.class_name, s.area_px) for s in result.segments] == [("porosity", 400), ("undercut", 400)]
    assert result.defects == ["porosity", "undercut"]


def test_class_filter_drops_other_classes_before_the_decision():
    logits = background_logits()
    claim(logits, 1, slice(60, 70), slice(10, 20))

    result = postprocess_segmentation(logits, LETTERBOX, segmenter_manifest(), threshold_set(), class_filter={"crack"})

    assert (result.segments, result.decision) == ([], "accept")


def test_logits_not_at_the_input_size_are_refused():
    with pytest.raises(ValueError, match="input size"):
        postprocess_segmentation(background_logits(160, 160), LETTERBOX, segmenter_manifest(), threshold_set())


def test_large_frame_mask_has_the_frame_size_and_scaled_area():
    geometry = Geometry.stretch((2448, 2048), (256, 256))
    logits = background_logits(256, 256)
    claim(logits, 2, slice(128, 160), slice(64, 96))

    (crack,) = postprocess_segmentation(logits, geometry, segmenter_manifest(), threshold_set()).segments

    assert crack.mask.size == [2048, 2448]
    assert decoded(crack.mask).shape == (2048, 2448)
    assert crack.components == [component(612, 1024, 918, 1280, 306 * 256)]


def test_pixel_lost_when_downscaling_to_a_smaller_frame_does_not_reject():
    geometry = Geometry.stretch((2, 2), (4, 4))  # original pixels sample input pixels (1, 1), (1, 3), (3, 1), (3, 3)
    logits = background_logits(4, 4)
    claim(logits, 2, slice(0, 1), slice(0, 1))
    claim(logits, 1, slice(1, 2), slice(3, 4))

    result = postprocess_segmentation(logits, geometry, segmenter_manifest(), threshold_set())

    assert [(s.class_name, s.area_px, s.area_fraction) for s in result.segments] == [("porosity", 1, 0.25)]
    assert result.defects == ["porosity"]
