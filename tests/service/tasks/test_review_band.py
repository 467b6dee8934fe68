"""The review band in every task's decision: at and around both thresholds, with the class filter,
and answers without review thresholds exactly as before (no `review` field at all)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import InvalidParameters
from service.pipeline.geometry import Geometry
from service.tasks import parse_options
from service.tasks.classification.postprocess import postprocess_classification
from service.tasks.detection.postprocess import postprocess_detection
from service.tasks.segmentation.postprocess import postprocess_segmentation
from service.thresholds.rules import ThresholdSet, check_review
from tests.service.manifests import detector_manifest, make_manifest, segmenter_manifest

SQUARE = Geometry.letterbox((320, 320), (320, 320))
REJECT = {"porosity": 0.5, "crack": 0.5, "undercut": 0.5}


def band(review: dict[str, float], values: dict[str, float] = REJECT) -> ThresholdSet:
    return ThresholdSet(revision=3, values=dict(values), nms_iou=None, review=review)


def classification_logits(crack: float) -> np.ndarray:
    """Softmax logits with crack at probability `crack`, porosity and undercut at 0.01, the rest no defect."""
    probabilities = np.array([1 - crack - 0.02, 0.01, crack, 0.01], dtype=np.float64)
    return np.log(probabilities).astype(np.float32)


@pytest.mark.parametrize(
    ("crack", "decision", "review", "defects"),
    [
        (0.19, "accept", [], []),  # below the band
        (0.2, "review", ["crack"], []),  # at the review threshold
        (0.49, "review", ["crack"], []),  # just below the reject threshold
        (0.5, "reject", [], ["crack"]),  # at the reject threshold: it rejects, and is not in review
    ],
)
def test_a_classifier_decides_at_and_around_both_thresholds(crack, decision, review, defects):
    answer = postprocess_classification(classification_logits(crack), SQUARE, make_manifest(), band({"crack": 0.2}))
    assert (answer.decision, answer.review, answer.defects) == (decision, review, defects)
    assert answer.model_dump(mode="json")["review"] == review


def test_without_review_thresholds_the_answer_has_no_review_field_and_decides_as_before():
    for crack in (0.3, 0.6):
        answer = postprocess_classification(classification_logits(crack), SQUARE, make_manifest(), band({}))
        dumped = answer.model_dump(mode="json")
        assert "review" not in dumped and dumped["decision"] == ("reject" if crack >= 0.5 else "accept")


def test_a_reject_elsewhere_wins_over_a_class_in_its_band_and_the_class_filter_narrows_the_band():
    logits = np.log(np.array([0.1, 0.55, 0.3, 0.05])).astype(np.float32)  # porosity rejects, crack in band
    both = postprocess_classification(logits, SQUARE, make_manifest(), band({"crack": 0.2}))
    assert (both.decision, both.defects, both.review) == ("reject", ["porosity"], ["crack"])
    only_porosity = postprocess_classification(logits, SQUARE, make_manifest(), band({"crack": 0.2}), ["porosity"])
    assert (only_porosity.decision, only_porosity.review) == ("reject", None)  # no band among its classes
    only_crack = postprocess_classification(logits, SQUARE, make_manifest(), band({"crack": 0.2}), ["crack"])
    assert (only_crack.decision, only_crack.defects, only_crack.review) == ("review", [], ["crack"])


@pytest.mark.parametrize(
    ("confidence", "decision", "review", "kept"),
    [(0.29, "accept", [], 0), (0.3, "review", ["crack"], 0), (0.6, "reject", [], 1)],
)
def test_a_detector_decides_on_its_best_detection_of_each_class(confidence, decision, review, kept):
    manifest = detector_manifest("boxes_scores_labels")
    boxes = np.array([[10, 10, 60, 40], [100, 100, 120, 120]], dtype=np.float32)
    scores = np.array([confidence, confidence - 0.1], dtype=np.float32)
    labels = np.array([1, 1], dtype=np.int64)  # crack, twice
    values = {"porosity": 0.5, "crack": 0.55, "undercut": 0.5}
    answer = postprocess_detection([boxes, scores, labels], SQUARE, manifest, band({"crack": 0.3}, values))
    assert (answer.decision, answer.review, len(answer.detections)) == (decision, review, kept)


def test_a_segmenter_decides_on_each_class_s_best_pixel():
    logits = np.zeros((4, 320, 320), dtype=np.float32)
    logits[0] = math.log(10)  # background
    logits[:, 100:110, 100:130] = 0.0
    logits[2, 100:110, 100:130] = math.log(6)  # crack wins there at 6 / 9 = 0.667
    manifest = segmenter_manifest()
    in_band = postprocess_segmentation(logits, SQUARE, manifest, band({"crack": 0.6}, {**REJECT, "crack": 0.7}))
    assert (in_band.decision, in_band.review, in_band.segments) == ("review", ["crack"], [])
    above = postprocess_segmentation(logits, SQUARE, manifest, band({"crack": 0.6}, {**REJECT, "crack": 0.66}))
    assert (above.decision, above.review, [s.class_name for s in above.segments]) == ("reject", [], ["crack"])
    below = postprocess_segmentation(logits, SQUARE, manifest, band({"crack": 0.67}, {**REJECT, "crack": 0.7}))
    assert (below.decision, below.review) == ("accept", [])


def test_a_band_is_refused_above_its_reject_threshold_or_outside_0_to_1_or_for_an_unknown_class():
    check_review({"crack": 0.5}, REJECT)  # the band may be empty: review at the reject threshold
    for review, says in (
        ({"crack": 0.6}, "above its reject threshold"),
        ({"crack": -0.1}, "between 0 and 1"),
        ({"spatter": 0.1}, "not a defect class"),
    ):
        with pytest.raises(ValueError, match=says):
            check_review(review, REJECT)


def test_a_request_may_set_its_own_review_thresholds_within_its_reject_thresholds():
    manifest = make_manifest()
    active = band({"crack": 0.2})
    options = parse_options(manifest, {"review_thresholds": "porosity:0.1"})
    assert options.thresholds_for(active).review == {"crack": 0.2, "porosity": 0.1}
    both = parse_options(manifest, {"thresholds": "crack:0.3", "review_thresholds": "crack:0.25"})
    assert (both.thresholds_for(active).values["crack"], both.thresholds_for(active).review["crack"]) == (0.3, 0.25)
    # A reject threshold lowered below the active band's bottom: that class has no band on this request
    # (a sweep's predictions set every threshold to 0 and must not be refused for it).
    lowered = parse_options(manifest, {"thresholds": "crack:0.1"}).thresholds_for(active)
    assert (lowered.values["crack"], lowered.review["crack"]) == (0.1, 0.1)
    for given, says in (
        ({"review_thresholds": "crack:0.7"}, "above its reject threshold"),
        ({"review_thresholds": "spatter:0.1"}, "spatter"),
    ):
        with pytest.raises(InvalidParameters, match=says):
            parse_options(manifest, given).thresholds_for(active)
