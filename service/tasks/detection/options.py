"""The options only detection takes: the NMS IoU and the most boxes to answer."""

from __future__ import annotations

from pydantic import Field

from service.errors import InvalidParameters
from service.manifest import ModelManifest
from service.tasks.base import PredictionOptions
from service.thresholds.rules import ThresholdSet


class DetectionOptions(PredictionOptions):
    nms_iou: float | None = Field(
        default=None, ge=0.0, le=1.0, allow_inf_nan=False, description="NMS IoU override for this request."
    )
    max_detections: int | None = Field(default=None, ge=1, description="At most this many boxes.")

    def check(self, manifest: ModelManifest) -> None:
        super().check(manifest)
        if self.max_detections is not None and self.max_detections > manifest.max_detections:
            raise InvalidParameters(f"max_detections must lie between 1 and {manifest.max_detections}")

    def thresholds_for(self, active: ThresholdSet) -> ThresholdSet:
        chosen = super().thresholds_for(active)
        if self.nms_iou is None:
            return chosen
        return ThresholdSet(revision=chosen.revision, values=chosen.values, nms_iou=self.nms_iou, review=chosen.review)
