"""The demo training pipeline, run small: the full run is `python -m export demo`."""

from pathlib import Path

import numpy as np

from export.demo import TrainingPlan, detector_targets, mask_to_input, run_demo
from service.model_store import load_version
from service.pipeline.geometry import Geometry


def test_a_tiny_demo_run_trains_measures_and_exports_all_three_models(tmp_path: Path) -> None:
    plan = TrainingPlan(
        train_images=24, test_images=6, classifier_epochs=1, detector_epochs=1, segmenter_epochs=1, batch_size=8
    )
    lines: list[str] = []
    versions = run_demo(tmp_path, seed=5, plan=plan, log=lines.append)

    assert [v.manifest.ref for v in versions] == ["weld-classifier:1", "weld-detector:1", "weld-segmenter:1"]
    headline = {"weld-classifier": "accuracy", "weld-detector": "map50", "weld-segmenter": "mean_iou"}
    for version in versions:
        assert load_version(tmp_path, version.manifest.name).manifest == version.manifest
        quality = version.manifest.quality
        assert quality.dataset == "synthetic welds, seed 10005, 6 images 640x480"
        assert 0.0 <= quality.metrics[headline[version.manifest.name]] <= 1.0
        assert any(line.startswith(f"{version.manifest.name}: epoch 1/1 loss ") for line in lines)
    assert lines[0].startswith("generated 24 training and 6 test frames")


def test_detector_targets_peak_at_the_centre_cell_which_regresses_the_box() -> None:
    box = np.array([[60.0, 20.0, 100.0, 36.0]], dtype=np.float32)  # centre (80, 28): cell row 3, column 10
    targets = detector_targets([box], [np.array([1])], num_classes=3, input_size=(64, 128))
    centre_cell = 3 * (128 // 8) + 10
    assert targets.heatmaps.shape == (1, 3, 8 * 16)
    assert targets.heatmaps[0, 1, centre_cell] == 1.0
    assert targets.heatmaps[0, 1].argmax() == centre_cell and targets.heatmaps[0, 1].max() == 1.0
    assert not targets.heatmaps[0, [0, 2]].any()
    assert targets.boxes[0, :, centre_cell].tolist() == [60.0, 20.0, 100.0, 36.0]
    assert targets.box_weights[0, centre_cell] == 1.0
    assert targets.box_weights[0, 0] == 0.0  # a far corner regresses nothing


def test_segmenter_targets_mark_pixels_a_defect_covers_at_least_half_of() -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :2] = 2
    target = mask_to_input(mask, Geometry.stretch((4, 4), (2, 2)))
    assert target.tolist() == [[2, 0], [0, 0]]
