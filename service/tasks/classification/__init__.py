"""Classification: one label per image, with every class's probability (softmax or sigmoid)."""

from __future__ import annotations

from typing import ClassVar

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

    def postprocess(self, outputs, geometry, manifest, thresholds, options) -> ClassificationAnswer:  # see TaskHead
        return postprocess_classification(outputs[0], geometry, manifest, thresholds, options.class_filter)

    agreement = staticmethod(agreement.agreement)
    read_labels = staticmethod(samples.read_classification_labels)
    evidence = staticmethod(samples.ClassificationEvidence)
    output_specs = staticmethod(tensors.output_specs)
    output_tensors = staticmethod(tensors.output_tensors)
