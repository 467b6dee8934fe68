"""One head per task: where classification, detection and segmentation differ, each in one module.

A head holds its task's post-processing (model outputs -> answer, and whether that runs on the event
loop or in the pool), the layout of its labelled sample sets, and how a sweep scores its answers
against those labels. A new task is one module here (with its post-processing in
`service.pipeline.postprocess`) and one response schema.
"""

from __future__ import annotations

from service.manifest import Task
from service.tasks.classification import ClassificationHead
from service.tasks.detection import DetectionHead
from service.tasks.head import PredictionOptions, TaskEvidence, TaskHead, TaskResult
from service.tasks.segmentation import SegmentationHead

HEADS: dict[Task, TaskHead] = {
    Task.CLASSIFICATION: ClassificationHead(),
    Task.DETECTION: DetectionHead(),
    Task.SEGMENTATION: SegmentationHead(),
}

__all__ = ["HEADS", "PredictionOptions", "TaskEvidence", "TaskHead", "TaskResult"]
