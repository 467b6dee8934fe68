import numpy as np
import pytest

from service.pipeline.geometry import Geometry
from service.tasks.detection.postprocess import Detections, postprocess_detection
from service.thresholds.rules import ThresholdSet
from tests.service.manifests import detector_manifest

DEFECTS = ["porosity", "crack", "undercut"]
THRESHOLDS = {"porosity": 0.5, "crack": 0.3, "undercut": 0.5}
LETTERBOX = Geometry.letterbox((640, 480), (320, 320))  # scale 0.5, pad_y 40
# The fields every task's answer starts with; the tests below compare the rest.
HEADER = ("model", "model_version", "task", "image", "thresholds_revision")


def threshold_set(values: dict[str, float] = THRESHOLDS, nms_iou: float | None = None) -> ThresholdSet:
    """`nms_iou` None: the manifest's."""
    return ThresholdSet(revision=1, values=values, nms_iou=nms_iou)


def detection_body(answer) -> dict:
    """The answer's wire form without the fields every task's answer starts with."""
    return {k: v for k, v in answer.model_dump(mode="json").items() if k not in HEADER}


def yolo_head(anchors: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """[4 + C, A] from (cx, cy, w, h, class scores) per anchor."""
    return np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in anchors], dtype=np.float32).T


def detections(boxes: list[list[float]], confidence: list[float], class_id: list[int]) -> Detections:
    return Detections(np.array(boxes), np.array(confidence), np.array(class_id))


def test_yolo_anchor_becomes_an_xyxy_box_of_its_best_class():
    raw = yolo_head([(50, 60, 20, 10, [0.1, 0.7, 0.3]), (200, 100, 8, 8, [0.9, 0.0, 0.2])])

    d = Detections.from_yolo(raw)

    np.testing.assert_array_equal(d.xyxy, [[40, 55, 60, 65], [196, 96, 204, 104]])
    np.testing.assert_allclose(d.confidence, [0.7, 0.9])
    np.testing.assert_array_equal(d.class_id, [1, 0])
    assert (d.xyxy.dtype, d.confidence.dtype, d.class_id.dtype) == (np.float32, np.float32, np.int64)


def test_mismatched_array_lengths_are_refused():
    with pytest.raises(ValueError, match="xyxy"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(3))


def test_empty_detections_have_zero_length_arrays_of_the_right_shape():
    d = Detections.empty()

    assert len(d) == 0
    assert d.xyxy.shape == (0, 4)


def test_each_class_keeps_only_boxes_reaching_its_own_threshold():
    d = detections([[0, 0, 1, 1]] * 4, [0.4, 0.4, 0.3, 0.6], [1, 0, 1, 0])

    kept = d.filter_by_class_thresholds(np.array([0.5, 0.3, 0.5], dtype=np.float32))

    np.testing.assert_allclose(kept.confidence, [0.4, 0.3, 0.6])
    np.testing.assert_array_equal(kept.class_id, [1, 1, 0])


def test_class_id_outside_the_class_list_is_refused():
    d = detections([[0, 0, 1, 1]], [0.9], [3])

    with pytest.raises(ValueError, match="class ids outside"):
        d.filter_by_class_thresholds(np.array([0.5, 0.5, 0.5]))


def test_nms_drops_the_weaker_of_two_overlapping_boxes_of_the_same_class():
    d = detections([[1, 0, 11, 10], [0, 0, 10, 10]], [0.8, 0.9], [1, 1])  # IoU 90 / 110 = 0.82

    kept = d.nms_per_class(iou=0.5, max_detections=100)

    np.testing.assert_array_equal(kept.xyxy, [[0, 0, 10, 10]])
    np.testing.assert_allclose(kept.confidence, [0.9])


def test_nms_keeps_overlapping_boxes_of_different_classes():
    d = detections([[1, 0, 11, 10], [0, 0, 10, 10]], [0.8, 0.9], [0, 1])

    kept = d.nms_per_class(iou=0.5, max_detections=100)

    np.testing.assert_array_equal(kept.xyxy, [[0, 0, 10, 10], [1, 0, 11, 10]])
    np.testing.assert_array_equal(kept.class_id, [1, 0])


def test_nms_suppresses_only_above_the_iou_threshold():
    d = detections([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], [0, 0])  # IoU 50 / 150 = 1/3

    assert len(d.nms_per_class(iou=0.5, max_detections=100)) == 2
    assert len(d.nms_per_class(iou=0.3, max_detections=100)) == 1


def test_nms_chains_suppression_from_the_best_box_only():
    # B overlaps A and C; A suppresses B, and C survives because nothing kept overlaps it.
    d = detections([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], [0.9, 0.8, 0.7], [0, 0, 0])

    kept = d.nms_per_class(iou=0.4, max_detections=100)

    np.testing.assert_array_equal(kept.xyxy, [[0, 0, 10, 10], [8, 0, 18, 10]])


