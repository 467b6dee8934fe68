"""Task post-processing: one image's model outputs -> the answer and its accept/reject decision.

Pure functions on numpy arrays; one module per task, the shared decision rule in `decision`.
"""

from service.pipeline.postprocess.classification import postprocess_classification
from service.pipeline.postprocess.detections import postprocess_detection
from service.pipeline.postprocess.segmentation import postprocess_segmentation

__all__ = ["postprocess_classification", "postprocess_detection", "postprocess_segmentation"]
