"""The frames load tests and the benchmark send: generated weld images, the same bytes on every run."""

from __future__ import annotations

from export.synthetic import CLASSES, encode_image, generate_weld

JPEG_QUALITY = 90


def line_frames(width: int, height: int) -> list[bytes]:
    """One JPEG frame per class (no defect, porosity, crack, undercut) at this size, from fixed seeds."""
    return [
        encode_image(generate_weld(seed, width, height, label=label).image, quality=JPEG_QUALITY)
        for seed, label in enumerate(CLASSES)
    ]
