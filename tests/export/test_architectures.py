import math

import pytest
import torch

from export.architectures import build_unet, build_weld_classifier, build_weld_detector


def test_classifier_gives_one_logit_per_class_at_any_batch_and_input_size() -> None:
    model = build_weld_classifier(1, 4).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 160, 160)).shape == (3, 4)
        assert model(torch.zeros(1, 1, 96, 128)).shape == (1, 4)


def test_detector_head_has_the_yolo_layout_with_boxes_in_input_pixels() -> None:
    model = build_weld_detector(1, 3, (64, 96)).eval()
    # Known box outputs: centre 0.5 stride right of and 0.25 stride above each cell's centre,
    # width 2 strides, height 3 strides.
    torch.nn.init.zeros_(model.box.weight)
    with torch.no_grad():
        model.box.bias.copy_(torch.tensor([0.5, -0.25, math.log(2), math.log(3)]))
        head = model(torch.randn(2, 1, 64, 96))
    assert head.shape == (2, 4 + 3, (64 // 8) * (96 // 8))
    cells_per_row = 96 // 8
    first_row_x = torch.arange(cells_per_row) * 8 + 4.0
    assert torch.allclose(head[0, 0, :cells_per_row], first_row_x + 4)
    assert torch.allclose(head[1, 1, :cells_per_row], torch.full((cells_per_row,), 4.0 - 2))
    assert torch.allclose(head[0, 1, cells_per_row], torch.tensor(12.0 - 2))  # second row of cells
    assert torch.allclose(head[:, 2], torch.tensor(16.0)) and torch.allclose(head[:, 3], torch.tensor(24.0))
    scores = head[:, 4:]
    assert ((scores > 0) & (scores < 1)).all()


def test_detector_refuses_an_input_size_off_its_stride_32_grid() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        build_weld_detector(1, 3, (100, 96))


@pytest.mark.parametrize("depth", [2, 4])
def test_unet_gives_per_pixel_logits_at_the_input_size(depth: int) -> None:
    model = build_unet(1, 4, base=4, depth=depth).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 96)).shape == (2, 4, 64, 96)


def test_unet_depth_and_base_set_its_widths() -> None:
    model = build_unet(1, 4, base=8, depth=4)
    assert [block[1][0].out_channels for block in model.down] == [8, 16, 32, 64, 128]
