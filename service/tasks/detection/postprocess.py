"""Detection: raw detector outputs -> thresholded, de-duplicated boxes in original pixels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.manifest import ModelManifest, OutputDecoder, Task
from service.pipeline.geometry import Geometry, box_iou
from service.pipeline.postprocess.decision import (
    PIXEL_DIGITS,
    SCORE_DIGITS,
    Decided,
    decision_json,
    request_thresholds,
    threshold_vector,
)


@dataclass(frozen=True, eq=False)
class Detections:
    """n boxes of one image: `xyxy` (n, 4) float32, `confidence` (n,) float32, `class_id` (n,) int64."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        confidence = np.asarray(self.confidence, dtype=np.float32)
        class_id = np.asarray(self.class_id, dtype=np.int64)
        n = len(confidence)
        if xyxy.shape != (n, 4) or confidence.shape != (n,) or class_id.shape != (n,):
            raise ValueError(
                f"need xyxy (n, 4), confidence (n,), class_id (n,); got {xyxy.shape}, {confidence.shape}, {class_id.shape}"
            )
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "class_id", class_id)

    def __len__(self) -> int:
        return len(self.confidence)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    @classmethod
    def from_yolo(cls, raw: np.ndarray) -> Detections:
        """One image's raw YOLOv8-style head `[4 + C, A]`: cx, cy, w, h in input pixels, then C scores in 0..1.

        Each anchor proposes its best class only (YOLOv8's default, single-label NMS).
        """
        if raw.ndim != 2 or raw.shape[0] < 5:
            raise ValueError(f"expected a [4 + C, A] head for one image, got shape {raw.shape}")
        cx, cy, w, h = raw[:4]
        scores = raw[4:]
        class_id = scores.argmax(axis=0)
        confidence = np.take_along_axis(scores, class_id[None], axis=0)[0]
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return cls(xyxy, confidence, class_id)

    @classmethod
    def from_boxes_scores_labels(cls, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        """A torchvision-style graph's outputs for one image: xyxy input pixels, NMS already applied."""
        return cls(np.reshape(boxes, (-1, 4)), scores, labels)

    def filter_by_class_thresholds(self, thresholds: np.ndarray) -> Detections:
        """Keep boxes whose confidence reaches their class's threshold (`thresholds[class_id]`; +inf drops a class)."""
        if len(self) and (self.class_id.min() < 0 or self.class_id.max() >= len(thresholds)):
            raise ValueError(f"class ids outside 0..{len(thresholds) - 1}: the graph and its class list disagree")
        return self._select(self.confidence >= thresholds[self.class_id])

    def nms_per_class(self, iou: float, max_detections: int) -> Detections:
        """Greedy NMS within each class, best first; a box goes when its IoU with a kept one exceeds `iou`."""
        order = np.argsort(-self.confidence, kind="stable")
        if not len(order):
            return self
        boxes = self.xyxy[order].astype(np.float64)
        # Shifting each class into its own far-apart region makes one NMS pass class-aware.
        low, span = boxes.min(), boxes.max() - boxes.min() + 1.0
        boxes += (self.class_id[order] * span)[:, None] - low
        keep: list[int] = []
        remaining = np.arange(len(order))
        while remaining.size and len(keep) < max_detections:
            best, rest = remaining[0], remaining[1:]
            keep.append(best)
            remaining = rest[box_iou(boxes[best], boxes[rest])[0] <= iou]
        return self._select(order[keep])

    def to_original(self, geometry: Geometry) -> Detections:
        """Boxes in original-image pixels, clipped to the frame. Boxes left with no area (wholly in the
        letterbox padding) are dropped: they point at nothing in the image."""
        xyxy = geometry.boxes_to_original(self.xyxy)
        moved = Detections(xyxy, self.confidence, self.class_id)
        return moved._select((xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1]))

    def _select(self, index: np.ndarray) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index])


@dataclass(frozen=True)
class Detection:
    class_name: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels


@dataclass(frozen=True)
class DetectionResult(Decided):
    detections: list[Detection]  # best first
    defects: list[str]  # classes with at least one detection, in class order

    def to_json(self) -> dict[str, Any]:
        return {
            **decision_json(self.defects),
            "detections": [
                {
                    "class_name": d.class_name,
                    "class_id": d.class_id,
                    "confidence": round(d.confidence, SCORE_DIGITS),
                    "box": {k: round(v, PIXEL_DIGITS) for k, v in zip(("x1", "y1", "x2", "y2"), d.box, strict=True)},
                }
                for d in self.detections
            ],
        }


def postprocess_detection(
    outputs: Sequence[np.ndarray],
    geometry: Geometry,
    manifest: ModelManifest,
    thresholds: Mapping[str, float],
    nms_iou: float | None = None,
    max_detections: int | None = None,
    class_filter: Iterable[str] | None = None,
) -> DetectionResult:
    """One image's graph outputs (in `manifest.output.names` order, batch axis removed) -> DetectionResult.

    `yolo`: one `[4 + C, A]` array. `boxes_scores_labels`: boxes, scores, labels; NMS runs again here
    too, so a request's `nms_iou` below the graph's own still takes effect. `nms_iou` and
    `max_detections` default to the manifest's.
    """
    if manifest.task is not Task.DETECTION:
        raise ValueError(f"{manifest.ref} is a {manifest.task} model")
    if manifest.output.decoder is OutputDecoder.YOLO:
        (raw,) = outputs
        if raw.shape[0] != 4 + len(manifest.classes):
            raise ValueError(f"yolo head has {raw.shape[0] - 4} class rows, manifest has {len(manifest.classes)}")
        detections = Detections.from_yolo(raw)
    else:
        boxes, scores, labels = outputs
        detections = Detections.from_boxes_scores_labels(boxes, scores, labels)
    active = request_thresholds(manifest, thresholds, class_filter)
    detections = (
        detections.filter_by_class_thresholds(threshold_vector(manifest.classes, active))
        .nms_per_class(
            manifest.nms_iou if nms_iou is None else nms_iou,
            manifest.max_detections if max_detections is None else max_detections,
        )
        .to_original(geometry)
    )
    found = [
        Detection(manifest.classes[c], int(c), float(p), (float(x1), float(y1), float(x2), float(y2)))
        for (x1, y1, x2, y2), p, c in zip(detections.xyxy, detections.confidence, detections.class_id, strict=True)
    ]
    present = {d.class_name for d in found}
    return DetectionResult(found, [c for c in manifest.classes if c in present])
