"""What each output decoder needs from a graph: its output names, and outputs of the right shape."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.manifest import OutputDecoder

from .errors import ExportError

OUTPUT_NAMES: dict[OutputDecoder, list[str]] = {
    OutputDecoder.SOFTMAX: ["logits"],
    OutputDecoder.SIGMOID: ["logits"],
    OutputDecoder.YOLO: ["predictions"],
    OutputDecoder.SEGMENTATION_LOGITS: ["logits"],
    OutputDecoder.BOXES_SCORES_LABELS: ["boxes", "scores", "labels"],
}

_EXPECTED_LAYOUT = {
    OutputDecoder.SOFTMAX: "[N, C]",
    OutputDecoder.SIGMOID: "[N, C]",
    OutputDecoder.YOLO: "[N, 4 + C, A]",
    OutputDecoder.SEGMENTATION_LOGITS: "[N, C, H, W]",
}


def check_outputs(decoder: OutputDecoder, classes: Sequence[str], batch: int, outputs: Sequence[np.ndarray]) -> None:
    """Raise ExportError unless `outputs` (one run on `batch` images) fit `decoder` with these classes."""
    shapes = ", ".join(str(list(o.shape)) for o in outputs)
    if decoder is OutputDecoder.BOXES_SCORES_LABELS:
        _check_detections(classes, outputs, shapes)
        return
    if len(outputs) != 1:
        raise ExportError(f"the {decoder} decoder reads one output, the model gives {len(outputs)} ({shapes})")
    shape = outputs[0].shape
    rows = 4 + len(classes) if decoder is OutputDecoder.YOLO else len(classes)
    rank = {OutputDecoder.YOLO: 3, OutputDecoder.SEGMENTATION_LOGITS: 4}.get(decoder, 2)
    if len(shape) != rank or shape[0] != batch or shape[1] != rows:
        layout = _EXPECTED_LAYOUT[decoder]
        raise ExportError(
            f"the model gives {list(shape)} for {batch} image(s); the {decoder} decoder with {len(classes)} classes "
            f"needs {layout} with {rows} at index 1 (check the class list)"
        )


def _check_detections(classes: Sequence[str], outputs: Sequence[np.ndarray], shapes: str) -> None:
    if len(outputs) != 3:
        raise ExportError(f"boxes_scores_labels reads three outputs (boxes, scores, labels), the model gives {shapes}")
    boxes, scores, labels = outputs
    count = len(scores)
    if boxes.shape != (count, 4) or scores.shape != (count,) or labels.shape != (count,):
        raise ExportError(f"boxes_scores_labels needs boxes [K, 4], scores [K], labels [K]; the model gives {shapes}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ExportError(f"detection labels must be integers, the model gives {labels.dtype}")
    if count and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ExportError(
            f"the model predicts label {int(labels.max())} but only {len(classes)} classes were declared "
            "(torchvision detectors count the background as class 0)"
        )
