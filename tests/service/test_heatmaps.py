"""Heat maps without a model: where a grid's cells land on the frame, the occlusion grid's arithmetic,
a detector's grid levels, a segmenter's probabilities, and which requests may ask for which map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidParameters
from service.heatmaps import (
    LUT,
    OCCLUSION_CELLS,
    OCCLUSION_PATCH,
    OCCLUSION_RUNS,
    EvidenceGrid,
    HeatmapMethod,
    decode_png,
    occluded_copies,
    occlusion_fill,
    occlusion_grid,
    overlay,
    render,
    top_class,
)
from service.heatmaps import main as heatmap_cli
from service.manifest import ActivationMap
from service.pipeline.geometry import Geometry
from service.tasks import parse_options
from service.tasks.detection.heatmap import grid_levels, grid_scores
from service.tasks.segmentation.postprocess import class_probability
from tests.service.manifests import classifier_manifest, detector_manifest, segmenter_manifest


def _draw(values: np.ndarray, geometry: Geometry, scale: float = 1.0):
    return render(
        EvidenceGrid.over_input(values, geometry),
        geometry,
        class_name="crack",
        method=HeatmapMethod.SCORES,
        unit="score",
        scale=scale,
    )


def test_one_hot_cell_is_drawn_where_it_lies_on_a_stretched_frame():
    # A 10x10 grid over a 160x160 input stretched from 640x480: a cell is 64x48 frame pixels.
    geometry = Geometry.stretch((640, 480), (160, 160))
    values = np.zeros((10, 10), dtype=np.float32)
    values[7, 2] = 0.8
    heatmap = _draw(values, geometry)
    pixels = decode_png(heatmap)
    # Half the frame's size: each PNG pixel is 2x2 frame pixels.
    assert heatmap.downscale == 2 and pixels.shape == (240, 320) and (heatmap.width, heatmap.height) == (320, 240)
    assert (heatmap.peak, heatmap.peak_x, heatmap.peak_y) == (pytest.approx(0.8), 2 * 64 + 32, 7 * 48 + 24)
    rows, cols = np.nonzero(pixels == pixels.max())
    assert abs(2 * cols.mean() + 1 - (2 * 64 + 32)) <= 2 and abs(2 * rows.mean() + 1 - (7 * 48 + 24)) <= 2
    # No pixel's centre is exactly a cell's: the brightest is a hair under the peak's intensity.
    assert round(0.95 * 0.8 * 255) <= pixels.max() <= round(0.8 * 255)
    # Bilinear between cell centres: nothing more than a cell away from the hot one.
    assert pixels[:, : (64 + 32) // 2].max() == 0 and pixels[: (48 * 6 + 24) // 2].max() == 0


def test_a_letterboxed_frame_is_drawn_from_its_content_only():
    # 640x320 into 160x160: content 160x80 from row 40; a 10x10 grid has the frame on rows 2.5 to 7.5.
    geometry = Geometry.letterbox((640, 320), (160, 160))
    values = np.zeros((10, 10), dtype=np.float32)
    values[0, 5] = 1.0  # padding: never the peak, never drawn
    values[3, 5] = 0.5
    heatmap = _draw(values, geometry)
    assert (heatmap.peak, heatmap.peak_x, heatmap.peak_y) == (pytest.approx(0.5), 5 * 64 + 32, round((3.5 - 2.5) * 64))
    assert decode_png(heatmap).shape == (160, 320)


def test_the_png_is_the_frame_divided_by_the_least_whole_factor_that_fits_512():
    for (width, height), downscale, size in (
        ((512, 384), 1, (512, 384)),
        ((640, 480), 2, (320, 240)),
        ((2448, 2048), 5, (490, 410)),
        ((1001, 3), 2, (501, 2)),
    ):
        heatmap = _draw(np.ones((4, 4), dtype=np.float32), Geometry.stretch((width, height), (64, 64)))
        assert (heatmap.downscale, (heatmap.width, heatmap.height)) == (downscale, size)
        assert decode_png(heatmap).shape == size[::-1] and decode_png(heatmap).min() == 255


def test_intensity_is_linear_in_the_stated_scale_and_clipped():
    geometry = Geometry.stretch((8, 8), (8, 8))
    values = np.array([[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0]] * 8, dtype=np.float32)
    pixels = decode_png(_draw(values, geometry, scale=4.0))
    assert pixels[0].tolist() == [0, 0, 64, 128, 191, 255, 255, 255]


def test_occluded_copies_cover_each_patch_of_the_content_with_the_mean_pixel():
    geometry = Geometry.letterbox((320, 160), (64, 64))  # content 64x32 from row 16
    tensor = np.full((1, 64, 64), 200, dtype=np.uint8)
    fill = np.array([115], dtype=np.uint8)
    copies = occluded_copies(tensor, geometry, fill)
    assert len(copies) == OCCLUSION_RUNS == 49
    covered = [np.argwhere(copy[0] == 115) for copy in copies]
    # Cells of 8x4 pixels, patches of 2x2 cells, sliding one cell: the first at the content's corner.
    assert covered[0].min(axis=0).tolist() == [16, 0] and covered[0].max(axis=0).tolist() == [16 + 7, 15]
    last = OCCLUSION_CELLS - OCCLUSION_PATCH
    assert covered[last].min(axis=0).tolist() == [16, 6 * 8] and covered[-1].max(axis=0).tolist() == [47, 63]
    assert all(len(c) == 16 * 8 for c in covered)
    assert tensor.min() == 200  # the original is left alone


def test_the_occlusion_fill_is_the_pixel_the_normalisation_takes_to_zero():
    spec = classifier_manifest().input
    assert occlusion_fill(spec).tolist() == [round(m / spec.scale) for m in spec.mean]


def test_a_cell_gets_the_mean_drop_of_the_patches_covering_it():
    drops = np.zeros(OCCLUSION_RUNS)
    drops[0] = 0.4  # the patch on cells (0..1, 0..1)
    grid = occlusion_grid(0.9, list(0.9 - drops))
    # Cell (0, 0) is covered by one patch, (1, 1) by four, (0, 1) by two.
    assert grid.values[0, 0] == pytest.approx(0.4)
    assert grid.values[1, 1] == pytest.approx(0.1)
    assert grid.values[0, 1] == pytest.approx(0.2)
    assert grid.values[2:, :].max() == 0 and grid.values[:, 2:].max() == 0
    assert grid.box == (0.0, 0.0, 8.0, 8.0)
    with pytest.raises(ValueError, match="expected 49"):
        occlusion_grid(0.9, [0.9] * 48)


def test_a_detector_grid_is_found_from_its_cells_and_the_input():
    assert grid_levels(20 * 20, 160, 160) == [(20, 20)]
    assert grid_levels(80 * 80 + 40 * 40 + 20 * 20, 640, 640) == [(80, 80), (40, 40), (20, 20)]
    assert grid_levels(20 * 32 + 10 * 16 + 5 * 8, 256, 160) == [(20, 32), (10, 16), (5, 8)]
    with pytest.raises(InvalidParameters, match="fit no grid"):
        grid_levels(123, 160, 160)


def test_a_point_takes_the_largest_score_of_the_levels_covering_it():
    manifest = detector_manifest()
    classes = manifest.classes
    levels = [(4, 4), (2, 2), (1, 1)]
    anchors = sum(r * c for r, c in levels)
    raw = np.zeros((4 + len(classes), anchors), dtype=np.float32)
    crack = 4 + classes.index("crack")
    raw[crack, 5] = 0.3  # finest level, row 1 col 1
    raw[crack, 16 + 3] = 0.6  # middle level, row 1 col 1: the finest's rows 2-3, cols 2-3
    raw[4 + classes.index("porosity"), 16 + 4] = 0.2  # the coarsest level: everywhere
    geometry = Geometry.stretch((32, 32), (32, 32))
    name, grid = grid_scores([raw], manifest, geometry, ["crack", "porosity"])
    assert name == "crack"
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[1, 1] = 0.3
    expected[2:, 2:] = 0.6
    np.testing.assert_array_equal(grid, expected)
    name, grid = grid_scores([raw], manifest, geometry, ["porosity"])
    assert name == "porosity" and np.all(grid == np.float32(0.2))


def test_a_segmenter_map_is_the_class_probability_of_the_class_most_probable_somewhere():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    logits[2, 1, 1] = 9.0
    name, probability = class_probability(logits, ["background", "pore", "crack"], ["pore", "crack"])
    softmax = np.exp(logits) / np.exp(logits).sum(axis=0)
    assert name == "crack"
    np.testing.assert_allclose(probability, softmax[2], rtol=1e-5)


def test_the_top_class_is_the_highest_scored_candidate():
    assert top_class({"crack": 0.2, "pore": 0.7}, ["crack", "pore"]) == "pore"
    assert top_class({"crack": 0.2, "pore": 0.7}, ["crack"]) == "crack"


def test_which_requests_may_ask_for_which_map():
    plain = classifier_manifest()
    with_cam = plain.model_copy(
        update={"activation_map": ActivationMap(features="features", weights="w.npy", scale=2.0)}
    )
    assert parse_options(plain, {}).heatmap_method is None
    assert parse_options(plain, {"heatmap": "auto"}).heatmap_method is HeatmapMethod.OCCLUSION
    assert parse_options(with_cam, {"heatmap": "auto"}).heatmap_method is HeatmapMethod.CAM
    assert parse_options(with_cam, {"heatmap": "occlusion"}).heatmap_method is HeatmapMethod.OCCLUSION
    options = parse_options(with_cam, {"heatmap_class": "crack"})
    assert options.heatmap_method is HeatmapMethod.CAM and options.heatmap_candidates(with_cam) == ["crack"]
    assert parse_options(segmenter_manifest(), {"heatmap": "auto"}).heatmap_method is HeatmapMethod.SCORES
    assert parse_options(detector_manifest(), {"heatmap": "scores"}).heatmap_method is HeatmapMethod.SCORES
    for manifest, given, message in (
        (plain, {"heatmap": "cam"}, "one of auto, occlusion"),
        (plain, {"heatmap": "yes"}, "one of auto, occlusion"),
        (segmenter_manifest(), {"heatmap": "cam"}, "one of auto, scores"),
        (plain, {"heatmap_class": plain.background_class}, "not a defect class"),
        (detector_manifest(decoder="boxes_scores_labels"), {"heatmap": "auto"}, "no heat map"),
    ):
        with pytest.raises(InvalidParameters, match=message):
            parse_options(manifest, given)


def test_the_candidates_follow_the_class_filter():
    manifest = classifier_manifest()
    options = parse_options(manifest, {"heatmap": "auto", "classes": "crack"})
    assert options.heatmap_candidates(manifest) == ["crack"]
    assert parse_options(manifest, {"heatmap": "auto"}).heatmap_candidates(manifest) == manifest.defect_classes


def test_a_map_is_drawn_over_its_frame_where_it_is_strong_only(tmp_path, capsys):
    geometry = Geometry.stretch((640, 480), (160, 160))
    values = np.zeros((10, 10), dtype=np.float32)
    values[7, 2] = 1.0
    heatmap = _draw(values, geometry)
    frame = Image.fromarray(np.full((480, 640), 90, dtype=np.uint8))
    drawn = np.asarray(overlay(frame, heatmap, opacity=0.6))
    # Each pixel: the ramp's colour of its intensity over the gray, opaque in proportion (60% at 255);
    # where there is no evidence, the frame as it was.
    y, x = 7 * 48 + 24, 2 * 64 + 32 + 1
    enlarged = Image.fromarray(decode_png(heatmap)).resize((640, 480), Image.Resampling.BILINEAR)
    intensity = int(np.asarray(enlarged)[y, x])
    alpha = intensity / 255 * 0.6
    assert intensity >= 240
    np.testing.assert_allclose(drawn[y, x], (1 - alpha) * 90 + alpha * LUT[intensity].astype(float), atol=1)
    assert (drawn[:100, 400:] == 90).all()
    with pytest.raises(ValueError, match="the map is 320x240 at 1/2, the frame 320x240"):
        overlay(frame.resize((320, 240)), heatmap)

    frame.save(tmp_path / "frame.png")
    (tmp_path / "answer.json").write_text(
        json.dumps({"decision": "reject", "heatmap": heatmap.model_dump(mode="json")})
    )
    assert heatmap_cli([str(tmp_path / p) for p in ("frame.png", "answer.json", "out.png")]) == 0
    assert "crack by scores, peak 1 at (160, 360); full colour at 1 (score)" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), drawn)
    (tmp_path / "plain.json").write_text(json.dumps({"decision": "accept"}))
    with pytest.raises(SystemExit):
        heatmap_cli([str(tmp_path / p) for p in ("frame.png", "plain.json", "out.png")])
    assert "has no heat map: ask with ?heatmap=auto" in capsys.readouterr().err


def test_weak_evidence_can_be_drawn_in_full_colour_at_the_frame_s_peak(tmp_path, capsys):
    geometry = Geometry.stretch((64, 64), (64, 64))
    values = np.full((8, 8), 0.5, dtype=np.float32)  # a tenth of the scale: intensity 26 of 255
    heatmap = render(
        EvidenceGrid.over_input(values, geometry),
        geometry,
        class_name="crack",
        method=HeatmapMethod.CAM,
        unit="class activation",
        scale=5.0,
    )
    frame = Image.fromarray(np.zeros((64, 64), dtype=np.uint8))
    faint, full = (np.asarray(overlay(frame, heatmap, opacity=1.0, full=f)) for f in (None, 0.5))
    # Over black, at full opacity (away from the ring around the peak): the ramp's colour times the
    # intensity's share of 255.
    assert (faint[60, 60] == np.rint(LUT[26].astype(float) * 26 / 255)).all() and (full[60, 60] == LUT[255]).all()
    frame.save(tmp_path / "frame.png")
    (tmp_path / "answer.json").write_text(json.dumps({"heatmap": heatmap.model_dump(mode="json")}))
    paths = [str(tmp_path / p) for p in ("frame.png", "answer.json", "out.png")]
    assert heatmap_cli([*paths, "--full", "peak"]) == 0
    assert "full colour at 0.5, not the model's 5 (class activation)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        heatmap_cli([*paths, "--full", "0"])
    assert "--full must be above 0" in capsys.readouterr().err


def test_a_frame_thinner_than_a_cell_still_has_its_peak_on_it():
    # 6000x100 letterboxed into 160x160: the content is 3 input rows, inside one 16-pixel cell row
    # whose centre lies off it.
    geometry = Geometry.letterbox((6000, 100), (160, 160))
    values = np.zeros((10, 10), dtype=np.float32)
    values[4, 7] = 0.7
    values[0, 0] = 0.9  # padding
    heatmap = _draw(values, geometry)
    assert heatmap.peak == pytest.approx(0.7) and 0 <= heatmap.peak_y < 100
    assert heatmap.peak_x == int((7.5 * 16 - 0) / 160 * 6000)
    assert decode_png(heatmap).shape == (heatmap.height, heatmap.width) == (9, 500)
