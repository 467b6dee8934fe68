"""Detection: boxes of defects in original-image pixels, with per-class thresholds and NMS."""

from __future__ import annotations

from typing import ClassVar

from service.heatmaps import HeatmapMethod
from service.manifest import OutputDecoder, Task
from service.tasks.detection import agreement, heatmap, samples, tensors
from service.tasks.detection.answer import DetectionAnswer
from service.tasks.detection.options import DetectionOptions
from service.tasks.detection.postprocess import postprocess_detection


class DetectionHead:
    task: ClassVar[Task] = Task.DETECTION
    decoders: ClassVar[frozenset[OutputDecoder]] = frozenset({OutputDecoder.BOXES_SCORES_LABELS, OutputDecoder.YOLO})
    carries_nms: ClassVar[bool] = True
    on_event_loop: ClassVar[bool] = False
    options: ClassVar[type[DetectionOptions]] = DetectionOptions
    answer: ClassVar[type[DetectionAnswer]] = DetectionAnswer
    score_unit: ClassVar[str] = "score of the grid cell"

    def postprocess(self, outputs, geometry, manifest, thresholds, options: DetectionOptions) -> DetectionAnswer:
        return postprocess_detection(
            outputs, geometry, manifest, thresholds, options.max_detections, options.class_filter
        )

    def heatmap_methods(self, manifest) -> tuple[HeatmapMethod, ...]:  # see TaskHead
        # A torchvision detector's graph ends in its boxes, after NMS: no grid of scores to show.
        return (HeatmapMethod.SCORES,) if manifest.output.decoder is OutputDecoder.YOLO else ()

    score_map = staticmethod(heatmap.grid_scores)
    agreement = staticmethod(agreement.agreement)
    read_labels = staticmethod(samples.read_detection_labels)
    evidence = staticmethod(samples.DetectionEvidence)
    output_specs = staticmethod(tensors.output_specs)
    output_tensors = staticmethod(tensors.output_tensors)
