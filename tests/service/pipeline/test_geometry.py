import numpy as np
import pytest

from service.pipeline.geometry import Geometry


def test_letterbox_of_landscape_frame_scales_by_half_and_pads_top_and_bottom():
    g = Geometry.letterbox((640, 480), (320, 320))

    assert (g.scale_x, g.scale_y, g.pad_x, g.pad_y) == (0.5, 0.5, 0.0, 40.0)
    assert g.content_box == (0, 40, 320, 280)
    assert g.content_size == (320, 240)


def test_letterbox_of_portrait_frame_pads_left_and_right():
    g = Geometry.letterbox((480, 640), (320, 320))

    assert (g.pad_x, g.pad_y) == (40.0, 0.0)
    assert g.content_box == (40, 0, 280, 320)


def test_letterbox_rounds_content_size_and_puts_the_odd_pad_pixel_at_the_bottom():
    g = Geometry.letterbox((100, 45), (64, 64))  # 45 * 0.64 = 28.8 -> 29 rows, 35 rows of pad

    assert g.content_box == (0, 17, 64, 46)
    assert g.scale_y == pytest.approx(29 / 45)


def test_stretch_has_no_padding_and_separate_axis_scales():
    g = Geometry.stretch((640, 480), (320, 320))

    assert (g.scale_x, g.scale_y, g.pad_x, g.pad_y) == (0.5, 320 / 480, 0.0, 0.0)
    assert g.content_box == (0, 0, 320, 320)


def test_letterboxed_box_maps_back_to_original_pixels_exactly():
    g = Geometry.letterbox((640, 480), (320, 320))

    original = g.boxes_to_original(np.array([[10.0, 50.0, 110.0, 150.0]]))

    assert original.dtype == np.float32
    np.testing.assert_array_equal(original, [[20.0, 20.0, 220.0, 220.0]])


def test_stretched_box_maps_back_with_each_axis_scale():
    g = Geometry.stretch((640, 480), (320, 320))

    original = g.boxes_to_original(np.array([[32.0, 64.0, 160.0, 320.0]]))

    np.testing.assert_allclose(original, [[64.0, 96.0, 320.0, 480.0]])


def test_boxes_reaching_into_the_padding_are_clipped_to_the_frame():
    g = Geometry.letterbox((640, 480), (320, 320))

    original = g.boxes_to_original(np.array([[-10.0, 30.0, 330.0, 300.0], [100.0, 0.0, 120.0, 30.0]]))

    np.testing.assert_array_equal(original, [[0.0, 0.0, 640.0, 480.0], [200.0, 0.0, 240.0, 0.0]])


def test_no_boxes_map_to_an_empty_4_column_array():
    g = Geometry.letterbox((640, 480), (320, 320))

    assert g.boxes_to_original(np.zeros((0, 4))).shape == (0, 4)


def test_letterboxed_mask_drops_the_padding_and_doubles_back_to_the_original_size():
    g = Geometry.letterbox((640, 480), (320, 320))
    class_map = np.zeros((320, 320), dtype=np.uint8)
    class_map[:40] = 7  # padding: must not reach the original
    class_map[280:] = 7
    class_map[40 + 10 : 40 + 20, 30:50] = 2

    original = g.mask_to_original(class_map)

    expected = np.zeros((480, 640), dtype=np.uint8)
    expected[20:40, 60:100] = 2
    np.testing.assert_array_equal(original, expected)


def test_mask_downscaled_to_a_smaller_original_takes_the_pixel_under_each_centre():
    g = Geometry.stretch((2, 2), (4, 4))
    class_map = np.arange(16, dtype=np.uint8).reshape(4, 4)

    np.testing.assert_array_equal(g.mask_to_original(class_map), [[5, 7], [13, 15]])


def test_mask_already_at_original_size_is_unchanged():
    g = Geometry.stretch((5, 3), (5, 3))
    class_map = np.arange(15, dtype=np.int64).reshape(3, 5)

    np.testing.assert_array_equal(g.mask_to_original(class_map), class_map)


def test_mask_not_at_input_size_is_refused():
    g = Geometry.letterbox((640, 480), (320, 320))

    with pytest.raises(ValueError, match="input size"):
        g.mask_to_original(np.zeros((240, 320), dtype=np.uint8))


def test_stride_letterbox_runs_a_320x200_frame_at_256x160_as_ultralytics_does():
    g = Geometry.letterbox((320, 200), (256, 256), stride=32)  # scale 0.8: 256x160 of content, no pad left

    assert (g.input_width, g.input_height) == (256, 160)
    assert (g.scale_x, g.scale_y, g.pad_x, g.pad_y) == (0.8, 0.8, 0.0, 0.0)


def test_stride_letterbox_pads_the_short_side_only_up_to_the_next_multiple_of_the_stride():
    g = Geometry.letterbox((640, 360), (256, 256), stride=32)  # 256x144 of content: 16 rows of pad, 8 each side

    assert (g.input_width, g.input_height) == (256, 160)
    assert g.content_box == (0, 8, 256, 152)


def test_stride_letterbox_puts_the_odd_pad_pixel_at_the_bottom_as_ultralytics_rounds():
    # 45 * 0.64 = 28.8 -> 29 rows; 3 rows of pad to reach 32: ultralytics' round(1.5 - 0.1) = 1 on top.
    g = Geometry.letterbox((100, 45), (64, 64), stride=32)

    assert (g.input_width, g.input_height) == (64, 32)
    assert g.content_box == (0, 1, 64, 30)


def test_stride_letterbox_of_a_portrait_frame_narrows_the_input():
    g = Geometry.letterbox((200, 320), (256, 256), stride=32)

    assert (g.input_width, g.input_height) == (160, 256)
    assert g.content_box == (0, 0, 160, 256)


def test_stride_letterbox_of_a_square_frame_is_the_full_letterbox():
    assert Geometry.letterbox((500, 500), (256, 256), stride=32) == Geometry.letterbox((500, 500), (256, 256))


def test_box_in_a_stride_letterboxed_input_maps_back_to_original_pixels():
    g = Geometry.letterbox((640, 360), (256, 256), stride=32)  # scale 0.4, 8 rows of pad on top

    original = g.boxes_to_original(np.array([[40.0, 28.0, 80.0, 48.0]]))

    np.testing.assert_allclose(original, [[100.0, 50.0, 200.0, 100.0]])


def test_stride_letterboxed_mask_maps_back_through_the_smaller_input():
    g = Geometry.letterbox((640, 360), (256, 256), stride=32)
    class_map = np.full((160, 256), 7, dtype=np.uint8)  # the pad rows: must not reach the original
    class_map[8:152] = 0
    class_map[8 + 20 : 8 + 40, 40:80] = 2

    original = g.mask_to_original(class_map)

    expected = np.zeros((360, 640), dtype=np.uint8)
    expected[50:100, 100:200] = 2
    np.testing.assert_array_equal(original, expected)


def test_stride_letterbox_into_an_input_the_stride_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="multiple of the stride"):
        Geometry.letterbox((320, 200), (250, 250), stride=32)
