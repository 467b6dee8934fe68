"""One head per task: how one image's model outputs become its answer, and where that work runs.

The predictor runs the same steps for every task (decode, preprocess, batch, infer); only this last
step differs. A new task is one head here (with its post-processing module) and one response schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.manifest import ModelManifest, Task
from service.pipeline.geometry import Geometry
from service.pipeline.postprocess import postprocess_classification, postprocess_detection, postprocess_segmentation
from service.pipeline.postprocess.segmentation import MaskFormat
from service.thresholds.rules import ThresholdSet


@dataclass(frozen=True)
class PredictionOptions:
    """One request's options for post-processing (read from its query by `service.api.query`)."""

    thresholds: dict[str, float]  # overrides of the active per-class thresholds
    nms_iou: float | None = None
    classes: frozenset[str] | None = None  # report only these defect classes
    max_detections: int | None = None
    mask_format: MaskFormat = "rle"


class TaskResult(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class TaskHead(Protocol):
    # True when post-processing takes tens of microseconds: cheaper on the event loop than a hand-off
    # to a thread, where it would queue behind other requests' decoding.
    on_event_loop: bool

    def postprocess(
        self,
        outputs: list[np.ndarray],
        geometry: Geometry,
        manifest: ModelManifest,
        thresholds: ThresholdSet,
        options: PredictionOptions,
    ) -> TaskResult: ...


@dataclass(frozen=True)
class ClassificationHead:
    on_event_loop: bool = True

    def postprocess(self, outputs, geometry, manifest, thresholds, options) -> TaskResult:
        return postprocess_classification(outputs[0], manifest, thresholds.values, options.classes)


@dataclass(frozen=True)
class DetectionHead:
    on_event_loop: bool = False

    def postprocess(self, outputs, geometry, manifest, thresholds, options) -> TaskResult:
        return postprocess_detection(
            outputs,
            geometry,
            manifest,
            thresholds.values,
            nms_iou=thresholds.nms_iou,
            max_detections=options.max_detections,
            class_filter=options.classes,
        )


@dataclass(frozen=True)
class SegmentationHead:
    on_event_loop: bool = False

    def postprocess(self, outputs, geometry, manifest, thresholds, options) -> TaskResult:
        return postprocess_segmentation(
            outputs[0], geometry, manifest, thresholds.values, options.mask_format, options.classes
        )


HEADS: dict[Task, TaskHead] = {
    Task.CLASSIFICATION: ClassificationHead(),
    Task.DETECTION: DetectionHead(),
    Task.SEGMENTATION: SegmentationHead(),
}
