"""A shadow run's per-class agreement, on answers made by each head's own post-processing."""

import math

import numpy as np
import pytest

from service.manifest import ModelManifest
from service.pipeline.boxes import box_iou
from service.pipeline.geometry import Geometry
from service.tasks import head_for, parse_options
from service.tasks.base import Answer, ClassAgreement
from service.tasks.detection.agreement import MATCH_IOU, match_boxes
from service.tasks.segmentation.answer import Segment, SegmentationAnswer
from service.tasks.segmentation.postprocess import NO_CLASS
from service.thresholds.rules import ThresholdSet
from tests.service.manifests import (
    DEFECTS,
    classifier_manifest,
    detector_manifest,
    make_manifest,
    segmenter_manifest,
)

AGREE = ClassAgreement(decision=True, label=True, iou=None)


def answer(manifest: ModelManifest, outputs: list[np.ndarray], size: int) -> Answer:
    """The answer the manifest's head gives for `outputs` of a `size` x `size` frame at the same input size."""
    thresholds = ThresholdSet(revision=1, values=dict(manifest.thresholds), nms_iou=manifest.nms_iou)
    geometry = Geometry.stretch((size, size), (size, size))
    return head_for(manifest).postprocess(outputs, geometry, manifest, thresholds, parse_options(manifest, {}))


def compare(manifest: ModelManifest, active: Answer, candidate: Answer) -> dict[str, ClassAgreement]:
    return head_for(manifest).agreement(active, candidate, manifest)


# --- classification ------------------------------------------------------------------------------

CLASSIFIER = classifier_manifest()  # no_defect, porosity, crack, undercut; thresholds 0.5, 0.3, 0.5


def classified(*probabilities: float, manifest: ModelManifest = CLASSIFIER) -> Answer:
    return answer(manifest, [np.log(np.array(probabilities, dtype=np.float32))], 64)


def test_identical_classifications_agree_on_every_defect_class():
    active, candidate = classified(0.1, 0.6, 0.25, 0.05), classified(0.1, 0.6, 0.25, 0.05)
    assert (active.label, active.defects) == ("porosity", ["porosity"])

    assert compare(CLASSIFIER, active, candidate) == {c: AGREE for c in DEFECTS}


def test_classifications_disagree_on_the_label_only_for_the_two_top_classes():
    manifest = classifier_manifest(thresholds={"porosity": 0.3, "crack": 0.3, "undercut": 0.5})
    active = classified(0.1, 0.52, 0.33, 0.05, manifest=manifest)  # porosity; defects porosity, crack
    candidate = classified(0.1, 0.33, 0.52, 0.05, manifest=manifest)  # crack; the same defects
    assert (active.label, candidate.label) == ("porosity", "crack")
    assert active.defects == candidate.defects == ["porosity", "crack"]

    assert compare(manifest, active, candidate) == {
        "porosity": ClassAgreement(decision=True, label=False, iou=None),
        "crack": ClassAgreement(decision=True, label=False, iou=None),
        "undercut": AGREE,
    }


def test_classifications_disagree_on_the_decision_only_for_the_class_one_of_them_rejects():
    active = classified(0.1, 0.6, 0.25, 0.05)  # porosity; defects porosity
    candidate = classified(0.08, 0.55, 0.32, 0.05)  # porosity; defects porosity, crack
    assert candidate.defects == ["porosity", "crack"]

    assert compare(CLASSIFIER, active, candidate) == {
        "porosity": AGREE,
        "crack": ClassAgreement(decision=False, label=True, iou=None),
        "undercut": AGREE,
    }


def test_a_background_label_against_a_defect_label_disagrees_on_that_class_only():
    active = classified(0.7, 0.1, 0.1, 0.1)  # no_defect, no defects
    candidate = classified(0.3, 0.1, 0.05, 0.55)  # undercut
    assert (active.label, active.defects, candidate.label, candidate.defects) == (
        "no_defect",
        [],
        "undercut",
        ["undercut"],
    )

    assert compare(CLASSIFIER, active, candidate) == {
        "porosity": AGREE,
        "crack": AGREE,
        "undercut": ClassAgreement(decision=False, label=False, iou=None),
    }


