"""Box arithmetic, in one place: intersection over union, and class-aware non-maximum suppression.

Boxes are (n, 4) arrays of x1, y1, x2, y2. Post-processing (NMS) and the sweeps (matching detections
to labelled boxes) both use these.
"""

from __future__ import annotations

import numpy as np


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(n, 4) and (m, 4) xyxy boxes -> (n, m) intersection over union."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


def nms_per_class(
    xyxy: np.ndarray, confidence: np.ndarray, class_id: np.ndarray, iou: float, max_kept: int
) -> np.ndarray:
    """Greedy NMS within each class, best first: the indices of the boxes kept, at most `max_kept`. A
    box goes when its IoU with a kept box of its class exceeds `iou`."""
    order = np.argsort(-confidence, kind="stable")
    if not len(order):
        return order
    boxes = xyxy[order].astype(np.float64)
    # Shifting each class into its own far-apart region makes one NMS pass class-aware.
    low, span = boxes.min(), boxes.max() - boxes.min() + 1.0
    boxes += (class_id[order] * span)[:, None] - low
    keep: list[int] = []
    remaining = np.arange(len(order))
    while remaining.size and len(keep) < max_kept:
        best, rest = remaining[0], remaining[1:]
        keep.append(best)
        remaining = rest[box_iou(boxes[best], boxes[rest])[0] <= iou]
    return order[keep]
