import numpy as np
from PIL import Image

from service.manifest import InputSpec
from service.pipeline.decode import DecodedImage
from service.pipeline.preprocess import to_batch, to_model_input


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
