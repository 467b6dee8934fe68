"""Detection's answers as tensors (the Open Inference Protocol's outputs).

Images have different numbers of boxes: the rows are padded to the most boxes of any image in the
request, and `counts` says how many of each row are boxes (padding: zeros and class id -1).
"""

from __future__ import annotations

import numpy as np

from service.manifest import ModelManifest
from service.tasks.base import TensorSpec
from service.tasks.detection.answer import DetectionAnswer
from service.tensors import Tensor


def output_specs(manifest: ModelManifest) -> list[TensorSpec]:
    return [
        TensorSpec(name="boxes", datatype="FP32", shape=[-1, -1, 4]),
        TensorSpec(name="scores", datatype="FP32", shape=[-1, -1]),
        TensorSpec(name="class_ids", datatype="INT32", shape=[-1, -1]),
        TensorSpec(name="counts", datatype="INT32", shape=[-1]),
    ]


def output_tensors(manifest: ModelManifest, answers: list[DetectionAnswer | None]) -> list[Tensor]:
    """`boxes` [N, D, 4] xyxy in original pixels, `scores` [N, D], `class_ids` [N, D], `counts` [N]."""
    counts = np.array([0 if a is None else len(a.detections) for a in answers], dtype=np.int32)
    most = int(counts.max(initial=0))
    boxes = np.zeros((len(answers), most, 4), dtype=np.float32)
    scores = np.zeros((len(answers), most), dtype=np.float32)
    class_ids = np.full((len(answers), most), -1, dtype=np.int32)
    for i, answer in enumerate(answers):
        for j, found in enumerate(answer.detections if answer is not None else ()):
            boxes[i, j] = found.box.xyxy
            scores[i, j] = found.confidence
            class_ids[i, j] = found.class_id
    return [
        Tensor("boxes", "FP32", boxes),
        Tensor("scores", "FP32", scores),
        Tensor("class_ids", "INT32", class_ids),
        Tensor("counts", "INT32", counts),
    ]
