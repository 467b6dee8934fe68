"""Classification's answers as tensors (the Open Inference Protocol's outputs)."""

from __future__ import annotations

import numpy as np

from service.manifest import ModelManifest
from service.tasks.base import TensorSpec, bytes_tensor
from service.tasks.classification.answer import ClassificationAnswer
from service.tensors import Tensor


def output_specs(manifest: ModelManifest) -> list[TensorSpec]:
    return [
        TensorSpec(name="scores", datatype="FP32", shape=[-1, len(manifest.classes)]),
        TensorSpec(name="label", datatype="BYTES", shape=[-1]),
    ]


def output_tensors(manifest: ModelManifest, answers: list[ClassificationAnswer | None]) -> list[Tensor]:
    """`scores` [N, classes] in class order and `label` [N]; a failed image's row is zeros and ''."""
    scores = np.zeros((len(answers), len(manifest.classes)), dtype=np.float32)
    for row, answer in zip(scores, answers, strict=True):
        if answer is not None:
            row[:] = [answer.scores[name] for name in manifest.classes]
    labels = [b"" if answer is None else answer.label.encode() for answer in answers]
    return [Tensor("scores", "FP32", scores), bytes_tensor("label", labels)]
