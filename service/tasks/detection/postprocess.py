"""Detection: raw detector outputs -> thresholded, de-duplicated boxes in original pixels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from service.manifest import ModelManifest, OutputDecoder
from service.pipeline.boxes import nms_per_class
from service.pipeline.geometry import Geometry
from service.tasks.base import answer_header
from service.tasks.decision import in_review, request_thresholds, review_band, threshold_vector
from service.tasks.detection.answer import Box, Detection, DetectionAnswer
from service.thresholds.rules import ThresholdSet


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
                "need xyxy (n, 4), confidence (n,), class_id (n,); "
                f"got {xyxy.shape}, {confidence.shape}, {class_id.shape}"
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

    def best_per_class(self, classes: Sequence[str]) -> dict[str, float]:
        """Each class's highest confidence among these detections (classes without one left out)."""
        best: dict[str, float] = {}
        for class_id, confidence in zip(self.class_id.tolist(), self.confidence.tolist(), strict=True):
            name = classes[class_id]
            if confidence > best.get(name, float("-inf")):
                best[name] = confidence
        return best

    def nms_per_class(self, iou: float, max_detections: int) -> Detections:
        """Greedy NMS within each class, best first; a box goes when its IoU with a kept one exceeds `iou`."""
        return self._select(nms_per_class(self.xyxy, self.confidence, self.class_id, iou, max_detections))

    def to_original(self, geometry: Geometry) -> Detections:
        """Boxes in original-image pixels, clipped to the frame. Boxes left with no area (wholly in the
        letterbox padding) are dropped: they point at nothing in the image."""
        xyxy = geometry.boxes_to_original(self.xyxy)
        moved = Detections(xyxy, self.confidence, self.class_id)
        return moved._select((xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1]))

    def _select(self, index: np.ndarray) -> Detections:
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index])


def postprocess_detection(
    outputs: Sequence[np.ndarray],
    geometry: Geometry,
    manifest: ModelManifest,
    thresholds: ThresholdSet,
    max_detections: int | None = None,
    class_filter: Iterable[str] | None = None,
) -> DetectionAnswer:
    """One image's graph outputs (in `manifest.output.names` order, batch axis removed) -> its answer.

    `yolo`: one `[4 + C, A]` array. `boxes_scores_labels`: boxes, scores, labels; NMS runs again here
    too, so a request's NMS IoU below the graph's own still takes effect. The NMS IoU is the
    thresholds' (the manifest's when they carry none), `max_detections` defaults to the manifest's.
    """
    if manifest.output.decoder is OutputDecoder.YOLO:
        (raw,) = outputs
        if raw.shape[0] != 4 + len(manifest.classes):
            raise ValueError(f"yolo head has {raw.shape[0] - 4} class rows, manifest has {len(manifest.classes)}")
        detections = Detections.from_yolo(raw)
    else:
        boxes, scores, labels = outputs
        detections = Detections.from_boxes_scores_labels(boxes, scores, labels)
    active = request_thresholds(manifest, thresholds.values, class_filter)
    band = review_band(active, thresholds.review)
    # A class's score for its review band: its best detection's confidence (NMS never drops the best).
    best = detections.best_per_class(manifest.classes) if band else {}
    detections = (
        detections.filter_by_class_thresholds(threshold_vector(manifest.classes, active))
        .nms_per_class(
            manifest.nms_iou if thresholds.nms_iou is None else thresholds.nms_iou,
            manifest.max_detections if max_detections is None else max_detections,
        )
        .to_original(geometry)
    )
    found = [
        Detection.model_construct(
            class_name=manifest.classes[c],
            class_id=c,
            confidence=p,
            box=Box.model_construct(x1=x1, y1=y1, x2=x2, y2=y2),
        )
        for (x1, y1, x2, y2), p, c in zip(
            detections.xyxy.tolist(), detections.confidence.tolist(), detections.class_id.tolist(), strict=True
        )
    ]
    present = {d.class_name for d in found}
    defects = [c for c in manifest.classes if c in present]
    review = in_review(band, best, defects) if band else None
    return DetectionAnswer.model_construct(
        **answer_header(manifest, geometry, thresholds, defects, review), detections=found
    )
