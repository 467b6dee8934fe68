"""Detection's shadow-run agreement: the class's boxes of the two answers, matched one to one.

Two versions agree on a class when each box of one has its own box in the other: pairs are taken
greedily, the best-overlapping first, and a pair needs an IoU of `MATCH_IOU`. Their confidences play
no part: the two versions' scores need not be on the same scale, and the boxes are already the
thresholded ones each version would answer with.
"""

from __future__ import annotations

import numpy as np

from service.manifest import ModelManifest
from service.pipeline.boxes import box_iou
from service.tasks.base import ClassAgreement
from service.tasks.detection.answer import DetectionAnswer

# The IoU at which two boxes are the same defect, as when the sweeps match detections to labelled boxes.
MATCH_IOU = 0.5


def match_boxes(boxes: np.ndarray, others: np.ndarray, min_iou: float = MATCH_IOU) -> np.ndarray:
    """(n, 4) and (m, 4) xyxy boxes -> the IoUs of their one-to-one matches, greedily by IoU, best first,
    each at least `min_iou` (ties: in row-major order)."""
    overlaps = box_iou(boxes, others)
    rows, cols = np.nonzero(overlaps >= min_iou)
    candidates = overlaps[rows, cols]
    taken_rows, taken_cols, matched = set(), set(), []
    for index in np.argsort(-candidates, kind="stable"):
        row, col = int(rows[index]), int(cols[index])
        if row not in taken_rows and col not in taken_cols:
            taken_rows.add(row)
            taken_cols.add(col)
            matched.append(candidates[index])
    return np.asarray(matched, dtype=np.float64)


def _boxes(answer: DetectionAnswer, class_name: str) -> np.ndarray:
    boxes = [d.box.xyxy for d in answer.detections if d.class_name == class_name]
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def agreement(
    active: DetectionAnswer, candidate: DetectionAnswer, manifest: ModelManifest
) -> dict[str, ClassAgreement]:
    """Per defect class of `manifest`, in its order: how `candidate` compares with `active`."""
    found = {}
    for c in manifest.defect_classes:
        mine, theirs = _boxes(active, c), _boxes(candidate, c)
        matched = match_boxes(mine, theirs)
        found[c] = ClassAgreement(
            decision=(c in active.defects) == (c in candidate.defects),
            label=len(matched) == len(mine) == len(theirs),
            iou=float(matched.mean()) if len(matched) else None,
        )
    return found
