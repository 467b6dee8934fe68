"""Quality metrics on labelled images: confusion, recall/precision, detection AP, mask IoU.

Pure numpy, so that both the demo training (in `export`) and the QA tools in the service
measure models the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.pipeline.boxes import box_iou


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts indexed [true class, predicted class], for image labels or mask pixels alike."""
    truth = np.asarray(truth, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"{truth.size} true labels but {predicted.size} predictions")
    counts = np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / confusion.sum())


def recall_per_class(confusion: np.ndarray) -> np.ndarray:
    """Share of each class's samples predicted as that class; NaN for a class with no samples."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / confusion.sum(axis=1)


def precision_per_class(confusion: np.ndarray) -> np.ndarray:
    """Share of each class's predictions that were right; NaN for a class never predicted."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / confusion.sum(axis=0)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union per class, TP / (TP + FP + FN); NaN where a class is in neither."""
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return true_positive / union


def match_detections(
    boxes: np.ndarray, scores: np.ndarray, truth_boxes: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """Which detections (of one class, in one image) are true positives, VOC style.

    In descending score order each detection takes the ground-truth box it overlaps most; it is
    a true positive when that overlap reaches `iou_threshold` and the box was not taken already
    (a second detection of the same object is a false positive).
    """
    hits = np.zeros(len(scores), dtype=bool)
    if len(truth_boxes) == 0 or len(scores) == 0:
        return hits
    overlaps = box_iou(boxes, truth_boxes)
    taken = np.zeros(len(truth_boxes), dtype=bool)
    for index in np.argsort(-np.asarray(scores), kind="stable"):
        best = int(np.argmax(overlaps[index]))
        if overlaps[index, best] >= iou_threshold and not taken[best]:
            taken[best] = hits[index] = True
    return hits


def average_precision(scores: np.ndarray, true_positive: np.ndarray, num_truths: int) -> float:
    """Area under the precision-recall curve, VOC all-point interpolation; NaN without ground truth."""
    if num_truths == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(true_positive, dtype=bool)[order]
    cumulative_hits = np.cumsum(hits)
    recall = cumulative_hits / num_truths
    precision = cumulative_hits / np.arange(1, len(hits) + 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    # Interpolate: precision at recall r is the best precision at any recall >= r.
    precision = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def average_precision_per_class(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    truths: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """AP per class over a set of images; NaN for a class with no ground-truth box.

    `predictions[i]` is image i's (xyxy (n, 4), confidence (n,), class_id (n,)), after NMS;
    `truths[i]` is its (xyxy (m, 4), class_id (m,)). mAP@0.5 is the nanmean of the result.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predicted images but {len(truths)} labelled ones")
    per_class = []
    for class_id in range(num_classes):
        scores, hits, num_truths = [], [], 0
        for (boxes, confidence, predicted_class), (truth_boxes, truth_class) in zip(predictions, truths):
            mine = np.asarray(predicted_class) == class_id
            theirs = np.asarray(truth_boxes).reshape(-1, 4)[np.asarray(truth_class) == class_id]
            scores.append(np.asarray(confidence)[mine])
            hits.append(match_detections(np.asarray(boxes).reshape(-1, 4)[mine], scores[-1], theirs, iou_threshold))
            num_truths += len(theirs)
        per_class.append(average_precision(np.concatenate(scores), np.concatenate(hits), num_truths))
    return np.array(per_class)
