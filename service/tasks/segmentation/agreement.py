"""Segmentation's shadow-run agreement: the class's pixels in the two answers' class maps.

Two versions agree on a class when its masks overlap by an IoU of `MATCH_IOU`, or are both empty. The
masks come from each answer's class map (one uint8 array at the frame's size), one class at a time: a
few boolean passes over the frame, no mask decoded from the wire. An answer without defects keeps no
class map: no pixel of it holds a class. An answer with segments but no map (one not made by the
post-processing) leaves only the classes' presence to compare.
"""

from __future__ import annotations

import numpy as np

from service.manifest import ModelManifest
from service.tasks.base import ClassAgreement
from service.tasks.segmentation.answer import SegmentationAnswer

# The IoU at which two masks of a class are the same defect.
MATCH_IOU = 0.5


def mask_agreement(mine: np.ndarray | None, theirs: np.ndarray | None, decision: bool) -> ClassAgreement:
    """One class's boolean masks at the frame's size (None: no pixels) -> their agreement."""
    mine_px = 0 if mine is None else int(np.count_nonzero(mine))
    theirs_px = 0 if theirs is None else int(np.count_nonzero(theirs))
    if mine_px == 0 and theirs_px == 0:
        return ClassAgreement(decision=decision, label=True, iou=None)
    shared = int(np.count_nonzero(np.logical_and(mine, theirs))) if mine_px and theirs_px else 0
    iou = shared / (mine_px + theirs_px - shared)
    return ClassAgreement(decision=decision, label=iou >= MATCH_IOU, iou=iou)


def agreement(
    active: SegmentationAnswer, candidate: SegmentationAnswer, manifest: ModelManifest
) -> dict[str, ClassAgreement]:
    """Per defect class of `manifest`, in its order: how `candidate` compares with `active`."""
    active_map, candidate_map = active.class_map, candidate.class_map
    if active_map is not None and candidate_map is not None and active_map.shape != candidate_map.shape:
        raise ValueError(f"class maps of different frames: {active_map.shape} and {candidate_map.shape}")
    unmapped = (active_map is None and active.segments) or (candidate_map is None and candidate.segments)
    active_present = {s.class_name for s in active.segments}
    candidate_present = {s.class_name for s in candidate.segments}
    found = {}
    for c in manifest.defect_classes:
        decision = (c in active.defects) == (c in candidate.defects)
        if unmapped:
            found[c] = ClassAgreement(decision, (c in active_present) == (c in candidate_present), None)
            continue
        class_id = manifest.classes.index(c)
        found[c] = mask_agreement(
            None if active_map is None else active_map == class_id,
            None if candidate_map is None else candidate_map == class_id,
            decision,
        )
    return found