# --- detection -----------------------------------------------------------------------------------

DETECTOR = detector_manifest()  # porosity, crack, undercut at 0.5; NMS IoU 0.5
POROSITY, CRACK, UNDERCUT = range(3)


def detected(*boxes: tuple[int, tuple[float, float, float, float]]) -> Answer:
    """An answer with these (class id, xyxy) boxes, each at 0.9, on a 320 x 320 frame."""
    anchors = []
    for class_id, (x1, y1, x2, y2) in boxes:
        scores = [0.0] * len(DEFECTS)
        scores[class_id] = 0.9
        anchors.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, *scores])
    raw = np.array(anchors, dtype=np.float32).reshape(-1, 4 + len(DEFECTS)).T
    found = answer(DETECTOR, [raw], 320)
    assert len(found.detections) == len(boxes)  # none lost to NMS or the frame
    return found


SQUARE = (0.0, 0.0, 100.0, 100.0)


def shifted(box: tuple[float, float, float, float], dx: float = 0.0, dy: float = 0.0):
    x1, y1, x2, y2 = box
    return x1 + dx, y1 + dy, x2 + dx, y2 + dy


def test_identical_detections_agree_with_iou_one_where_the_class_has_boxes():
    boxes = [(CRACK, SQUARE), (CRACK, shifted(SQUARE, 150, 150)), (UNDERCUT, shifted(SQUARE, 0, 200))]

    assert compare(DETECTOR, detected(*boxes), detected(*boxes)) == {
        "porosity": AGREE,
        "crack": ClassAgreement(decision=True, label=True, iou=1.0),
        "undercut": ClassAgreement(decision=True, label=True, iou=1.0),
    }


def test_a_box_shifted_to_iou_0_6_still_matches():
    # Shifted by 25 of its 100 px: intersection 75 x 100, union 125 x 100.
    result = compare(DETECTOR, detected((CRACK, SQUARE)), detected((CRACK, shifted(SQUARE, 25))))

    assert result["crack"].decision and result["crack"].label
    assert result["crack"].iou == pytest.approx(0.6)
    assert result["porosity"] == result["undercut"] == AGREE


def test_a_box_shifted_below_the_match_iou_disagrees_on_the_label_only():
    # Shifted by 50 of its 100 px: IoU 50 / 150.
    assert box_iou(np.array([SQUARE]), np.array([shifted(SQUARE, 50)]))[0, 0] == pytest.approx(1 / 3)
    assert 1 / 3 < MATCH_IOU

    result = compare(DETECTOR, detected((CRACK, SQUARE)), detected((CRACK, shifted(SQUARE, 50))))

    assert result["crack"] == ClassAgreement(decision=True, label=False, iou=None)


def test_an_extra_box_in_one_answer_disagrees_on_the_label():
    active = detected((CRACK, SQUARE))
    candidate = detected((CRACK, SQUARE), (CRACK, shifted(SQUARE, 200, 200)))

    assert compare(DETECTOR, active, candidate)["crack"] == ClassAgreement(decision=True, label=False, iou=1.0)
    assert compare(DETECTOR, candidate, active)["crack"] == ClassAgreement(decision=True, label=False, iou=1.0)


def test_the_iou_is_the_mean_over_the_matched_pairs():
    active = detected((CRACK, SQUARE), (CRACK, shifted(SQUARE, 200, 200)))
    # 0.6, and 90 x 100 over 110 x 100 (shifted by 10).
    candidate = detected((CRACK, shifted(SQUARE, 25)), (CRACK, shifted(SQUARE, 200, 210)))

    result = compare(DETECTOR, active, candidate)["crack"]

    assert result.label and result.iou == pytest.approx((0.6 + 90 / 110) / 2)


def test_boxes_of_other_classes_in_the_same_place_do_not_match():
    active = detected((CRACK, SQUARE))
    candidate = detected((POROSITY, SQUARE))

    assert compare(DETECTOR, active, candidate) == {
        "porosity": ClassAgreement(decision=False, label=False, iou=None),
        "crack": ClassAgreement(decision=False, label=False, iou=None),
        "undercut": AGREE,
    }
    both = detected((CRACK, SQUARE), (POROSITY, shifted(SQUARE, 5)))
    assert compare(DETECTOR, active, both)["crack"] == ClassAgreement(decision=True, label=True, iou=1.0)


