"""Per-request prediction options, checked against the model they are for.

They come as query parameters, so that a raw-body POST and a multipart POST
carry them the same way: `?thresholds=crack:0.3,porosity:0.6&classes=crack`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from service.errors import InvalidParameters
from service.manifest import ModelManifest, Task
from service.tasks import PredictionOptions
from service.thresholds.rules import is_threshold, parse_class_values, unknown_classes

# name -> (OpenAPI schema, description); the query parameters a prediction accepts.
QUERY_PARAMETERS: dict[str, tuple[dict, str]] = {
    "thresholds": (
        {"type": "string", "example": "crack:0.3,porosity:0.6"},
        "Threshold overrides for this request: per class (`crack:0.3,porosity:0.6` or `crack=0.3`), or one "
        "value for every defect class (`0.25`).",
    ),
    "classes": ({"type": "string", "example": "crack"}, "Report only these defect classes."),
    "nms_iou": ({"type": "number", "minimum": 0, "maximum": 1}, "Detection: NMS IoU override."),
    "max_detections": ({"type": "integer", "minimum": 1}, "Detection: at most this many boxes."),
    "mask_format": ({"type": "string", "enum": ["rle", "png"], "default": "rle"}, "Segmentation: COCO RLE or PNG."),
}


def parse_options(manifest: ModelManifest, query: Mapping[str, str]) -> PredictionOptions:
    """The options of one request from its query parameters (as sent: strings), checked against the model."""
    unknown = sorted(set(query) - set(QUERY_PARAMETERS))
    if unknown:
        raise InvalidParameters(f"unknown query parameters {unknown}; accepted: {', '.join(QUERY_PARAMETERS)}")
    defect_classes = manifest.defect_classes
    thresholds = query.get("thresholds")
    overrides = class_values(thresholds, defect_classes) if thresholds else {}
    class_filter = None
    if classes := query.get("classes"):
        class_filter = frozenset(c.strip() for c in classes.split(",") if c.strip())
        _check_known(class_filter, defect_classes, "classes")
    nms_iou = _number(query, "nms_iou", float)
    if nms_iou is not None:
        if manifest.task is not Task.DETECTION:
            raise InvalidParameters("nms_iou applies to detection models only")
        if not is_threshold(nms_iou):
            raise InvalidParameters(f"nms_iou must lie between 0 and 1, got {nms_iou}")
    max_detections = _number(query, "max_detections", int)
    if max_detections is not None:
        if manifest.task is not Task.DETECTION:
            raise InvalidParameters("max_detections applies to detection models only")
        if not 1 <= max_detections <= manifest.max_detections:
            raise InvalidParameters(f"max_detections must lie between 1 and {manifest.max_detections}")
    mask_format = query.get("mask_format", "rle")
    if mask_format not in ("rle", "png"):
        raise InvalidParameters(f"mask_format must be 'rle' or 'png', got {mask_format!r}")
    return PredictionOptions(
        thresholds=overrides,
        nms_iou=nms_iou,
        classes=class_filter,
        max_detections=max_detections,
        mask_format=mask_format,  # type: ignore[arg-type]
    )


def _number(query: Mapping[str, str], name: str, kind: type[int] | type[float]) -> Any:
    text = query.get(name)
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise InvalidParameters(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidParameters(f"{name} must be finite, got {text!r}")
    return value


def class_values(text: str, defect_classes: list[str], what: str = "thresholds") -> dict[str, float]:
    """A request's `CLASS:VALUE` list (`service.thresholds.rules`), a mistake in it answered 422."""
    try:
        return parse_class_values(text, defect_classes, what)
    except ValueError as exc:
        raise InvalidParameters(str(exc)) from None


def _check_known(names: Iterable[str], defect_classes: list[str], what: str) -> None:
    try:
        unknown_classes(names, defect_classes, what)
    except ValueError as exc:
        raise InvalidParameters(str(exc)) from None
