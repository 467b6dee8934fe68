import numpy as np
from PIL import Image

from service.manifest import InputSpec
from service.pipeline.decode import DecodedImage
from service.pipeline.preprocess import resize, to_batch, to_model_input


def spec(**overrides) -> InputSpec:
    fields = dict(
        name="images",
        channels=1,
        height=32,
        width=32,
        resize="letterbox",
        dtype="uint8",
        mean=(0.5,),
        std=(0.25,),
        normalization_in_graph=True,
        dynamic_batch=True,
        letterbox_fill=114,
    )
    return InputSpec(**{**fields, **overrides})


def decoded(array: np.ndarray) -> DecodedImage:
    return DecodedImage(Image.fromarray(array), array.shape[1], array.shape[0], "PNG")


def test_letterbox_places_a_wide_frame_in_the_middle_and_pads_with_the_fill_value():
    frame = np.full((48, 64), 200, dtype=np.uint8)  # 4:3 into 32x32 -> 32x24 content, 4 rows of pad each side
    tensor, geometry = to_model_input(decoded(frame), spec())
    assert tensor.shape == (1, 32, 32) and tensor.dtype == np.uint8
    assert geometry.content_box == (0, 4, 32, 28)
    assert (tensor[0, :4] == 114).all() and (tensor[0, 28:] == 114).all()
    assert (tensor[0, 4:28] == 200).all()


def test_stretch_fills_the_whole_input_in_channel_first_order():
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    frame[..., 0] = 10
    frame[..., 2] = 250
    tensor, geometry = to_model_input(decoded(frame), spec(channels=3, resize="stretch", mean=(0, 0, 0), std=(1, 1, 1)))
    assert tensor.shape == (3, 32, 32)
    assert geometry.content_box == (0, 0, 32, 32)
    assert (tensor[0] == 10).all() and (tensor[1] == 0).all() and (tensor[2] == 250).all()


def test_batch_is_normalised_here_only_when_the_graph_does_not():
    images = [np.full((1, 2, 2), 255, dtype=np.uint8), np.zeros((1, 2, 2), dtype=np.uint8)]
    raw = to_batch(images, spec(height=8, width=8))
    assert raw.dtype == np.uint8 and raw.shape == (2, 1, 2, 2) and raw.flags["C_CONTIGUOUS"]
    normalised = to_batch(images, spec(height=8, width=8, dtype="float32", normalization_in_graph=False))
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised[0], (1.0 - 0.5) / 0.25)
    np.testing.assert_allclose(normalised[1], (0.0 - 0.5) / 0.25)


def opencv_linear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR, written out: each output pixel centre maps to (x + 0.5) * scale - 0.5 in the
    source, clamped to it, and takes the bilinear mix of the 2x2 pixels around that point."""

    def taps(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        where = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        low = np.floor(where).astype(int)
        return low, np.minimum(low + 1, size - 1), where - low

    y0, y1, wy = taps(height, pixels.shape[0])
    x0, x1, wx = taps(width, pixels.shape[1])
    source = pixels.astype(np.float64)
    rows = source[y0] * (1 - wy)[:, None] + source[y1] * wy[:, None]
    return np.rint(rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.uint8)


def test_the_linear_filter_shrinks_as_opencv_does_and_unlike_the_antialiased_one():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (480, 640), dtype=np.uint8)
    linear = np.asarray(resize(Image.fromarray(frame), (256, 192), "linear"))
    reference = opencv_linear(frame, 256, 192)
    assert int(np.abs(linear.astype(int) - reference).max()) <= 1  # fixed-point rounding at most
    antialiased = np.asarray(resize(Image.fromarray(frame), (256, 192), "bilinear_antialias"))
    # Averaging more pixels, the antialiased shrink of noise is much smoother.
    assert antialiased.std() < 0.8 * linear.std()


def test_padding_to_the_stride_gives_a_smaller_input_with_the_pad_split_around_the_frame():
    frame = np.full((40, 64), 200, dtype=np.uint8)  # 32x20 of content; 4 rows of pad reach 24, a multiple of 8
    tensor, geometry = to_model_input(decoded(frame), spec(pad_to_stride=8))
    assert tensor.shape == (1, 24, 32) and tensor.flags["C_CONTIGUOUS"]
    assert (geometry.input_width, geometry.input_height) == (32, 24)
    assert (tensor[0, :2] == 114).all() and (tensor[0, 22:] == 114).all()
    assert (tensor[0, 2:22] == 200).all()


def test_a_frame_that_fills_a_stride_multiple_is_not_padded_at_all():
    frame = np.full((48, 64), 200, dtype=np.uint8)  # 32x24 of content: 24 is a multiple of 8
    tensor, _ = to_model_input(decoded(frame), spec(pad_to_stride=8))
    assert tensor.shape == (1, 24, 32) and (tensor == 200).all()
