"""Classification: logits -> class probabilities -> label, scores and decision."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.manifest import ModelManifest, OutputDecoder, Task
from service.pipeline.postprocess.decision import (
    SCORE_DIGITS,
    Decided,
    decision_json,
    request_thresholds,
)


@dataclass(frozen=True)
class ClassificationResult(Decided):
    label: str
    confidence: float
    scores: dict[str, float]
    defects: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            **decision_json(self.defects),
            "label": self.label,
            "confidence": round(self.confidence, SCORE_DIGITS),
            "scores": {c: round(p, SCORE_DIGITS) for c, p in self.scores.items()},
        }


def class_scores(logits: np.ndarray, decoder: OutputDecoder) -> np.ndarray:
    """Probabilities over the last axis: softmax (one label) or sigmoid (independent labels)."""
    z = np.asarray(logits, dtype=np.float32)
    if decoder is OutputDecoder.SOFTMAX:
        e = np.exp(z - z.max(axis=-1, keepdims=True))  # the shift keeps exp from overflowing
        return e / e.sum(axis=-1, keepdims=True)
    if decoder is OutputDecoder.SIGMOID:
        return np.exp(-np.logaddexp(0.0, -z)).astype(np.float32)  # 1 / (1 + e^-z) without overflow
    raise ValueError(f"decoder {decoder} does not produce class scores")


def classify(scores: np.ndarray, classes: Sequence[str], thresholds: Mapping[str, float]) -> ClassificationResult:
    """One image's scores -> the argmax label, and the classes in `thresholds` that crossed theirs.

    Classes absent from `thresholds` (the background, filtered-out classes) never reject.
    """
    if scores.shape != (len(classes),):
        raise ValueError(f"expected {len(classes)} scores for one image, got shape {scores.shape}")
    best = int(np.argmax(scores))
    by_class = {c: float(s) for c, s in zip(classes, scores, strict=True)}
    return ClassificationResult(
        label=classes[best],
        confidence=float(scores[best]),
        scores=by_class,
        defects=[c for c, t in thresholds.items() if by_class[c] >= t],
    )


def postprocess_classification(
    logits: np.ndarray,
    manifest: ModelManifest,
    thresholds: Mapping[str, float],
    class_filter: Iterable[str] | None = None,
) -> ClassificationResult:
    """One image's logits `(C,)` -> ClassificationResult. `thresholds` covers every defect class."""
    if manifest.task is not Task.CLASSIFICATION:
        raise ValueError(f"{manifest.ref} is a {manifest.task} model")
    scores = class_scores(logits, manifest.output.decoder)
    return classify(scores, manifest.classes, request_thresholds(manifest, thresholds, class_filter))
