import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.synthetic import CLASSES, DEFECT_CLASSES, SEGMENTATION_CLASSES, encode_image, generate_weld


def test_the_same_seed_draws_the_same_frame() -> None:
    first, again, other = generate_weld(7), generate_weld(7), generate_weld(8)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.mask, again.mask)
    assert np.array_equal(first.boxes, again.boxes)
    assert first.label == again.label
    assert not np.array_equal(first.image, other.image)


def test_a_generator_continues_its_stream_instead_of_repeating() -> None:
    rng = np.random.default_rng(3)
    assert not np.array_equal(generate_weld(rng, 200, 160).image, generate_weld(rng, 200, 160).image)


@pytest.mark.parametrize("width, height", [(640, 480), (128, 128), (200, 700), (700, 200), (2448, 2048)])
def test_frames_come_at_the_requested_size(width: int, height: int) -> None:
    sample = generate_weld(11, width, height, label="porosity")
    assert sample.image.shape == (height, width) and sample.image.dtype == np.uint8
    assert sample.mask.shape == (height, width) and sample.mask.dtype == np.uint8
    assert len(sample.boxes) >= 1
    # Not a flat frame: the plate, the bead and the pores spread the grey levels.
    assert sample.image.std() > 10


def test_a_5mp_frame_takes_well_under_a_second() -> None:
    generate_weld(0, 2448, 2048)
    best = min(_timed(lambda: generate_weld(seed, 2448, 2048, label="crack")) for seed in (1, 2))
    assert best < 1.0


def _timed(draw) -> float:
    start = time.perf_counter()
    draw()
    return time.perf_counter() - start


@pytest.mark.parametrize("label", DEFECT_CLASSES)
def test_the_label_matches_what_was_drawn(label: str) -> None:
    for seed in range(10):
        sample = generate_weld(seed, 320, 240, label=label)
        assert sample.label == label
        assert sample.box_labels == [label] * len(sample.boxes) and len(sample.boxes) >= 1
        assert set(np.unique(sample.mask)) == {0, SEGMENTATION_CLASSES.index(label)}


def test_no_defect_frames_have_no_boxes_and_an_empty_mask() -> None:
    for seed in range(5):
        sample = generate_weld(seed, 320, 240, label="no_defect")
        assert sample.boxes.shape == (0, 4) and sample.box_labels == []
        assert not sample.mask.any()


@pytest.mark.parametrize("width, height", [(640, 480), (256, 700)])
def test_boxes_lie_in_the_frame_and_tightly_cover_their_class_pixels(width: int, height: int) -> None:
    for seed in range(30):
        sample = generate_weld(seed, width, height, label=DEFECT_CLASSES[seed % 3])
        class_pixels = sample.mask == SEGMENTATION_CLASSES.index(sample.label)
        covered = np.zeros_like(class_pixels)
        for x1, y1, x2, y2 in sample.boxes.astype(int):
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            inside = class_pixels[y1:y2, x1:x2]
            # Tight: the instance touches all four sides of its box.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y1:y2, x1:x2] = True
        assert not (class_pixels & ~covered).any()


def test_pores_are_separate_instances() -> None:
    counts = [len(generate_weld(seed, 640, 480, label="porosity").boxes) for seed in range(20)]
    assert max(counts) >= 3  # clusters happen
    for seed in range(20):
        boxes = generate_weld(seed, 640, 480, label="porosity").boxes
        top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
        bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
        overlap = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
        np.fill_diagonal(overlap, 0)
        assert not overlap.any()


def test_defects_stay_darker_than_their_surroundings_after_downscaling_to_160_px() -> None:
    for label in DEFECT_CLASSES:
        contrasts = []
        for seed in range(10):
            sample = generate_weld(seed, 640, 480, label=label)
            small = np.asarray(Image.fromarray(sample.image).resize((213, 160), Image.BILINEAR), dtype=float)
            defect = np.asarray(Image.fromarray(sample.mask > 0).resize((213, 160), Image.NEAREST))
            x1, y1, x2, y2 = (sample.boxes[0] / 3).astype(int)
            ring = np.zeros_like(defect)
            ring[max(0, y1 - 4) : y2 + 4, max(0, x1 - 4) : x2 + 4] = True
            ring &= ~defect
            contrasts.append(small[ring].mean() - small[defect].mean())
        assert np.median(contrasts) > 25, (label, contrasts)


def test_random_labels_follow_the_documented_mix() -> None:
    rng = np.random.default_rng(0)
    labels = [generate_weld(rng, 128, 128).label for _ in range(400)]
    shares = {label: labels.count(label) / len(labels) for label in CLASSES}
    assert shares["no_defect"] == pytest.approx(0.4, abs=0.08)
    for label in DEFECT_CLASSES:
        assert shares[label] == pytest.approx(0.2, abs=0.07)


def test_too_small_frames_and_unknown_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 128x128"):
        generate_weld(0, 127, 480)
    with pytest.raises(ValueError, match="unknown label 'slag'"):
        generate_weld(0, label="slag")


def test_encode_image_writes_the_requested_format() -> None:
    image = generate_weld(5, 320, 240).image
    png = encode_image(image, "PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), image)
    jpeg = encode_image(image, quality=90)
    decoded = Image.open(io.BytesIO(jpeg))
    assert (decoded.format, decoded.mode, decoded.size) == ("JPEG", "L", (320, 240))
    assert np.abs(np.asarray(decoded, dtype=int) - image).mean() < 3


def test_the_generator_imports_without_torch() -> None:
    code = "import sys, export.synthetic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 0
