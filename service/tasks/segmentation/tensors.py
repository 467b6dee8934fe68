"""Segmentation's answers as tensors (the Open Inference Protocol's outputs).

`mask` is a class-index mask at the frame's size: each pixel the index of the defect class whose mask
holds it, else the background class's index (255 for a model without one). Frames of different sizes
in one request are padded to the largest, with 255 outside each frame.
"""

from __future__ import annotations

import numpy as np

from service.manifest import ModelManifest
from service.tasks.base import TensorSpec
from service.tasks.segmentation.answer import SegmentationAnswer
from service.tasks.segmentation.postprocess import NO_CLASS
from service.tensors import Tensor


def output_specs(manifest: ModelManifest) -> list[TensorSpec]:
    return [TensorSpec(name="mask", datatype="UINT8", shape=[-1, -1, -1])]


def output_tensors(manifest: ModelManifest, answers: list[SegmentationAnswer | None]) -> list[Tensor]:
    """`mask` [N, H, W] uint8."""
    height = max((a.image.height for a in answers if a is not None), default=0)
    width = max((a.image.width for a in answers if a is not None), default=0)
    masks = np.full((len(answers), height, width), NO_CLASS, dtype=np.uint8)
    nothing = NO_CLASS if manifest.background_class is None else manifest.classes.index(manifest.background_class)
    for mask, answer in zip(masks, answers, strict=True):
        if answer is None:
            continue
        frame = mask[: answer.image.height, : answer.image.width]
        claimed = answer.class_map
        if claimed is None:
            frame[:] = nothing
        else:
            frame[:] = np.where(claimed == NO_CLASS, nothing, claimed)
    return [Tensor("mask", "UINT8", masks)]
