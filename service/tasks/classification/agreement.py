"""Classification's shadow-run agreement: the defects and the most likely class.

A classifier's answer has no region to overlap, so the label compares what each version calls the
frame: for one defect class, both have it as their label, or neither does.
"""

from __future__ import annotations

from service.manifest import ModelManifest
from service.tasks.base import ClassAgreement
from service.tasks.classification.answer import ClassificationAnswer


def agreement(
    active: ClassificationAnswer, candidate: ClassificationAnswer, manifest: ModelManifest
) -> dict[str, ClassAgreement]:
    """Per defect class of `manifest`, in its order: how `candidate` compares with `active`."""
    return {
        c: ClassAgreement(
            decision=(c in active.defects) == (c in candidate.defects),
            label=(active.label == c) == (candidate.label == c),
            iou=None,
        )
        for c in manifest.defect_classes
    }
