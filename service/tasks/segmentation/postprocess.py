"""Segmentation: per-pixel logits -> one mask per defect class at original size, with its parts.

The mask of defect class k holds the pixels where k is the most probable class
(softmax over classes) AND its probability reaches k's threshold. A class crosses
its threshold, and rejects the part, when its mask has at least one pixel in the
original image; its confidence is the highest probability inside the mask.
Probabilities are computed at the model's input size; only the uint8 class map is
upsampled, so a 5 MP frame costs a few uint8 copies of itself, not C float maps.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence

import numpy as np
import pycocotools.mask as coco_mask
from PIL import Image
from scipy import ndimage

from service.manifest import ModelManifest
from service.pipeline.geometry import Geometry
from service.tasks.base import answer_header
from service.tasks.decision import in_review, request_thresholds, review_band, threshold_vector
from service.tasks.segmentation.answer import Component, PixelBox, PngMask, RleMask, Segment, SegmentationAnswer
from service.tasks.segmentation.options import MaskFormat
from service.thresholds.rules import ThresholdSet

# Class-map value of pixels no class claims at its threshold (also the background's pixels).
NO_CLASS = 255

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def thresholded_class_map(logits: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[C, h, w] logits and (C,) thresholds -> (class map uint8 (h, w), winning probability float32 (h, w)).

    A pixel holds class k when k has the highest logit there and softmax_k >= thresholds[k];
    otherwise NO_CLASS (so a +inf threshold, as for the background, never claims a pixel).
    """
    if logits.ndim != 3 or len(thresholds) != logits.shape[0]:
        raise ValueError(f"expected [C, h, w] logits with C = {len(thresholds)}, got shape {logits.shape}")
    if logits.shape[0] >= NO_CLASS:
        raise ValueError(f"at most {NO_CLASS - 1} classes fit a uint8 class map, got {logits.shape[0]}")
    winner = logits.argmax(axis=0)
    # softmax at the argmax is 1 / sum_c exp(l_c - l_max): no C-sized probability map needed.
    shifted = np.asarray(logits, dtype=np.float32) - logits.max(axis=0)
    probability = (1.0 / np.exp(shifted, out=shifted).sum(axis=0)).astype(np.float32)
    class_map = winner.astype(np.uint8)
    class_map[probability < thresholds[winner]] = NO_CLASS
    return class_map, probability


def best_pixel_per_class(logits: np.ndarray, probability: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """[C, h, w] logits and their winning probability (h, w) (`thresholded_class_map`'s) -> each class's
    highest probability over the pixels where it is the most probable class (its score for a review
    band; the sweep scores a segmenter's class the same way)."""
    winner = logits.argmax(axis=0)
    best = np.full(len(classes), -np.inf)
    np.maximum.at(best, winner.ravel(), probability.ravel())
    return {name: float(best[k]) for k, name in enumerate(classes) if np.isfinite(best[k])}


def class_probability(logits: np.ndarray, classes: Sequence[str], candidates: Sequence[str]) -> tuple[str, np.ndarray]:
    """[C, h, w] logits -> (the candidate class with the highest probability anywhere, its probability (h, w)):
    the `scores` heat map (`service.heatmaps`)."""
    exp = np.exp(np.asarray(logits, dtype=np.float32) - logits.max(axis=0))
    probability = exp[[classes.index(name) for name in candidates]] / exp.sum(axis=0)
    best = int(np.argmax(probability.reshape(len(candidates), -1).max(axis=1)))
    return candidates[best], probability[best]


def connected_components(mask: np.ndarray) -> list[Component]:
    """8-connected regions of a boolean mask, largest first (ties in scan order)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return []
    band = mask[rows[0] : rows[-1] + 1]
    cols = np.flatnonzero(band.any(axis=0))
    # Label only the mask's bounding region: defects are small next to a 5 MP frame.
    region = band[:, cols[0] : cols[-1] + 1]
    labels, count = ndimage.label(region, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    y0, x0 = int(rows[0]), int(cols[0])
    found = [
        Component.model_construct(
            box=PixelBox.model_construct(x1=x0 + xs.start, y1=y0 + ys.start, x2=x0 + xs.stop, y2=y0 + ys.stop),
            area_px=int(area),
        )
        for (ys, xs), area in zip(ndimage.find_objects(labels), areas, strict=True)
    ]
    return [found[i] for i in np.argsort(-areas, kind="stable")]


def encode_rle(mask: np.ndarray) -> RleMask:
    """COCO run-length encoding `{"size": [h, w], "counts": str}`, readable by pycocotools.mask.decode."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return RleMask.model_construct(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii"))


def encode_png(mask: np.ndarray) -> bytes:
    """A 1-bit PNG of the mask (decodes to a bool array)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_mask(mask: np.ndarray, mask_format: MaskFormat) -> RleMask | PngMask:
    if mask_format == "png":
        return PngMask.model_construct(data=base64.b64encode(encode_png(mask)).decode("ascii"))
    return encode_rle(mask)


def postprocess_segmentation(
    logits: np.ndarray,
    geometry: Geometry,
    manifest: ModelManifest,
    thresholds: ThresholdSet,
    mask_format: MaskFormat = "rle",
    class_filter: Iterable[str] | None = None,
) -> SegmentationAnswer:
    """One image's logits `[C, input_h, input_w]` -> its answer, with masks at original size."""
    if logits.shape[1:] != (geometry.input_height, geometry.input_width):
        raise ValueError(
            f"logits {logits.shape} do not match the input size {geometry.input_height}x{geometry.input_width}"
        )
    if mask_format not in ("rle", "png"):
        raise ValueError(f"mask format must be 'rle' or 'png', got {mask_format!r}")
    active = request_thresholds(manifest, thresholds.values, class_filter)
    class_map, probability = thresholded_class_map(logits, threshold_vector(manifest.classes, active))

    x0, y0, x1, y1 = geometry.content_box
    content_map = class_map[y0:y1, x0:x1]
    present = [int(k) for k in np.unique(content_map) if k != NO_CLASS]
    original_map = None
    segments = []
    if present:
        content_probability = probability[y0:y1, x0:x1]
        original_map = geometry.mask_to_original(class_map)
        frame_px = geometry.original_width * geometry.original_height
        for class_id in present:
            mask = original_map == class_id
            area = int(np.count_nonzero(mask))
            if area == 0:  # a sliver lost when the frame is smaller than the input
                continue
            segments.append(
                Segment.model_construct(
                    class_name=manifest.classes[class_id],
                    class_id=class_id,
                    confidence=float(content_probability[content_map == class_id].max()),
                    area_px=area,
                    area_fraction=area / frame_px,
                    components=connected_components(mask),
                    mask=encode_mask(mask, mask_format),
                )
            )
    defects = [s.class_name for s in segments]
    band = review_band(active, thresholds.review)
    review = None
    if band:
        scores = best_pixel_per_class(logits[:, y0:y1, x0:x1], probability[y0:y1, x0:x1], manifest.classes)
        review = in_review(band, scores, defects)
    answer = SegmentationAnswer.model_construct(
        **answer_header(manifest, geometry, thresholds, defects, review), segments=segments
    )
    answer._class_map = original_map
    return answer
