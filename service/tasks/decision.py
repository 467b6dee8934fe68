"""The accept/review/reject rule and the per-request thresholds, shared by every task.

A part is rejected when any defect class crosses its threshold (score >= threshold). A class with a
review threshold (a band below its reject threshold) that does not reject but whose score reaches
the review threshold sends the part to review, when nothing rejects it. Without review thresholds
a part is accepted or rejected, as always. The background class has no threshold and never rejects;
a request's class filter narrows which defect classes may reject or ask for review.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from service.manifest import ModelManifest

Decision = Literal["accept", "review", "reject"]


def decide(defects: Sequence[str], review: Sequence[str] | None = None) -> Decision:
    if defects:
        return "reject"
    return "review" if review else "accept"


def review_band(active: Mapping[str, float], review: Mapping[str, float]) -> dict[str, float]:
    """The review thresholds of the classes that may reject on this request (`request_thresholds`)."""
    return {c: float(review[c]) for c in active if c in review}


def in_review(band: Mapping[str, float], scores: Mapping[str, float], defects: Sequence[str]) -> list[str]:
    """The classes in their review band: not rejecting, and scored at or above their review threshold."""
    return [c for c, low in band.items() if c not in defects and scores.get(c, float("-inf")) >= low]


def request_thresholds(
    manifest: ModelManifest, thresholds: Mapping[str, float], class_filter: Iterable[str] | None = None
) -> dict[str, float]:
    """The classes that may reject on this request, with their thresholds, in class order.

    `thresholds` must name every defect class (defaults already merged with the
    request's overrides); `class_filter`, when given, keeps only the classes it names.
    """
    missing = [c for c in manifest.defect_classes if c not in thresholds]
    if missing:
        raise ValueError(f"no threshold for defect classes {missing}")
    allowed = set(manifest.defect_classes)
    if class_filter is not None:
        wanted = set(class_filter)
        unknown = wanted - set(manifest.classes)
        if unknown:
            raise ValueError(f"class filter names unknown classes {sorted(unknown)}; known: {manifest.classes}")
        allowed &= wanted
    return {c: float(thresholds[c]) for c in manifest.defect_classes if c in allowed}


def threshold_vector(classes: Sequence[str], thresholds: Mapping[str, float]) -> np.ndarray:
    """(C,) float32 thresholds indexed by class id; +inf for classes that may not reject."""
    return np.array([thresholds.get(c, np.inf) for c in classes], dtype=np.float32)
