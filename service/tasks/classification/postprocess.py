"""Classification: logits -> class probabilities -> label, scores and decision."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from service.manifest import ModelManifest, OutputDecoder
from service.pipeline.geometry import Geometry
from service.tasks.base import answer_header
from service.tasks.classification.answer import ClassificationAnswer
from service.tasks.decision import in_review, request_thresholds, review_band
from service.thresholds.rules import ThresholdSet


def class_scores(logits: np.ndarray, decoder: OutputDecoder) -> np.ndarray:
    """Probabilities over the last axis: softmax (one label) or sigmoid (independent labels)."""
    z = np.asarray(logits, dtype=np.float32)
    if decoder is OutputDecoder.SOFTMAX:
        e = np.exp(z - z.max(axis=-1, keepdims=True))  # the shift keeps exp from overflowing
        return e / e.sum(axis=-1, keepdims=True)
    if decoder is OutputDecoder.SIGMOID:
        return np.exp(-np.logaddexp(0.0, -z)).astype(np.float32)  # 1 / (1 + e^-z) without overflow
    raise ValueError(f"decoder {decoder} does not produce class scores")


def classify(scores: np.ndarray, classes: Sequence[str], thresholds: Mapping[str, float]) -> tuple[int, list[str]]:
    """One image's scores -> (the argmax class, the classes in `thresholds` that crossed theirs).

    Classes absent from `thresholds` (the background, filtered-out classes) never reject.
    """
    if scores.shape != (len(classes),):
        raise ValueError(f"expected {len(classes)} scores for one image, got shape {scores.shape}")
    by_class = dict(zip(classes, scores.tolist(), strict=True))  # Python floats: compared in double precision
    return int(np.argmax(scores)), [c for c, t in thresholds.items() if by_class[c] >= t]


def postprocess_classification(
    logits: np.ndarray,
    geometry: Geometry,
    manifest: ModelManifest,
    thresholds: ThresholdSet,
    class_filter: Iterable[str] | None = None,
) -> ClassificationAnswer:
    """One image's logits `(C,)` -> its answer. `thresholds` covers every defect class."""
    scores = class_scores(logits, manifest.output.decoder)
    active = request_thresholds(manifest, thresholds.values, class_filter)
    best, defects = classify(scores, manifest.classes, active)
    by_class = dict(zip(manifest.classes, scores.tolist(), strict=True))
    band = review_band(active, thresholds.review)
    review = in_review(band, by_class, defects) if band else None
    return ClassificationAnswer.model_construct(
        **answer_header(manifest, geometry, thresholds, defects, review),
        label=manifest.classes[best],
        confidence=by_class[manifest.classes[best]],
        scores=by_class,
    )