def test_boxes_are_matched_greedily_best_overlap_first():
    # The candidate's box overlaps the active's first box at 75 / 125 and its second at 85 / 115: it is
    # the second's, and the first is left unmatched.
    active = detected((CRACK, SQUARE), (CRACK, shifted(SQUARE, 40)))
    candidate = detected((CRACK, shifted(SQUARE, 25)))

    result = compare(DETECTOR, active, candidate)["crack"]

    assert result == ClassAgreement(decision=True, label=False, iou=pytest.approx(85 / 115))


def test_match_boxes_takes_each_box_once():
    boxes = np.array([SQUARE, shifted(SQUARE, 40)])
    others = np.array([shifted(SQUARE, 25), shifted(SQUARE, 20)])  # both closer to the first box than 0.5

    np.testing.assert_allclose(sorted(match_boxes(boxes, others)), sorted([85 / 115, 80 / 120]))
    assert match_boxes(np.zeros((0, 4)), others).shape == (0,)


# --- segmentation --------------------------------------------------------------------------------

SEGMENTER = segmenter_manifest()  # background, porosity, crack, undercut; 64 x 64 input
SEG_POROSITY, SEG_CRACK, SEG_UNDERCUT = 1, 2, 3


def segmented(*regions: tuple[int, slice, slice]) -> Answer:
    """An answer in which each (class id, rows, cols) region is its class's (at 0.8), on a 64 x 64 frame."""
    logits = np.zeros((4, 64, 64), dtype=np.float32)
    logits[0] = math.log(10)  # the background wins elsewhere
    for class_id, rows, cols in regions:
        logits[:, rows, cols] = 0.0
        logits[class_id, rows, cols] = math.log(12)  # 12 / 15
    return answer(SEGMENTER, [logits], 64)


def test_identical_segmentations_agree_with_iou_one_where_the_class_has_pixels():
    regions = [(SEG_CRACK, slice(0, 20), slice(0, 20)), (SEG_UNDERCUT, slice(40, 50), slice(40, 60))]
    active, candidate = segmented(*regions), segmented(*regions)
    assert active.defects == ["crack", "undercut"] and active is not candidate

    assert compare(SEGMENTER, active, candidate) == {
        "porosity": AGREE,
        "crack": ClassAgreement(decision=True, label=True, iou=1.0),
        "undercut": ClassAgreement(decision=True, label=True, iou=1.0),
    }


def test_overlapping_squares_agree_at_an_iou_of_0_6():
    # 20 x 20 squares 5 columns apart: 20 x 15 shared, 400 + 400 - 300 in all.
    active = segmented((SEG_CRACK, slice(0, 20), slice(0, 20)))
    candidate = segmented((SEG_CRACK, slice(0, 20), slice(5, 25)))

    result = compare(SEGMENTER, active, candidate)

    assert result["crack"] == ClassAgreement(decision=True, label=True, iou=300 / 500)
    assert result["porosity"] == result["undercut"] == AGREE


def test_squares_overlapping_below_the_match_iou_disagree_on_the_label():
    # 10 columns apart: 20 x 10 shared, 600 in all.
    active = segmented((SEG_CRACK, slice(0, 20), slice(0, 20)))
    candidate = segmented((SEG_CRACK, slice(0, 20), slice(10, 30)))

    assert compare(SEGMENTER, active, candidate)["crack"] == ClassAgreement(decision=True, label=False, iou=200 / 600)


def test_pixels_of_another_class_do_not_count():
    active = segmented((SEG_CRACK, slice(0, 20), slice(0, 20)))
    candidate = segmented((SEG_CRACK, slice(0, 20), slice(0, 10)), (SEG_POROSITY, slice(0, 20), slice(10, 20)))

    assert compare(SEGMENTER, active, candidate) == {
        "porosity": ClassAgreement(decision=False, label=False, iou=0.0),
        "crack": ClassAgreement(decision=True, label=True, iou=200 / 400),
        "undercut": AGREE,
    }


