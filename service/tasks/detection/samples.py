"""Detection's labelled samples and sweep evidence.

Labelled samples: `images/<image>` and `labels.json`, which lists every image by file name with its
labelled boxes in original-image pixels (x1, y1, x2, y2), `[]` for a clean part:
`{"0001.jpg": [{"class_name": "crack", "box": [412.0, 130.5, 470.0, 301.0]}], "0002.jpg": []}`.
A sweep scores detections: matched to labelled boxes of their class (VOC matching at IoU 0.5).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import PurePosixPath

import numpy as np

from service.manifest import ModelManifest
from service.tasks.detection.answer import DetectionAnswer
from service.thresholds.samples import (
    IMAGES_DIR,
    LABELS_FILE,
    LabelledImage,
    SampleFiles,
    SampleSetError,
    image_names,
)
from service.thresholds.sweep import MATCH_IOU, ClassEvidence, Truth, detection_evidence


def read_detection_labels(names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    if LABELS_FILE not in names:
        raise SampleSetError(f"detection samples need {LABELS_FILE} beside the {IMAGES_DIR}/ folder")
    try:
        labels = json.loads(files.read(LABELS_FILE))
    except ValueError as exc:
        raise SampleSetError(f"{LABELS_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(labels, dict):
        raise SampleSetError(f'{LABELS_FILE} must map image file names to box lists: {{"0001.jpg": [...]}}')
    images = {PurePosixPath(n).name: n for n in image_names(names, under=IMAGES_DIR)}
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise SampleSetError(f"{LABELS_FILE} does not list {unlabelled[:5]}; give [] for an image without defects")
    missing = sorted(set(labels) - set(images))
    if missing:
        raise SampleSetError(f"{LABELS_FILE} lists images not in {IMAGES_DIR}/: {missing[:5]}")
    samples = []
    for file_name, path in sorted(images.items()):
        boxes, classes = [], []
        for box in labels[file_name]:
            try:
                class_name, xyxy = box["class_name"], [float(v) for v in box["box"]]
            except (KeyError, TypeError, ValueError):
                raise SampleSetError(
                    f'{LABELS_FILE}, {file_name}: each box is {{"class_name": ..., "box": [x1, y1, x2, y2]}}, '
                    f"got {box!r}"
                ) from None
            if class_name not in manifest.defect_classes:
                raise SampleSetError(
                    f"{LABELS_FILE}, {file_name}: {class_name!r} is not a defect class of {manifest.name}"
                )
            if len(xyxy) != 4 or not (xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3]):
                raise SampleSetError(f"{LABELS_FILE}, {file_name}: box {xyxy} is not x1 < x2, y1 < y2")
            boxes.append(xyxy)
            classes.append(class_name)
        truth = Truth(
            present=frozenset(classes),
            boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
            box_classes=tuple(classes),
        )
        samples.append(LabelledImage(path, truth))
    return samples


class DetectionEvidence:
    """Box-level evidence: detections matched to labelled boxes."""

    positive = f"a labelled box of the class; a detection of it is a true positive at IoU >= {MATCH_IOU}"

    def __init__(self, manifest: ModelManifest) -> None:
        self.classes = manifest.defect_classes
        self._detections: list[tuple[np.ndarray, np.ndarray, list[str]]] = []

    def add(self, truth: Truth, answer: DetectionAnswer) -> None:
        found = answer.detections
        self._detections.append(
            (
                np.array([d.box.xyxy for d in found], dtype=np.float64).reshape(-1, 4),
                np.array([d.confidence for d in found], dtype=np.float64),
                [d.class_name for d in found],
            )
        )

    def evidence(self, truths: list[Truth]) -> dict[str, ClassEvidence]:
        return detection_evidence([(t.boxes, t.box_classes) for t in truths], self._detections, self.classes)

    def confusion(self, truths: list[Truth], proposed: Mapping[str, float]) -> None:
        return None
