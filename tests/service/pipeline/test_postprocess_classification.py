import math

import numpy as np
import pytest

from service.manifest import ModelManifest, OutputDecoder
from service.pipeline.geometry import Geometry
from service.tasks.classification.postprocess import class_scores, classify, postprocess_classification
from service.thresholds.rules import ThresholdSet

CLASSES = ["no_defect", "porosity", "crack", "undercut"]
THRESHOLDS = {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}
FRAME = Geometry.stretch((640, 480), (160, 160))
# The fields every task's answer starts with; the tests below compare the rest.
HEADER = ("model", "model_version", "task", "image", "thresholds_revision")


def weld_classifier(decoder: str = "softmax") -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": "weld-classifier",
            "version": 1,
            "task": "classification",
            "classes": CLASSES,
            "background_class": "no_defect",
            "input": {
                "name": "images",
                "channels": 1,
                "height": 160,
                "width": 160,
                "resize": "stretch",
                "dtype": "uint8",
                "mean": [0.5],
                "std": [0.25],
                "normalization_in_graph": True,
                "dynamic_batch": True,
            },
            "output": {"decoder": decoder, "names": ["logits"]},
            "thresholds": THRESHOLDS,
            "provenance": {"exporter": "dynamo", "source": "test", "created_at": "2026-11-01T00:00:00Z"},
        }
    )


def threshold_set(values: dict[str, float] = THRESHOLDS) -> ThresholdSet:
    return ThresholdSet(revision=1, values=values, nms_iou=None)


def classification_body(answer) -> dict:
    """The answer's wire form without the fields every task's answer starts with."""
    return {k: v for k, v in answer.model_dump(mode="json").items() if k not in HEADER}


def logits_for(probabilities: list[float]) -> np.ndarray:
    return np.log(np.array(probabilities, dtype=np.float32)) + 3.0  # softmax ignores the shift


def test_softmax_of_known_logits():
    scores = class_scores(np.array([0.0, math.log(2), math.log(3)]), OutputDecoder.SOFTMAX)

    np.testing.assert_allclose(scores, [1 / 6, 2 / 6, 3 / 6], rtol=1e-6)


def test_softmax_of_huge_logits_does_not_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        scores = class_scores(np.array([[1000.0, 1000.0 + math.log(3)]]), OutputDecoder.SOFTMAX)

    np.testing.assert_allclose(scores, [[0.25, 0.75]], atol=1e-4)  # float32 holds 1000 + ln 3 to ~6e-5


def test_sigmoid_of_known_logits_scores_each_class_on_its_own():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        scores = class_scores(np.array([0.0, math.log(3), -math.log(3), -1000.0, 1000.0]), OutputDecoder.SIGMOID)

    np.testing.assert_allclose(scores, [0.5, 0.75, 0.25, 0.0, 1.0], rtol=1e-6, atol=1e-12)


def test_decoder_without_class_scores_is_refused():
    with pytest.raises(ValueError, match="does not produce class scores"):
        class_scores(np.zeros(3), OutputDecoder.YOLO)


def test_low_crack_threshold_rejects_a_part_labelled_no_defect():
    result = postprocess_classification(logits_for([0.7, 0.02, 0.25, 0.03]), FRAME, weld_classifier(), threshold_set())

    assert result.label == "no_defect"
    assert result.confidence == pytest.approx(0.7, abs=1e-6)
    assert result.defects == ["crack"]
    assert result.decision == "reject"


def test_confident_no_defect_is_accepted():
    result = postprocess_classification(logits_for([0.94, 0.02, 0.02, 0.02]), FRAME, weld_classifier(), threshold_set())

    assert (result.label, result.defects, result.decision) == ("no_defect", [], "accept")


def test_score_equal_to_its_threshold_crosses_it():
    scores = np.array([0.25, 0.5, 0.0, 0.25], dtype=np.float32)

    best, defects = classify(scores, CLASSES, {"porosity": 0.5, "crack": 0.2, "undercut": 0.5})

    assert (best, defects) == (1, ["porosity"])


def test_background_class_never_rejects_however_confident():
    scores = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)

    best, defects = classify(scores, CLASSES, {"porosity": 0.0, "crack": 0.0, "undercut": 0.0})

    assert CLASSES[best] == "no_defect"
    assert defects == ["porosity", "crack", "undercut"]  # a 0 threshold always crosses
    assert "no_defect" not in defects


def test_every_defect_crossing_is_reported_in_class_order():
    result = postprocess_classification(
        logits_for([0.1, 0.3, 0.3, 0.3]),
        FRAME,
        weld_classifier(),
        threshold_set({"porosity": 0.25, "crack": 0.25, "undercut": 0.25}),
    )

    assert result.defects == ["porosity", "crack", "undercut"]


def test_class_filter_ignores_other_defects_in_the_decision():
    result = postprocess_classification(
        logits_for([0.1, 0.8, 0.05, 0.05]), FRAME, weld_classifier(), threshold_set(), class_filter={"crack"}
    )

    assert result.label == "porosity"
    assert (result.defects, result.decision) == ([], "accept")


def test_class_filter_naming_an_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown classes"):
        postprocess_classification(
            logits_for([0.25] * 4), FRAME, weld_classifier(), threshold_set(), class_filter={"rust"}
        )


def test_thresholds_missing_a_defect_class_are_refused():
    with pytest.raises(ValueError, match="undercut"):
        postprocess_classification(
            logits_for([0.25] * 4), FRAME, weld_classifier(), threshold_set({"porosity": 0.5, "crack": 0.2})
        )


def test_multi_label_sigmoid_model_can_reject_for_two_classes():
    logits = np.array([-2.0, math.log(3), math.log(3), -2.0])  # sigmoid: 0.119, 0.75, 0.75, 0.119

    result = postprocess_classification(logits, FRAME, weld_classifier("sigmoid"), threshold_set())

    assert result.label == "porosity"
    assert result.defects == ["porosity", "crack"]


def test_json_answer_has_label_rounded_scores_and_decision():
    logits = np.array([0.0, math.log(2), math.log(3), math.log(4)])  # softmax: 0.1, 0.2, 0.3, 0.4

    answer = postprocess_classification(logits, FRAME, weld_classifier(), ThresholdSet(7, THRESHOLDS, None))

    assert answer.scores["crack"] != 0.3  # full precision in the answer, rounded on the wire
    body = answer.model_dump(mode="json")
    assert {k: body[k] for k in HEADER} == {
        "model": "weld-classifier",
        "model_version": 1,
        "task": "classification",
        "image": {"width": 640, "height": 480},
        "thresholds_revision": 7,
    }
    assert classification_body(answer) == {
        "decision": "reject",
        "defects": ["crack"],
        "label": "undercut",
        "confidence": 0.4,
        "scores": {"no_defect": 0.1, "porosity": 0.2, "crack": 0.3, "undercut": 0.4},
    }


def test_scores_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="expected 4 scores"):
        postprocess_classification(np.zeros(3), FRAME, weld_classifier(), threshold_set())
