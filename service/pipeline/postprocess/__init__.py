"""Task post-processing: one image's model outputs -> the answer and its accept/reject decision.

Pure functions on numpy arrays; one module per task, the shared decision rule in `decision`.
"""

from service.pipeline.postprocess.classification import ClassificationResult, postprocess_classification
from service.pipeline.postprocess.decision import Decision
from service.pipeline.postprocess.detections import DetectionResult, postprocess_detection
from service.pipeline.postprocess.segmentation import MaskFormat, SegmentationResult, postprocess_segmentation

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
