"""Classification: one label per image, with every class's probability (softmax or sigmoid)."""

from __future__ import annotations

from typing import ClassVar

from service.heatmaps import HeatmapMethod
from service.manifest import OutputDecoder, Task
from service.tasks.base import PredictionOptions
from service.tasks.classification import agreement, samples, tensors
from service.tasks.classification.answer import ClassificationAnswer
from service.tasks.classification.postprocess import postprocess_classification


class ClassificationHead:
    task: ClassVar[Task] = Task.CLASSIFICATION
    decoders: ClassVar[frozenset[OutputDecoder]] = frozenset({OutputDecoder.SOFTMAX, OutputDecoder.SIGMOID})
    carries_nms: ClassVar[bool] = False
    on_event_loop: ClassVar[bool] = True
    options: ClassVar[type[PredictionOptions]] = PredictionOptions
    answer: ClassVar[type[ClassificationAnswer]] = ClassificationAnswer
    score_unit: ClassVar[str] = ""

    def postprocess(self, outputs, geometry, manifest, thresholds, options) -> ClassificationAnswer:  # see TaskHead
        return postprocess_classification(outputs[0], geometry, manifest, thresholds, options.class_filter)

    def heatmap_methods(self, manifest) -> tuple[HeatmapMethod, ...]:  # see TaskHead
        if manifest.activation_map is not None:
            return (HeatmapMethod.CAM, HeatmapMethod.OCCLUSION)
        return (HeatmapMethod.OCCLUSION,)

    def score_map(self, outputs, manifest, geometry, candidates):  # see TaskHead: a classifier's is cam or occlusion
        raise ValueError("a classifier has no score map")

    agreement = staticmethod(agreement.agreement)
    read_labels = staticmethod(samples.read_classification_labels)
    evidence = staticmethod(samples.ClassificationEvidence)
    output_specs = staticmethod(tensors.output_specs)
    output_tensors = staticmethod(tensors.output_tensors)
