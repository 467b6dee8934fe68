"""Step 2: a decoded image -> one CHW array at the model's input size, and a batch of them.

Per image (in a decode thread): resize to the content size the `Geometry` gives
(whole input for `stretch`, aspect kept for `letterbox`), pad, move channels
first. Per batch (in the inference thread): stack into one contiguous NCHW
buffer, normalising only when the graph does not do it itself. With
`pad_to_stride` the input is padded only to a multiple of the stride, so frames
of different sizes give arrays of different shapes; the batcher never mixes them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.manifest import InputSpec, ResizeFilter, ResizeMode
from service.pipeline.decode import DecodedImage
from service.pipeline.geometry import Geometry

# Pillow first reduces by an integer factor, then resamples the last <= 3x:
# much faster on large frames, visually the same at these scales.
_REDUCING_GAP = 3.0


def geometry_for(spec: InputSpec, original_width: int, original_height: int) -> Geometry:
    original, model_input = (original_width, original_height), (spec.width, spec.height)
    if spec.resize is ResizeMode.LETTERBOX:
        return Geometry.letterbox(original, model_input, spec.pad_to_stride)
    return Geometry.stretch(original, model_input)


def decode_target(spec: InputSpec) -> tuple[int, int] | None:
    """The size a JPEG may be reduced towards while decoding (`decode_image`), or None for full size:
    a reduction while decoding shrinks with antialiasing, not for a model trained without it."""
    return (spec.width, spec.height) if spec.resize_filter == ResizeFilter.BILINEAR_ANTIALIAS else None


def to_model_input(decoded: DecodedImage, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """Resize and pad one image; returns a (C, H, W) uint8 array at the geometry's input size and how it maps back."""
    geometry = geometry_for(spec, decoded.original_width, decoded.original_height)
    x0, y0, x1, y1 = geometry.content_box
    content = decoded.image
    if content.size != (x1 - x0, y1 - y0):
        content = resize(content, (x1 - x0, y1 - y0), spec.resize_filter)
    pixels = np.asarray(content)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if (x0, y0, x1, y1) == (0, 0, geometry.input_width, geometry.input_height):
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    else:
        chw = np.full((spec.channels, geometry.input_height, geometry.input_width), spec.letterbox_fill, dtype=np.uint8)
        chw[:, y0:y1, x0:x1] = pixels.transpose(2, 0, 1)
    return chw, geometry


def resize(image: Image.Image, size: tuple[int, int], resize_filter: ResizeFilter) -> Image.Image:
    """`image` at `size` (width, height) with the model's filter.

    `bilinear_antialias`: Pillow's bilinear, which widens its kernel when shrinking (antialiasing).
    `linear`: OpenCV's INTER_LINEAR, which samples the 2x2 source pixels around each output pixel's
    centre whatever the scale: an affine transform with bilinear sampling computes exactly that
    when shrinking; growing, both filters are the same bilinear interpolation.
    """
    if resize_filter == ResizeFilter.LINEAR and (size[0] < image.width or size[1] < image.height):
        scale_x, scale_y = image.width / size[0], image.height / size[1]
        return image.transform(
            size, Image.Transform.AFFINE, (scale_x, 0, 0, 0, scale_y, 0), resample=Image.Resampling.BILINEAR
        )
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)


def to_batch(images: list[np.ndarray], spec: InputSpec, rows: int | None = None) -> np.ndarray:
    """Stack (C, H, W) uint8 arrays into the graph's input tensor of `rows` rows (default: one per
    image); rows past the images are zeros, padding to a fixed batch shape."""
    if rows is None or rows == len(images):
        batch = np.stack(images)
    else:
        batch = np.zeros((rows, *images[0].shape), dtype=np.uint8)
        np.stack(images, out=batch[: len(images)])
    if spec.dtype == "uint8":
        return batch
    if spec.normalization_in_graph:
        return batch.astype(spec.dtype)
    scale = np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    normalised = (batch.astype(np.float32) * scale - mean) / std
    return normalised.astype(spec.dtype, copy=False)
