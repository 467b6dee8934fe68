"""What a task head is: the pieces of the service that differ from one task to another.

Everything else (decoding, preprocessing, batching, the onnxruntime session, the threshold store, the
sweep's curves and proposals) is the same for every task and takes its head as a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.manifest import ModelManifest
from service.pipeline.geometry import Geometry
from service.pipeline.postprocess.segmentation import MaskFormat
from service.thresholds.rules import ThresholdSet
from service.thresholds.samples import LabelledImage, SampleFiles
from service.thresholds.sweep import ClassEvidence, Truth


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


class TaskEvidence(Protocol):
    """Scores a sweep's answers (predictions at threshold 0) against the labels, image by image."""

    positive: str  # what one positive is, as the sweep's report states it

    def add(self, truth: Truth, answer: Mapping[str, Any]) -> None: ...

    def evidence(self, truths: list[Truth]) -> dict[str, ClassEvidence]: ...

    def confusion(self, truths: list[Truth], proposed: Mapping[str, float]) -> tuple[list[str], np.ndarray] | None: ...


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
    ) -> TaskResult:
        """One image's model outputs -> its answer, with the accept/reject decision."""
        ...

    def read_labels(self, names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
        """The labelled images of a sample set in this task's layout (`service.thresholds.samples`)."""
        ...

    def evidence(self, manifest: ModelManifest) -> TaskEvidence:
        """A fresh scorer of a sweep's answers for `manifest`."""
        ...
