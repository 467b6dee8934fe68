"""Segmentation: per defect class its mask at the frame's size, area and connected components."""

from __future__ import annotations

from typing import ClassVar

from service.heatmaps import HeatmapMethod
from service.manifest import OutputDecoder, Task
from service.tasks.segmentation import agreement, samples, tensors
from service.tasks.segmentation.answer import SegmentationAnswer
from service.tasks.segmentation.options import SegmentationOptions
from service.tasks.segmentation.postprocess import class_probability, postprocess_segmentation


class SegmentationHead:
    task: ClassVar[Task] = Task.SEGMENTATION
    decoders: ClassVar[frozenset[OutputDecoder]] = frozenset({OutputDecoder.SEGMENTATION_LOGITS})
    carries_nms: ClassVar[bool] = False
    on_event_loop: ClassVar[bool] = False
    options: ClassVar[type[SegmentationOptions]] = SegmentationOptions
    answer: ClassVar[type[SegmentationAnswer]] = SegmentationAnswer
    score_unit: ClassVar[str] = "probability"

    def postprocess(self, outputs, geometry, manifest, thresholds, options: SegmentationOptions) -> SegmentationAnswer:
        return postprocess_segmentation(
            outputs[0], geometry, manifest, thresholds, options.mask_format, options.class_filter
        )

    def heatmap_methods(self, manifest) -> tuple[HeatmapMethod, ...]:  # see TaskHead
        return (HeatmapMethod.SCORES,)

    @staticmethod
    def score_map(outputs, manifest, geometry, candidates):  # see TaskHead
        return class_probability(outputs[0], manifest.classes, candidates)

    agreement = staticmethod(agreement.agreement)
    read_labels = staticmethod(samples.read_segmentation_labels)
    evidence = staticmethod(samples.SegmentationEvidence)
    output_specs = staticmethod(tensors.output_specs)
    output_tensors = staticmethod(tensors.output_tensors)
