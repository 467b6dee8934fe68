"""Step 1 of a request: a frame (image file bytes, or raw pixels) -> a Pillow image in the model's colour mode.

The format is sniffed from the bytes (the declared Content-Type is not trusted),
the pixel count is checked from the header before any pixel is decoded, and JPEG
frames much larger than the model input are decoded at a reduced scale
(`draft`), which roughly halves decode time on 5 MP frames. Raw pixels (a camera
that sends frames undecoded) are taken as they are, upright, with the model's channels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from service.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType

ImageFile.LOAD_TRUNCATED_IMAGES = False

# Format name (as Pillow reports it) -> media type.
SUPPORTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
_MAGIC: list[tuple[bytes, int, str]] = [  # (signature, offset, format)
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WEBP"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
]
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode "L" or "RGB", upright; possibly smaller than the original (draft)
    original_width: int  # after EXIF orientation, at full resolution
    original_height: int
    format: str


# One frame as a client sent it: the bytes of an image file, or its pixels as an (H, W, C) uint8 array.
Frame = bytes | np.ndarray


def decode_frame(frame: Frame, *, channels: int, target_size: tuple[int, int] | None, max_pixels: int) -> DecodedImage:
    """`decode_image` for file bytes; raw pixels need no decoding."""
    if isinstance(frame, np.ndarray):
        return from_pixels(frame, channels=channels, max_pixels=max_pixels)
    return decode_image(frame, channels=channels, target_size=target_size, max_pixels=max_pixels)


def from_pixels(pixels: np.ndarray, *, channels: int, max_pixels: int) -> DecodedImage:
    """An (H, W, C) uint8 frame with the model's C channels, as the decoded image it already is."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != channels:
        raise UndecodableImage(
            f"raw pixels must be (height, width, {channels}) uint8 for this model, got {pixels.shape} {pixels.dtype}"
        )
    height, width = pixels.shape[:2]
    if height < 1 or width < 1:
        raise UndecodableImage(f"raw pixels of {width}x{height}: a frame has at least one pixel")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode="L" if channels == 1 else "RGB")
    return DecodedImage(image=image, original_width=width, original_height=height, format="RAW")


def sniff_format(data: bytes) -> str | None:
    """The format the bytes really are, among the supported ones, or None."""
    for signature, offset, fmt in _MAGIC:
        if data[offset : offset + len(signature)] == signature:
            if fmt == "WEBP" and data[:4] != b"RIFF":
                continue
            return fmt
    return None


def decode_image(data: bytes, *, channels: int, target_size: tuple[int, int] | None, max_pixels: int) -> DecodedImage:
    """Decode `data` into an upright image with the model's channels.

    `target_size` (width, height) is the size the image will be resized to next; it
    only decides how far a JPEG may be reduced while decoding. None: decode at full size.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise _unrecognised(data)
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    orientation = _orientation(image)
    swaps_axes = orientation in (5, 6, 7, 8)
    original_width, original_height = (height, width) if swaps_axes else (width, height)
    if fmt == "JPEG" and target_size is not None:
        tw, th = target_size
        image.draft("L" if channels == 1 else "RGB", (th, tw) if swaps_axes else (tw, th))
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise UndecodableImage(f"{fmt} image could not be decoded: {exc}") from exc
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        image = image.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    return DecodedImage(
        image=to_model_mode(image, channels),
        original_width=original_width,
        original_height=original_height,
        format=fmt,
    )


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert to "L" or "RGB", and only when the mode differs (a conversion copies)."""
    target = "L" if channels == 1 else "RGB"
    if image.mode in _SIXTEEN_BIT_MODES:
        # Scale the whole 16-bit range onto 8 bits; a plain convert would clip at 255.
        wide = np.asarray(image).astype(np.uint32, copy=False)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != target:
        image = image.convert(target)
    return image


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image pixel count is over the limit: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UndecodableImage(f"image header could not be read: {exc}") from exc


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block must not fail an otherwise good image
        return 1


def _unrecognised(data: bytes) -> Exception:
    """415 for an image format we do not take, 400 for bytes that are no image at all."""
    if not data:
        return UndecodableImage("the request carries no image bytes")
    try:
        fmt = Image.open(io.BytesIO(data)).format
    except Exception:
        return UndecodableImage("the bytes are not an image in any supported format")
    supported = ", ".join(SUPPORTED_FORMATS.values())
    return UnsupportedMediaType(f"{fmt} images are not supported; send one of {supported}")
