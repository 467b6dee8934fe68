"""How one original image maps onto the model input, and how outputs map back.

Preprocessing resizes the frame to `content_box`'s size and places it at the box's
top-left corner of the input; boxes and masks come back through the same numbers,
so the two directions can never disagree. The input's size is the geometry's too: the model's
input size, or less when a letterbox pads only up to a multiple of the stride.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """One original frame placed inside the model input.

    `scale_x`/`scale_y` are input pixels per original pixel, measured on the
    rounded content size actually pasted (so they map pixel edges exactly);
    `pad_x`/`pad_y` are the letterbox offsets in input pixels, whole numbers.
    """

    original_width: int
    original_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    @classmethod
    def stretch(cls, original_wh: tuple[int, int], input_wh: tuple[int, int]) -> Geometry:
        (width, height), (input_width, input_height) = original_wh, input_wh
        _check_sizes(original_wh, input_wh)
        return cls(width, height, input_width, input_height, input_width / width, input_height / height, 0.0, 0.0)

    @classmethod
    def letterbox(cls, original_wh: tuple[int, int], input_wh: tuple[int, int], stride: int | None = None) -> Geometry:
        """Keep the aspect ratio, centre the content, pad the rest (the smaller half of an odd pad on top/left).

        With `stride`, the frame is scaled to fit `input_wh` as before, but each axis is padded only
        up to the next multiple of `stride` (`input_wh` being multiples of it), so the input is
        smaller than `input_wh` on the frame's short side: ultralytics' `LetterBox(auto=True)`, which
        `YOLO.predict` uses on graphs with dynamic image axes. 320x200 into 256x256 at stride 32 -> 256x160.
        """
        (width, height), (input_width, input_height) = original_wh, input_wh
        _check_sizes(original_wh, input_wh)
        scale = min(input_width / width, input_height / height)
        content_width = min(input_width, max(1, round(width * scale)))
        content_height = min(input_height, max(1, round(height * scale)))
        if stride is not None:
            if stride < 1 or input_width % stride or input_height % stride:
                raise ValueError(f"input {input_width}x{input_height} is not a multiple of the stride {stride}")
            # As ultralytics computes it: the full pad modulo the stride.
            input_width = content_width + (input_width - content_width) % stride
            input_height = content_height + (input_height - content_height) % stride
        return cls(
            width,
            height,
            input_width,
            input_height,
            content_width / width,
            content_height / height,
            float((input_width - content_width) // 2),
            float((input_height - content_height) // 2),
        )

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the region of the input that holds the image; the rest is padding."""
        x0, y0 = int(self.pad_x), int(self.pad_y)
        return (
            x0,
            y0,
            x0 + round(self.original_width * self.scale_x),
            y0 + round(self.original_height * self.scale_y),
        )

    @property
    def content_size(self) -> tuple[int, int]:
        """(width, height) the original is resized to before it is placed at (pad_x, pad_y)."""
        x0, y0, x1, y1 = self.content_box
        return x1 - x0, y1 - y0

    def boxes_to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """(n, 4) input-pixel boxes -> (n, 4) float32 original-pixel boxes, clipped to the frame."""
        boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        frame = np.array([self.original_width, self.original_height, self.original_width, self.original_height])
        return np.clip((boxes - offset) / scale, 0.0, frame).astype(np.float32)

    def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
        """(input_h, input_w) class map -> (original_h, original_w), nearest neighbour, same dtype.

        Each original pixel takes the input pixel under its centre, so a map that
        is already at original size comes back unchanged.
        """
        if mask.shape != (self.input_height, self.input_width):
            raise ValueError(f"mask shape {mask.shape} is not the input size {(self.input_height, self.input_width)}")
        x0, y0, x1, y1 = self.content_box
        rows = y0 + _nearest_sources(self.original_height, y1 - y0)
        cols = x0 + _nearest_sources(self.original_width, x1 - x0)
        return mask.take(rows, axis=0).take(cols, axis=1)


def _nearest_sources(target: int, source: int) -> np.ndarray:
    """For each of `target` pixels, the index of the `source` pixel under its centre."""
    centres = (np.arange(target) + 0.5) * (source / target)
    return np.minimum(centres.astype(np.intp), source - 1)


def _check_sizes(original_wh: tuple[int, int], input_wh: tuple[int, int]) -> None:
    if min(*original_wh, *input_wh) < 1:
        raise ValueError(f"sizes must be positive, got original {original_wh} and input {input_wh}")
