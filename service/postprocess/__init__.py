"""Task post-processing: one image's model outputs -> the answer and its accept/reject decision.

Pure functions on numpy arrays; one module per task, the shared decision rule in `decision`.
"""

from .classification import ClassificationResult, postprocess_classification
from .decision import Decision
from .detections import DetectionResult, postprocess_detection
from .segmentation import MaskFormat, SegmentationResult, postprocess_segmentation

__all__ = [
    "ClassificationResult",
    "Decision",
    "DetectionResult",
    "MaskFormat",
    "SegmentationResult",
    "postprocess_classification",
    "postprocess_detection",
    "postprocess_segmentation",
]