def test_nms_sorts_by_confidence_and_truncates_to_max_detections():
    boxes = [[20 * i, 0, 20 * i + 10, 10] for i in range(5)]  # disjoint
    d = detections(boxes, [0.5, 0.9, 0.6, 0.8, 0.7], [0, 1, 2, 0, 1])

    kept = d.nms_per_class(iou=0.5, max_detections=3)

    np.testing.assert_allclose(kept.confidence, [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(kept.xyxy[:, 0], [20, 60, 80])


def test_nms_of_nothing_is_nothing():
    assert len(Detections.empty().nms_per_class(iou=0.5, max_detections=10)) == 0


def test_yolo_detection_on_a_letterboxed_frame_is_answered_in_original_pixels():
    raw = yolo_head(
        [
            (60, 100, 100, 100, [0.1, 0.8, 0.2]),  # crack at input (10, 50, 110, 150)
            (62, 100, 100, 100, [0.1, 0.7, 0.2]),  # its duplicate
            (250, 200, 20, 20, [0.45, 0.0, 0.0]),  # porosity below its 0.5 threshold
        ]
    )

    result = postprocess_detection([raw], LETTERBOX, detector_manifest(), threshold_set())

    assert result.decision == "reject"
    assert result.defects == ["crack"]
    assert detection_body(result) == {
        "decision": "reject",
        "defects": ["crack"],
        "detections": [
            {
                "class_name": "crack",
                "class_id": 1,
                "confidence": 0.8,
                "box": {"x1": 20.0, "y1": 20.0, "x2": 220.0, "y2": 220.0},
            }
        ],
    }


def test_yolo_head_with_nothing_above_threshold_is_accepted_with_no_detections():
    raw = np.zeros((4 + 3, 2100), dtype=np.float32)

    result = postprocess_detection([raw], LETTERBOX, detector_manifest(), threshold_set())

    assert (result.detections, result.defects, result.decision) == ([], [], "accept")
    assert detection_body(result) == {"decision": "accept", "defects": [], "detections": []}


def test_box_wholly_in_the_letterbox_padding_is_dropped():
    raw = yolo_head([(160, 20, 40, 20, [0.0, 0.9, 0.0])])  # rows 10..30: inside the top 40-row pad

    result = postprocess_detection([raw], LETTERBOX, detector_manifest(), threshold_set())

    assert result.decision == "accept"


def test_class_filter_drops_other_classes_before_the_decision():
    raw = yolo_head([(60, 100, 20, 20, [0.9, 0.0, 0.0]), (200, 100, 20, 20, [0.0, 0.0, 0.9])])

    result = postprocess_detection(
        [raw], LETTERBOX, detector_manifest(), threshold_set(), class_filter={"crack", "undercut"}
    )

    assert [d.class_name for d in result.detections] == ["undercut"]
    assert result.defects == ["undercut"]


def test_request_max_detections_overrides_the_manifest():
    raw = yolo_head([(20 + 40 * i, 100, 20, 20, [0.9 - 0.1 * i, 0.0, 0.0]) for i in range(4)])

    result = postprocess_detection([raw], LETTERBOX, detector_manifest(), threshold_set(), max_detections=2)

    assert [round(d.confidence, 6) for d in result.detections] == [0.9, 0.8]


def test_yolo_head_with_a_different_class_count_is_refused():
    with pytest.raises(ValueError, match="2 class rows"):
        postprocess_detection([np.zeros((6, 10), np.float32)], LETTERBOX, detector_manifest(), threshold_set())


def test_torchvision_style_outputs_drop_the_background_class_and_apply_thresholds():
    manifest = detector_manifest("boxes_scores_labels", ["__background__", *DEFECTS], "__background__")
    boxes = np.array([[10, 50, 110, 150], [200, 60, 220, 80], [0, 40, 320, 280]], dtype=np.float32)
    scores = np.array([0.35, 0.4, 0.99], dtype=np.float32)
    labels = np.array([2, 1, 0], dtype=np.int64)  # crack (0.3), porosity (0.5), background

    result = postprocess_detection([boxes, scores, labels], LETTERBOX, manifest, threshold_set())

    assert [(d.class_name, d.class_id, d.box.xyxy) for d in result.detections] == [
        ("crack", 2, (20.0, 20.0, 220.0, 220.0))
    ]


def test_request_nms_iou_below_the_graphs_own_suppresses_more():
    manifest = detector_manifest("boxes_scores_labels", ["__background__", *DEFECTS], "__background__")
    boxes = np.array([[0, 40, 10, 50], [5, 40, 15, 50]], dtype=np.float32)  # IoU 1/3
    outputs = [boxes, np.array([0.9, 0.8], np.float32), np.array([2, 2])]

    assert len(postprocess_detection(outputs, LETTERBOX, manifest, threshold_set()).detections) == 2
    assert len(postprocess_detection(outputs, LETTERBOX, manifest, threshold_set(nms_iou=0.3)).detections) == 1


def test_torchvision_style_outputs_with_no_boxes_are_accepted():
    manifest = detector_manifest("boxes_scores_labels", ["__background__", *DEFECTS], "__background__")
    outputs = [np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)]

    result = postprocess_detection(outputs, LETTERBOX, manifest, threshold_set())

    assert (result.detections, result.decision) == ([], "accept")
