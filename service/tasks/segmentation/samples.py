"""Segmentation's labelled samples and sweep evidence.

Labelled samples: `images/<name>.<ext>` and `masks/<name>.png`, a single-channel PNG of the image's
size whose pixel values are indices into the model's classes (for the demo segmenter 0 background,
1 porosity, 2 crack, 3 undercut). A sweep scores images: a class's score on an image is its highest
pixel probability among the pixels where it is the most probable class.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from service.manifest import ModelManifest
from service.tasks.segmentation.answer import SegmentationAnswer
from service.thresholds.samples import IMAGES_DIR, MASKS_DIR, LabelledImage, SampleFiles, SampleSetError, image_names
from service.thresholds.sweep import ClassEvidence, Truth, image_evidence, presence


def read_segmentation_labels(names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    masks = {PurePosixPath(n).stem: n for n in names if n.startswith(f"{MASKS_DIR}/") and n.endswith(".png")}
    samples = []
    for path in image_names(names, under=IMAGES_DIR):
        stem = PurePosixPath(path).stem
        if stem not in masks:
            raise SampleSetError(f"{path} has no mask {MASKS_DIR}/{stem}.png")
        try:
            with Image.open(io.BytesIO(files.read(masks[stem]))) as image:
                mask = np.asarray(image)
            with Image.open(io.BytesIO(files.read(path))) as image:
                size = image.size
        except OSError as exc:
            raise SampleSetError(f"{path}: {exc}") from exc
        if mask.ndim != 2 or (mask.shape[1], mask.shape[0]) != size:
            raise SampleSetError(f"{masks[stem]} must be a single-channel image of {size[0]}x{size[1]} pixels")
        values = np.unique(mask)
        if values.max() >= len(manifest.classes):
            raise SampleSetError(
                f"{masks[stem]} has class index {values.max()}; {manifest.name} has {len(manifest.classes)}"
            )
        present = frozenset(manifest.classes[v] for v in values) & set(manifest.defect_classes)
        samples.append(LabelledImage(path, Truth(present=present)))
    if not samples and masks:
        raise SampleSetError(f"masks found but no images under {IMAGES_DIR}/")
    return samples


class SegmentationEvidence:
    """Image-level evidence: a class is flagged at the highest confidence of its mask."""

    positive = "an image whose label mask contains the class (image-level decision)"

    def __init__(self, manifest: ModelManifest) -> None:
        self.classes = manifest.defect_classes
        self._scores: list[list[float]] = []  # per image, per defect class

    def add(self, truth: Truth, answer: SegmentationAnswer) -> None:
        found = {s.class_name: s.confidence for s in answer.segments}
        self._scores.append([found.get(name, -np.inf) for name in self.classes])

    def evidence(self, truths: list[Truth]) -> dict[str, ClassEvidence]:
        scores = np.array(self._scores, dtype=np.float64).reshape(-1, len(self.classes))
        return image_evidence(presence(truths, self.classes), scores, self.classes)

    def confusion(self, truths: list[Truth], proposed: Mapping[str, float]) -> None:
        return None
