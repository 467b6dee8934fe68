"""Comparing onnxruntime's outputs with PyTorch's for the same images (pure numpy).

Each output is compared as named parts (logits; or boxes and scores) because their magnitudes
differ: box coordinates are pixels in the hundreds, scores lie in 0..1. A part passes when its
largest absolute difference stays within `tolerance * max(1, largest |value| seen)`, which is an
absolute bound for scores and logits near 1 and a relative one for pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from service.manifest import Parity

from .errors import ExportError

_UNPAIRABLE = 1e12


@dataclass
class ParityCheck:
    """Accumulates differences per part over all compared batches."""

    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    magnitude: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, expected: np.ndarray, actual: np.ndarray) -> None:
        if expected.shape != actual.shape:
            raise ExportError(f"{part}: onnxruntime gives shape {list(actual.shape)}, PyTorch {list(expected.shape)}")
        if expected.size == 0:
            return
        expected = expected.astype(np.float64)
        diff = float(np.abs(actual.astype(np.float64) - expected).max())
        # np.maximum keeps a NaN (a broken graph) where max() could drop it.
        self.max_abs_diff[part] = float(np.maximum(diff, self.max_abs_diff.get(part, 0.0)))
        self.magnitude[part] = float(np.maximum(np.abs(expected).max(), self.magnitude.get(part, 0.0)))

    def add_detections(
        self,
        expected: tuple[np.ndarray, np.ndarray, np.ndarray],
        actual: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Compare (boxes, scores, labels) after pairing each detection with its counterpart."""
        expected_index, actual_index = pair_detections(expected, actual)
        self.add("boxes", expected[0][expected_index], actual[0][actual_index])
        self.add("scores", expected[1][expected_index], actual[1][actual_index])

    def bound(self, part: str) -> float:
        return self.tolerance * max(1.0, self.magnitude[part])

    def result(self, samples: int, batch_sizes: list[int]) -> Parity:
        """The recorded figures: the part closest to its bound sets max_abs_diff and tolerance."""
        if not self.max_abs_diff:
            # Nothing to compare (e.g. no detections on any image): agreement is trivially exact.
            return Parity(max_abs_diff=0.0, tolerance=self.tolerance, samples=samples, batch_sizes=batch_sizes)
        worst = max(self.max_abs_diff, key=lambda part: self.max_abs_diff[part] / self.bound(part))
        details: dict[str, float] = {}
        for part in sorted(self.max_abs_diff):
            details[f"{part}_max_abs_diff"] = self.max_abs_diff[part]
            details[f"{part}_bound"] = self.bound(part)
        return Parity(
            max_abs_diff=self.max_abs_diff[worst],
            tolerance=self.bound(worst),
            samples=samples,
            batch_sizes=batch_sizes,
            details=details,
        )

    def failure(self) -> str | None:
        """One line naming the part that broke its bound, or None when all agree."""
        for part, diff in sorted(self.max_abs_diff.items()):
            if not diff <= self.bound(part):  # also catches NaN
                return (
                    f"parity check failed: {part} differ by up to {diff:.3g} between onnxruntime and PyTorch "
                    f"(bound {self.bound(part):.3g})"
                )
        return None


def pair_detections(
    expected: tuple[np.ndarray, np.ndarray, np.ndarray],
    actual: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Pair detections one to one (same label, closest box and score).

    Detections with near-equal scores may come out in a different order from the two runtimes,
    so outputs are not compared row by row.
    """
    expected_boxes, expected_scores, expected_labels = expected
    actual_boxes, actual_scores, actual_labels = actual
    if len(expected_scores) != len(actual_scores):
        raise ExportError(
            f"parity check failed: PyTorch finds {len(expected_scores)} detections, onnxruntime {len(actual_scores)}"
        )
    box_gap = np.abs(expected_boxes[:, None, :] - actual_boxes[None, :, :]).max(axis=2)
    score_gap = np.abs(expected_scores[:, None] - actual_scores[None, :])
    cost = np.maximum(box_gap, score_gap).astype(np.float64)
    cost[expected_labels[:, None] != actual_labels[None, :]] = _UNPAIRABLE
    expected_index, actual_index = linear_sum_assignment(cost)
    if np.any(expected_labels[expected_index] != actual_labels[actual_index]):
        raise ExportError("parity check failed: onnxruntime and PyTorch predict different labels")
    return expected_index, actual_index
