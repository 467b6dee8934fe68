import io

import numpy as np
import pytest
from PIL import Image

from service.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType
from service.pipeline.decode import decode_image, sniff_format


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF"])
def test_every_supported_format_is_sniffed_and_decoded(fmt):
    data = encode(gradient(), fmt)
    assert sniff_format(data) == fmt
    decoded = decode_image(data, channels=1, target_size=(64, 48), max_pixels=10_000)
    assert decoded.format == fmt
    assert decoded.image.mode == "L"
    assert (decoded.original_width, decoded.original_height) == (64, 48)
    pixels = np.asarray(decoded.image).astype(int)
    assert abs(pixels[:, -1].mean() - 255) < 12 and pixels[:, 0].mean() < 12


def test_sixteen_bit_grayscale_is_scaled_onto_eight_bits_not_clipped():
    wide = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    decoded = decode_image(encode(wide, "PNG"), channels=1, target_size=(4, 1), max_pixels=100)
    assert np.asarray(decoded.image).tolist() == [[0, 1, 128, 255]]


def test_grayscale_image_becomes_rgb_for_a_three_channel_model():
    decoded = decode_image(encode(gradient(), "PNG"), channels=3, target_size=(64, 48), max_pixels=10_000)
    pixels = np.asarray(decoded.image)
    assert pixels.shape == (48, 64, 3)
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_exif_orientation_is_applied_and_reported_size_is_upright():
    image = np.zeros((40, 100), dtype=np.uint8)
    image[:, :10] = 255  # bright strip on the left edge of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turns it 90 degrees clockwise
    data = encode(image, "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, channels=1, target_size=(40, 100), max_pixels=10_000)
    assert (decoded.original_width, decoded.original_height) == (40, 100)
    upright = np.asarray(decoded.image)
    assert upright.shape == (100, 40)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the strip is now on top


def test_large_jpeg_is_decoded_at_reduced_scale_but_reports_its_full_size():
    data = encode(np.full((2048, 2448), 128, dtype=np.uint8), "JPEG")
    decoded = decode_image(data, channels=1, target_size=(160, 160), max_pixels=40_000_000)
    assert (decoded.original_width, decoded.original_height) == (2448, 2048)
    assert decoded.image.size == (306, 256)  # 1/8 scale: still at least the target size
    assert 160 <= min(decoded.image.size)
    full = decode_image(data, channels=1, target_size=None, max_pixels=40_000_000)
    assert full.image.size == (2448, 2048)  # no target: decoded at full size (no antialiased shrink)


def test_pixel_count_over_the_limit_is_refused_before_decoding():
    data = encode(np.zeros((1000, 1000), dtype=bool), "PNG")  # a million pixels in a few hundred bytes
    assert len(data) < 5000
    with pytest.raises(PayloadTooLarge, match="1000x1000"):
        decode_image(data, channels=1, target_size=(64, 64), max_pixels=999_999)


def test_truncated_jpeg_is_undecodable():
    data = encode(gradient(640, 480), "JPEG")
    with pytest.raises(UndecodableImage, match="could not be decoded"):
        decode_image(data[: len(data) // 2], channels=1, target_size=(64, 64), max_pixels=10**7)


def test_bytes_that_are_no_image_are_undecodable():
    with pytest.raises(UndecodableImage):
        decode_image(b"definitely not an image", channels=1, target_size=(64, 64), max_pixels=10**7)
    with pytest.raises(UndecodableImage, match="no image bytes"):
        decode_image(b"", channels=1, target_size=(64, 64), max_pixels=10**7)


def test_an_image_format_we_do_not_take_is_unsupported():
    with pytest.raises(UnsupportedMediaType, match="PPM"):
        decode_image(encode(gradient(), "PPM"), channels=1, target_size=(64, 64), max_pixels=10**7)
