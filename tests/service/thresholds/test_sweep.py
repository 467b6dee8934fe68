"""The threshold sweep on small cases worked out by hand, and the labelled sample layouts on real files."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from export.samples import write_sample_set
from export.synthetic import generate_weld
from service.manifest import ModelManifest
from service.tasks import HEADS
from service.tasks.classification.answer import ClassificationAnswer
from service.tasks.detection.answer import Box, Detection, DetectionAnswer
from service.tasks.segmentation.answer import Segment, SegmentationAnswer
from service.thresholds.samples import FolderFiles, SampleSetError, ZipFiles, read_samples
from service.thresholds.sweep import (
    ClassEvidence,
    Progress,
    SweepTally,
    Truth,
    choose_threshold,
    counts,
    threshold_grid,
)
from tests.service.manifests import make_manifest

CLASSES = ("no_defect", "porosity", "crack")
SEGMENTATION_CLASSES = ("background", "porosity", "crack")

# Six labelled images and the classifier's scores (no_defect, porosity, crack) for each.
LABELS = ["crack", "crack", "porosity", "no_defect", "crack", "no_defect"]
SCORES = [
    (0.05, 0.05, 0.90),
    (0.30, 0.30, 0.40),
    (0.05, 0.35, 0.60),
    (0.70, 0.20, 0.10),
    (0.70, 0.10, 0.20),
    (0.50, 0.05, 0.45),
]


def tally_for(manifest: ModelManifest) -> SweepTally:
    return SweepTally(manifest, HEADS[manifest.task].evidence(manifest))


# The sweep reads only an answer's scores, boxes or segments: the answers below carry only those.


def classification_answer(scores: dict[str, float]) -> ClassificationAnswer:
    return ClassificationAnswer.model_construct(scores=scores)


def detection_answer(found: list[tuple[str, float, tuple[float, float, float, float]]]) -> DetectionAnswer:
    detections = [
        Detection(
            class_name=name,
            class_id=CLASSES.index(name),
            confidence=score,
            box=Box(**dict(zip(("x1", "y1", "x2", "y2"), box, strict=True))),
        )
        for name, score, box in found
    ]
    return DetectionAnswer.model_construct(detections=detections)


def segmentation_answer(confidences: dict[str, float]) -> SegmentationAnswer:
    segments = [
        Segment.model_construct(class_name=name, class_id=SEGMENTATION_CLASSES.index(name), confidence=score)
        for name, score in confidences.items()
    ]
    return SegmentationAnswer.model_construct(segments=segments)


def classification_tally() -> SweepTally:
    tally = tally_for(make_manifest(classes=CLASSES))
    for label, scores in zip(LABELS, SCORES, strict=True):
        truth = Truth(present=frozenset({label}) - {"no_defect"}, label=label)
        tally.add(truth, classification_answer(dict(zip(CLASSES, scores, strict=True))))
    return tally


def at(curve, threshold: float) -> tuple[int, int, int]:
    index = int(np.flatnonzero(np.isclose(curve.thresholds, threshold))[0])
    return int(curve.tp[index]), int(curve.fp[index]), int(curve.fn[index])


def test_grid_runs_from_0_to_1_with_values_as_written():
    grid = threshold_grid(0.01)
    assert len(grid) == 101 and grid[0] == 0.0 and grid[-1] == 1.0
    assert grid[7] == 0.07 and grid[29] == 0.29
    assert threshold_grid(0.3).tolist() == [0.0, 0.3, 0.6, 0.9, 1.0]


def test_classification_counts_match_the_hand_worked_case():
    # crack positives score 0.9, 0.4, 0.2; the other images score 0.6, 0.1, 0.45.
    crack = counts(classification_tally().evidence()["crack"], threshold_grid(0.01))
    assert at(crack, 0.0) == (3, 3, 0)
    assert at(crack, 0.2) == (3, 2, 0)  # a score equal to the threshold is flagged, as in serving
    assert at(crack, 0.21) == (2, 2, 1)
    assert at(crack, 0.45) == (1, 2, 2)
    assert at(crack, 0.5) == (1, 1, 2)
    assert at(crack, 0.95) == (0, 0, 3)
    index = int(np.flatnonzero(np.isclose(crack.thresholds, 0.2))[0])
    assert crack.precision[index] == pytest.approx(0.6)
    assert crack.recall[index] == pytest.approx(1.0)
    assert crack.f1[index] == pytest.approx(0.75)
    assert np.isnan(crack.precision[-1]) and crack.recall[-1] == 0.0 and crack.f1[-1] == 0.0


def test_target_recall_proposes_the_highest_threshold_that_meets_it():
    crack = counts(classification_tally().evidence()["crack"], threshold_grid(0.01))
    choice = choose_threshold(crack, target_recall=0.99)
    assert (choice.threshold, choice.basis, choice.target_met) == (0.2, "target_recall", True)
    assert choose_threshold(crack, target_recall=0.6).threshold == 0.4


def test_without_a_target_the_middle_of_the_best_f1_plateau_is_proposed():
    evidence = classification_tally().evidence()
    # crack: F1 0.75 from 0.11 to 0.20 (ten grid values); porosity: F1 1 from 0.31 to 0.35.
    assert choose_threshold(counts(evidence["crack"], threshold_grid(0.01))).threshold == 0.16
    porosity = choose_threshold(counts(evidence["porosity"], threshold_grid(0.01)))
    assert (porosity.threshold, porosity.basis) == (0.33, "max_f1")


def test_report_shows_counts_at_current_and_proposed_sets_and_the_confusion():
    report = classification_tally().report(
        {"porosity": 0.5, "crack": 0.5}, revision=4, nms_iou=None, targets={"crack": 0.99}
    )
    assert report.proposal == {"porosity": 0.33, "crack": 0.2}
    crack = report.classes["crack"]
    assert crack.positives == 3
    assert (int(crack.at_current.tp[0]), int(crack.at_current.fp[0]), int(crack.at_current.fn[0])) == (1, 1, 2)
    assert (int(crack.at_proposal.tp[0]), int(crack.at_proposal.fp[0]), int(crack.at_proposal.fn[0])) == (3, 2, 0)
    # Decided label: the best-scored class reaching its threshold, else no_defect. Image 2 (porosity)
    # reaches both thresholds and goes to crack, its higher score; image 5 (no_defect) to crack at 0.45.
    labels, matrix = report.confusion
    assert labels == list(CLASSES)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 1], [0, 0, 3]]
    body = report.to_report().model_dump(mode="json")
    assert body["proposal"] == {
        "thresholds": {"porosity": 0.33, "crack": 0.2},
        "review_thresholds": {},  # no band asked for
        "expected_revision": 4,
    }
    assert body["classes"]["crack"]["proposed"] == {
        "threshold": 0.2,
        "basis": "target_recall",
        "target_recall": 0.99,
        "target_met": True,
        "precision": 0.6,
        "recall": 1.0,
        "f1": 0.75,
        "tp": 3,
        "fp": 2,
        "fn": 0,
    }
    assert body["classes"]["crack"]["current"]["precision"] == 0.5
    assert body["classes"]["crack"]["curve"]["precision"][-1] is None  # nothing flagged at 1.0: JSON null, not NaN
    json.dumps(body, allow_nan=False)


def detection_tally() -> SweepTally:
    manifest = make_manifest(name="weld-detector", task="detection", classes=CLASSES)
    images = [
        (
            Truth(
                frozenset({"crack", "porosity"}),
                boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),
                box_classes=("crack", "porosity"),
            ),
            [
                ("crack", 0.9, (0, 0, 10, 10)),  # IoU 1: true positive
                ("crack", 0.8, (1, 0, 11, 10)),  # the same crack again: false positive
                ("crack", 0.7, (50, 50, 60, 60)),  # nothing there: false positive
                ("porosity", 0.6, (20, 20, 30, 40)),  # IoU exactly 0.5: true positive
            ],
        ),
        (
            Truth(frozenset({"crack"}), boxes=np.array([[0, 0, 10, 10]]), box_classes=("crack",)),
            [("crack", 0.95, (5, 0, 15, 10))],  # IoU 1/3: false positive, and the crack is missed
        ),
    ]
    tally = tally_for(manifest)
    for truth, found in images:
        tally.add(truth, detection_answer(found))
    return tally


def test_detection_counts_match_boxes_at_iou_one_half():
    evidence = detection_tally().evidence()
    crack = counts(evidence["crack"], threshold_grid(0.01))
    assert evidence["crack"].positives == 2
    assert at(crack, 0.5) == (1, 3, 1)
    assert at(crack, 0.85) == (1, 1, 1)  # the duplicate is gone; the first match stands
    assert at(crack, 0.92) == (0, 1, 2)
    assert at(crack, 0.96) == (0, 0, 2)
    porosity = counts(evidence["porosity"], threshold_grid(0.01))
    assert at(porosity, 0.6) == (1, 0, 0) and at(porosity, 0.61) == (0, 0, 1)


def test_an_unreachable_target_proposes_the_best_recall_and_says_so():
    crack = counts(detection_tally().evidence()["crack"], threshold_grid(0.01))
    choice = choose_threshold(crack, target_recall=0.99)
    assert (choice.threshold, choice.target_met) == (0.9, False)  # recall 0.5 is the most there is


def test_segmentation_decides_per_image_and_a_class_without_pixels_is_never_flagged():
    manifest = make_manifest(name="weld-segmenter", task="segmentation", classes=SEGMENTATION_CLASSES)
    tally = tally_for(manifest)
    for present, segments in [
        ({"crack"}, {"crack": 0.8, "porosity": 0.4}),
        (set(), {"porosity": 0.6}),
        ({"crack", "porosity"}, {"crack": 0.3}),
    ]:
        tally.add(Truth(frozenset(present)), segmentation_answer(segments))
    evidence = tally.evidence()
    crack = counts(evidence["crack"], np.array([0.0, 0.5, 0.9]))
    assert (crack.tp.tolist(), crack.fp.tolist(), crack.fn.tolist()) == ([2, 1, 0], [0, 0, 0], [0, 1, 2])
    porosity = counts(evidence["porosity"], np.array([0.0, 0.5]))
    assert (porosity.tp.tolist(), porosity.fp.tolist(), porosity.fn.tolist()) == ([0, 0], [2, 1], [1, 1])


def test_a_class_without_labelled_positives_keeps_its_current_threshold():
    evidence = ClassEvidence(scores=np.array([0.2, 0.7]), hits=np.array([False, False]), positives=0)
    assert choose_threshold(counts(evidence, threshold_grid(0.1))) is None
    tally = tally_for(make_manifest(classes=CLASSES))
    tally.add(
        Truth(frozenset(), label="no_defect"),
        classification_answer({"no_defect": 0.9, "porosity": 0.05, "crack": 0.05}),
    )
    report = tally.report({"porosity": 0.42, "crack": 0.37}, revision=1, nms_iou=None)
    assert report.proposal == {"porosity": 0.42, "crack": 0.37}
    assert report.classes["crack"].choice.basis == "unchanged"


def test_targets_for_unknown_classes_are_refused():
    with pytest.raises(ValueError, match="unknown defect classes"):
        classification_tally().report({"porosity": 0.5, "crack": 0.5}, 1, None, targets={"no_defect": 0.9})


def test_progress_reports_count_rate_and_time_left():
    lines: list[str] = []
    progress = Progress(3, lines.append, every_s=3600)
    progress.advance()
    progress.advance()
    assert lines == []  # not yet due
    progress.advance()
    assert (
        len(lines) == 1
        and lines[0].startswith("3/3 images, ")
        and "img/s" in lines[0]
        and lines[0].endswith("~0 s left")
    )


# --- labelled sample sets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "classes"),
    [
        ("classification", ("no_defect", "porosity", "crack", "undercut")),
        ("detection", ("no_defect", "porosity", "crack", "undercut")),
        ("segmentation", ("background", "porosity", "crack", "undercut")),
    ],
)
def test_written_sample_sets_read_back_with_the_generators_labels(tmp_path: Path, task, classes):
    manifest = make_manifest(task=task, classes=classes)
    write_sample_set(tmp_path / "set", task, count=6, seed=5, width=160, height=128)
    samples = read_samples(FolderFiles(tmp_path / "set"), manifest, HEADS[manifest.task].read_labels)
    rng = np.random.default_rng(5)
    drawn = [generate_weld(rng, 160, 128) for _ in range(6)]
    by_index = {int(Path(s.name).stem): s.truth for s in samples}
    assert sorted(by_index) == list(range(6))
    for index, weld in enumerate(drawn):
        truth = by_index[index]
        assert truth.present == (frozenset({weld.label}) - {"no_defect"})
        if task == "classification":
            assert truth.label == weld.label
        if task == "detection":
            np.testing.assert_allclose(truth.boxes, weld.boxes, atol=0.01)
            assert list(truth.box_classes) == weld.box_labels


def test_a_zip_with_one_top_level_folder_reads_like_the_folder(tmp_path: Path):
    manifest = make_manifest(task="detection")
    write_sample_set(tmp_path / "set", "detection", count=4, seed=9, width=160, height=128)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((tmp_path / "set").rglob("*")):
            if path.is_file():
                archive.write(path, f"set/{path.relative_to(tmp_path / 'set').as_posix()}")
        archive.writestr("__MACOSX/set/._labels.json", b"junk")
    from_zip = read_samples(
        ZipFiles(buffer.getvalue(), max_bytes=10**8, max_files=100), manifest, HEADS[manifest.task].read_labels
    )
    from_folder = read_samples(FolderFiles(tmp_path / "set"), manifest, HEADS[manifest.task].read_labels)
    assert [s.name for s in from_zip] == [s.name for s in from_folder]
    assert [s.truth.box_classes for s in from_zip] == [s.truth.box_classes for s in from_folder]


def test_a_zip_that_unpacks_over_the_limit_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("crack/a.png", bytes(200_000))
    with pytest.raises(SampleSetError, match="unpacks to 200000 bytes; the limit is 100000"):
        ZipFiles(buffer.getvalue(), max_bytes=100_000, max_files=10)


def test_layout_mistakes_name_the_file_and_the_fix(tmp_path: Path):
    classification = make_manifest()
    (tmp_path / "cls" / "scratch").mkdir(parents=True)
    (tmp_path / "cls" / "scratch" / "a.jpg").write_bytes(b"x")
    with pytest.raises(SampleSetError, match=r"scratch/a.jpg: folder 'scratch' is not a class of weld-classifier"):
        read_samples(FolderFiles(tmp_path / "cls"), classification, HEADS[classification.task].read_labels)

    detection = make_manifest(task="detection")
    write_sample_set(tmp_path / "det", "detection", count=2, seed=1, width=160, height=128)
    labels = json.loads((tmp_path / "det" / "labels.json").read_text())
    del labels["00001.jpg"]
    (tmp_path / "det" / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(SampleSetError, match=r"does not list \['00001.jpg'\]; give \[\] for an image without defects"):
        read_samples(FolderFiles(tmp_path / "det"), detection, HEADS[detection.task].read_labels)
