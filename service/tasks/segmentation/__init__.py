"""Segmentation: per defect class its mask at the frame's size, area and connected components."""

from __future__ import annotations

from typing import ClassVar

from service.manifest import OutputDecoder, Task
from service.tasks.segmentation import agreement, samples, tensors
from service.tasks.segmentation.answer import SegmentationAnswer
from service.tasks.segmentation.options import SegmentationOptions
from service.tasks.segmentation.postprocess import postprocess_segmentation


class SegmentationHead:
    task: ClassVar[Task] = Task.SEGMENTATION
    decoders: ClassVar[frozenset[OutputDecoder]] = frozenset({OutputDecoder.SEGMENTATION_LOGITS})
    carries_nms: ClassVar[bool] = False
    on_event_loop: ClassVar[bool] = False
    options: ClassVar[type[SegmentationOptions]] = SegmentationOptions
    answer: ClassVar[type[SegmentationAnswer]] = SegmentationAnswer

    def postprocess(self, outputs, geometry, manifest, thresholds, options: SegmentationOptions) -> SegmentationAnswer:
        return postprocess_segmentation(
            outputs[0], geometry, manifest, thresholds, options.mask_format, options.class_filter
        )

    agreement = staticmethod(agreement.agreement)
    read_labels = staticmethod(samples.read_segmentation_labels)
    evidence = staticmethod(samples.SegmentationEvidence)
    output_specs = staticmethod(tensors.output_specs)
    output_tensors = staticmethod(tensors.output_tensors)
