"""Classification's labelled samples and sweep evidence.

Labelled samples: `<class>/<image>`, one folder per class, named as the model's classes (e.g.
`no_defect/0001.jpg`, `crack/0002.jpg`); folders of other names are an error. A sweep scores images:
a class's score on an image is its probability, and the report adds the confusion matrix at the
proposed thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

import numpy as np

from service.manifest import ModelManifest
from service.tasks.classification.answer import ClassificationAnswer
from service.thresholds.samples import LabelledImage, SampleFiles, SampleSetError, image_names
from service.thresholds.sweep import ClassEvidence, Truth, confusion_at, image_evidence, presence


def read_classification_labels(names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    samples = []
    for name in image_names(names):
        parts = PurePosixPath(name).parts
        if len(parts) != 2:
            raise SampleSetError(f"{name}: classification images go in one folder per class, as <class>/<image>")
        label = parts[0]
        if label not in manifest.classes:
            raise SampleSetError(f"{name}: folder {label!r} is not a class of {manifest.name} ({manifest.classes})")
        present = frozenset({label}) if label != manifest.background_class else frozenset()
        samples.append(LabelledImage(name, Truth(present=present, label=label)))
    return samples


class ClassificationEvidence:
    """Image-level evidence from class scores; the confusion matrix at the proposed thresholds."""

    positive = "an image labelled with the class"

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest
        self._scores: list[list[float]] = []  # per image, every class

    def add(self, truth: Truth, answer: ClassificationAnswer) -> None:
        if truth.label not in self.manifest.classes:
            raise ValueError(f"label {truth.label!r} is not one of {self.manifest.classes}")
        self._scores.append([answer.scores[name] for name in self.manifest.classes])

    def evidence(self, truths: list[Truth]) -> dict[str, ClassEvidence]:
        defects = self.manifest.defect_classes
        columns = [self.manifest.classes.index(name) for name in defects]
        scores = np.array(self._scores, dtype=np.float64).reshape(-1, len(self.manifest.classes))[:, columns]
        return image_evidence(presence(truths, defects), scores, defects)

    def confusion(self, truths: list[Truth], proposed: Mapping[str, float]) -> tuple[list[str], np.ndarray] | None:
        labels = [t.label or "" for t in truths]
        scores = np.array(self._scores, dtype=np.float64)
        return confusion_at(labels, scores, self.manifest.classes, self.manifest.background_class, proposed)
