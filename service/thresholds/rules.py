"""Which per-class thresholds a prediction uses.

The thresholds store (`store.ThresholdStore.active`) answers, per model,
the active `ThresholdSet`: a numbered revision of per-class score thresholds (and
the NMS IoU for detectors). Every prediction names the revision it used.
Per-request overrides are applied on top by `resolve`, and never change the
active set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field, Strict

# A threshold or NMS IoU as a client sends it: a JSON number from 0 to 1 (no strings, no booleans),
# with -0 stored as 0.
ThresholdValue = Annotated[float, Strict(), Field(ge=0.0, le=1.0), AfterValidator(lambda value: value + 0.0)]
# A revision number as a client sends it: a JSON integer that fits the database's 64-bit column.
RevisionNumber = Annotated[int, Strict(), Field(ge=1, le=2**63 - 1)]


@dataclass(frozen=True)
class ThresholdSet:
    revision: int
    values: dict[str, float]  # one per defect class
    nms_iou: float | None


def resolve(active: ThresholdSet, overrides: dict[str, float], nms_iou: float | None) -> ThresholdSet:
    """The set one request uses: the active one with that request's overrides on top."""
    return ThresholdSet(
        revision=active.revision,
        values={**active.values, **overrides},
        nms_iou=active.nms_iou if nms_iou is None else nms_iou,
    )