def test_an_answer_without_defects_has_no_pixel_of_any_class():
    empty = segmented()
    assert empty.defects == [] and empty.class_map is None  # the post-processing keeps no map then

    assert compare(SEGMENTER, empty, segmented()) == {c: AGREE for c in DEFECTS}
    assert compare(SEGMENTER, empty, segmented((SEG_CRACK, slice(0, 20), slice(0, 20))))["crack"] == ClassAgreement(
        decision=False, label=False, iou=0.0
    )


def _segment(class_name: str) -> Segment:
    return Segment.model_validate(
        {
            "class_name": class_name,
            "class_id": SEGMENTER.classes.index(class_name),
            "confidence": 0.9,
            "area_px": 1,
            "area_fraction": 0.1,
            "components": [],
            "mask": {"size": [1, 1], "counts": "01"},
        }
    )


def test_answers_without_a_class_map_compare_the_classes_present():
    made = segmented((SEG_CRACK, slice(0, 20), slice(0, 20)))
    read = SegmentationAnswer.model_validate(made.model_dump())  # its JSON keeps no map
    assert read.class_map is None and read.segments

    other = SegmentationAnswer.model_validate({**made.model_dump(), "segments": [_segment("porosity")]})
    assert compare(SEGMENTER, made, read) == {
        "porosity": AGREE,
        "crack": ClassAgreement(decision=True, label=True, iou=None),
        "undercut": AGREE,
    }
    assert compare(SEGMENTER, read, other) == {
        "porosity": ClassAgreement(decision=True, label=False, iou=None),  # `defects` are the same
        "crack": ClassAgreement(decision=True, label=False, iou=None),
        "undercut": AGREE,
    }


def test_full_size_frames_give_the_exact_mask_iou():
    height, width = 2048, 2448
    active_map = np.full((height, width), NO_CLASS, dtype=np.uint8)
    candidate_map = active_map.copy()
    active_map[100:300, 100:300] = SEG_CRACK  # 200 x 200
    candidate_map[150:350, 100:300] = SEG_CRACK  # 50 rows lower: 150 x 200 shared
    candidate_map[1000:1010, 2000:2010] = SEG_UNDERCUT
    answers = []
    for class_map, classes in ((active_map, ["crack"]), (candidate_map, ["crack", "undercut"])):
        made = SegmentationAnswer.model_validate(
            {
                **segmented().model_dump(),
                "defects": classes,
                "decision": "reject",
                "segments": [_segment(c) for c in classes],
            }
        )
        made._class_map = class_map
        answers.append(made)

    assert compare(SEGMENTER, *answers) == {
        "porosity": AGREE,
        "crack": ClassAgreement(decision=True, label=True, iou=30_000 / 50_000),
        "undercut": ClassAgreement(decision=False, label=False, iou=0.0),
    }


def test_class_maps_of_different_sizes_are_refused():
    active = segmented((SEG_CRACK, slice(0, 20), slice(0, 20)))
    candidate = segmented((SEG_CRACK, slice(0, 20), slice(0, 20)))
    candidate._class_map = candidate.class_map[:32]

    with pytest.raises(ValueError, match="different frames"):
        compare(SEGMENTER, active, candidate)


# --- every task ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_the_entries_are_the_defect_classes_in_the_manifests_order(task):
    classes = ["bg", "undercut", "porosity", "crack", "spatter"]
    manifest = make_manifest(task=task, classes=classes)
    outputs = {
        "classification": [np.zeros(5, dtype=np.float32)],
        "detection": [np.zeros((9, 4), dtype=np.float32)],
        "segmentation": [np.zeros((5, 64, 64), dtype=np.float32)],
    }[task]
    made = answer(manifest, outputs, 64)

    result = compare(manifest, made, made)

    assert list(result) == ["undercut", "porosity", "crack", "spatter"] == manifest.defect_classes
    assert all(isinstance(entry, ClassAgreement) and entry.decision and entry.label for entry in result.values())
