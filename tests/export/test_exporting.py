"""export_model on real torchvision and project-style models, checked in real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.errors import ExportError
from export.exporting import IN_GRAPH_SCORE_THRESHOLD, ExportRequest, export_model
from service.manifest import ModelManifest
from service.model_store import load_version

from .models import (
    DEFECTS,
    DETECTOR_CLASSES,
    MEAN,
    SIZE,
    STD,
    WELD_CLASSES,
    FixedSizeClassifier,
    NoisyClassifier,
    TinyYoloHead,
    calibrated,
    export_request,
    normalised,
    random_images,
    run_onnx,
    torchvision_detector,
    torchvision_model,
)


def assert_nothing_written(store: Path) -> None:
    assert not store.exists() or not any(store.rglob("*")), sorted(store.rglob("*"))


@pytest.mark.parametrize(
    ("architecture", "task", "decoder", "classes", "background"),
    [
        ("mobilenet_v3_small", "classification", "softmax", WELD_CLASSES, "no_defect"),
        ("efficientnet_b0", "classification", "sigmoid", WELD_CLASSES, "no_defect"),
        ("lraspp_mobilenet_v3_large", "segmentation", "segmentation_logits", ["background", *DEFECTS], "background"),
    ],
)
def test_torchvision_model_exports_with_normalisation_in_graph_and_dynamic_batch(
    tmp_path: Path, architecture: str, task: str, decoder: str, classes: list[str], background: str
) -> None:
    model = calibrated(torchvision_model(architecture, len(classes)))
    version = export_model(
        model,
        export_request("weld-model", task, decoder, classes, background),
        tmp_path,
        source=f"{architecture}.pt",
        architecture=architecture,
    )

    manifest = version.manifest
    assert (manifest.name, manifest.version, version.path) == ("weld-model", 1, tmp_path / "weld-model" / "1")
    assert ModelManifest.read(version.path) == manifest == load_version(tmp_path, "weld-model").manifest
    assert manifest.input.dtype == "uint8" and manifest.input.normalization_in_graph and manifest.input.dynamic_batch
    assert manifest.output.names == ["logits"]
    if architecture != "efficientnet_b0":
        # Not a kind whose class activation maps the export knows (MobileNetV3's head is Linear, Hardswish,
        # Linear: no weighted sum of the features; a segmenter): the graph gives its outputs alone.
        assert manifest.activation_map is None and sorted(p.name for p in version.path.iterdir()) == [
            "manifest.json",
            "model.onnx",
        ]
    parity = manifest.provenance.parity
    assert parity.batch_sizes == [1, 3] and parity.samples == 4
    assert parity.max_abs_diff <= parity.tolerance == pytest.approx(1e-3)
    assert manifest.provenance.exporter == "dynamo" and manifest.provenance.opset >= 18
    assert manifest.provenance.torch_version == torch.__version__

    # The graph takes raw pixels at any batch size and matches what training-time code computes.
    images = random_images(3, channels=3, seed=7)
    logits, *_ = run_onnx(version.onnx_path, images)
    with torch.no_grad():
        expected = model(normalised(images, MEAN, STD))
    expected = expected["out"] if isinstance(expected, dict) else expected
    assert logits.shape == (3, len(classes), *(() if task == "classification" else (SIZE, SIZE)))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-3)


# torchvision's classifiers whose head is average pooling and one linear layer, with that layer.
ACTIVATION_HEADS = {
    "resnet18": lambda model: model.fc,
    "efficientnet_b0": lambda model: model.classifier[-1],
    "mobilenet_v2": lambda model: model.classifier[-1],
    "regnet_y_400mf": lambda model: model.fc,
    "densenet121": lambda model: model.classifier,
    "shufflenet_v2_x0_5": lambda model: model.fc,
}


@pytest.mark.parametrize("architecture", sorted(ACTIVATION_HEADS))
def test_torchvision_classifiers_with_a_linear_head_export_their_class_activation_maps(tmp_path: Path, architecture):
    model = calibrated(torchvision_model(architecture, len(WELD_CLASSES)))
    version = export_model(
        model, export_request("cam", "classification", "softmax", WELD_CLASSES, "no_defect"), tmp_path, source="x.pt"
    )
    cam = version.manifest.activation_map
    assert cam is not None and cam.features == "features" and cam.scale > 0
    linear = ACTIVATION_HEADS[architecture](model)
    weights = np.load(version.path / cam.weights)
    np.testing.assert_array_equal(weights, linear.weight.detach().numpy())
    logits, features = run_onnx(version.onnx_path, random_images(3, channels=3, seed=5))
    # What makes it a class activation map: each class's map, averaged over the grid, plus its bias, is
    # exactly its logit (a head that were not one linear layer after average pooling would break this).
    maps = np.einsum("nkhw,ck->nchw", features, weights)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)) + linear.bias.detach().numpy(), logits, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("architecture", ["fasterrcnn_mobilenet_v3_large_320_fpn", "fcos_resnet50_fpn"])
def test_torchvision_detector_exports_one_image_with_nms_inside_and_input_pixel_boxes(
    tmp_path: Path, architecture: str
) -> None:
    detector = torchvision_detector(architecture)
    height, width = 64, 96
    detection = export_request(
        "weld-detector",
        "detection",
        "boxes_scores_labels",
        DETECTOR_CLASSES,
        "background",
        channels=1,
        height=height,
        width=width,
        nms_iou=0.45,
        max_detections=20,
    )
    version = export_model(detector, detection, tmp_path, source="detector.pt")

    manifest = version.manifest
    assert manifest.provenance.exporter == "torchscript"
    assert manifest.output.names == ["boxes", "scores", "labels"]
    assert not manifest.input.dynamic_batch and manifest.nms_iou == 0.45
    parity = manifest.provenance.parity
    assert parity.batch_sizes == [1] and parity.samples == 3 and parity.max_abs_diff <= parity.tolerance
    assert parity.details["scores_max_abs_diff"] <= parity.details["scores_bound"] == pytest.approx(1e-3)

    image = random_images(1, channels=1, height=height, width=width, seed=3)
    boxes, scores, labels = run_onnx(version.onnx_path, image)
    assert 0 < len(scores) <= 20 and scores.min() >= IN_GRAPH_SCORE_THRESHOLD
    # Label 0 is the background: Faster R-CNN never outputs it, RetinaNet/FCOS only when untrained.
    assert labels.dtype == np.int64 and set(labels) <= set(range(len(DETECTOR_CLASSES)))
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= width and boxes[:, [1, 3]].max() <= height
    # The detector itself, fed the same pixels as PyTorch code would, finds the same boxes.
    with torch.no_grad():
        (expected,) = detector([torch.from_numpy(image[0]).float().div(255).expand(3, -1, -1)])
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_allclose(boxes[order][:5], expected["boxes"][:5].numpy(), atol=1e-2)


def test_yolo_head_exports_with_dynamic_batch(tmp_path: Path) -> None:
    head = calibrated(TinyYoloHead(channels=1, num_classes=3), channels=1)
    detection = export_request("weld-yolo", "detection", "yolo", DEFECTS, None, channels=1)
    version = export_model(head, detection, tmp_path, source="yolo.pt")

    assert version.manifest.output.names == ["predictions"] and version.manifest.input.dynamic_batch
    assert version.manifest.nms_iou == 0.5  # the default for detectors
    assert version.manifest.thresholds == {"porosity": 0.5, "crack": 0.5, "undercut": 0.5}
    parity = version.manifest.provenance.parity
    # Boxes (pixels) and scores (0..1) are bounded on their own scales.
    assert set(parity.details) == {"boxes_max_abs_diff", "boxes_bound", "scores_max_abs_diff", "scores_bound"}
    assert parity.details["scores_bound"] == pytest.approx(1e-3)
    assert parity.details["boxes_bound"] > parity.details["scores_bound"]
    (predictions,) = run_onnx(version.onnx_path, random_images(3, channels=1))
    assert predictions.shape == (3, 4 + 3, (SIZE // 8) ** 2)


def test_parity_inputs_replace_the_random_images(tmp_path: Path) -> None:
    head = calibrated(TinyYoloHead(channels=1, num_classes=3), channels=1)
    images = torch.from_numpy(random_images(6, channels=1, seed=11))
    version = export_model(
        head,
        export_request("weld-yolo", "detection", "yolo", DEFECTS, None, channels=1),
        tmp_path,
        source="yolo.pt",
        parity_inputs=images,
    )
    assert version.manifest.provenance.parity.samples == 6
    assert version.manifest.provenance.parity.batch_sizes == [1, 2, 3]  # batches of 1, 3, then the 2 left


def test_fp16_export_halves_the_weights_keeps_uint8_input_and_float32_output(tmp_path: Path) -> None:
    model = calibrated(torchvision_model("resnet18", len(WELD_CLASSES)))
    fp32 = export_model(
        model, export_request("r18", "classification", "softmax", WELD_CLASSES, "no_defect"), tmp_path, source="r18.pt"
    )
    fp16 = export_model(
        model,
        export_request("r18", "classification", "softmax", WELD_CLASSES, "no_defect", fp16=True),
        tmp_path,
        source="r18.pt",
    )

    assert (fp32.manifest.version, fp16.manifest.version) == (1, 2)
    assert fp16.manifest.provenance.fp16 and not fp32.manifest.provenance.fp16
    parity = fp16.manifest.provenance.parity
    # Each part within 2e-2 of its own magnitude (at least 1): the features run larger than the logits.
    assert parity.max_abs_diff <= parity.tolerance
    assert parity.details["logits_bound"] == pytest.approx(2e-2)
    graph = onnx.load(fp16.onnx_path).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [w for w in graph.initializer if w.dims and np.prod(w.dims) > 1000]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert fp16.onnx_path.stat().st_size < 0.55 * fp32.onnx_path.stat().st_size


def test_model_whose_output_changes_between_runs_fails_parity_and_writes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    failure = r"^parity check failed: logits differ by up to [0-9.]+ between onnxruntime and PyTorch \(bound [0-9.]+\)$"
    with pytest.raises(ExportError, match=failure):
        export_model(
            NoisyClassifier(3, 4),
            export_request("noisy", "classification", "softmax", WELD_CLASSES, "no_defect"),
            store,
            source="noisy.pt",
        )
    assert_nothing_written(store)


def test_class_count_that_differs_from_the_output_width_is_refused(tmp_path: Path) -> None:
    model = FixedSizeClassifier(3, num_classes=5)
    with pytest.raises(ExportError, match=r"gives \[1, 5\] for 1 image\(s\); the softmax decoder with 4 classes"):
        export_model(
            model,
            export_request("weld", "classification", "softmax", WELD_CLASSES, "no_defect"),
            tmp_path,
            source="m.pt",
        )
    assert_nothing_written(tmp_path)


def test_input_size_the_model_cannot_run_is_refused(tmp_path: Path) -> None:
    model = FixedSizeClassifier(3, num_classes=4)
    with pytest.raises(ExportError, match=r"^the model fails on a \[1, 3, 32, 32\] input: RuntimeError"):
        export_model(
            model,
            export_request("weld", "classification", "softmax", WELD_CLASSES, "no_defect", height=32, width=32),
            tmp_path,
            source="m.pt",
        )
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Weld Classifier"}, r"^bad model name 'Weld Classifier': use 1-64 lowercase"),
        ({"height": 4}, r"^height: Input should be greater than or equal to 8$"),
        ({"decoder": "yolo"}, r"^decoder yolo does not fit task classification \(use sigmoid, softmax\)$"),
        ({"task": "tracking"}, r"^unknown task 'tracking': use one of classification, detection, segmentation$"),
        (
            {"thresholds": {"spatter": 0.2}},
            r"^thresholds names unknown defect classes \['spatter'\]; the model's are \['porosity', 'crack', 'undercut'\]$",
        ),
        ({"thresholds": {"crack": 1.5}}, r"^thresholds must lie between 0 and 1, got \{'crack': 1.5\}$"),
        ({"background_class": "slag"}, r"^background_class 'slag' is not one of the classes$"),
        ({"mean": (0.5, 0.5)}, r"^mean and std need 3 value\(s\), one per channel$"),
        ({"pad_to_stride": 32}, r"^pad_to_stride needs a graph with dynamic image axes; an export from PyTorch fixes"),
    ],
)
def test_bad_request_is_refused_in_one_line_before_any_export(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    fields = dict(
        name="weld",
        task="classification",
        classes=WELD_CLASSES,
        background_class="no_defect",
        channels=3,
        height=SIZE,
        width=SIZE,
        resize="stretch",
        mean=(MEAN,) * 3,
        std=(STD,) * 3,
        decoder="softmax",
    )
    with pytest.raises(ExportError, match=message) as refusal:
        export_model(FixedSizeClassifier(3, 4), ExportRequest(**{**fields, **changes}), tmp_path, source="m.pt")
    assert "\n" not in str(refusal.value)
    assert_nothing_written(tmp_path)


def test_torchvision_detector_needs_the_background_first_and_refuses_fp16(tmp_path: Path) -> None:
    detector = torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn")
    no_background = export_request("det", "detection", "boxes_scores_labels", DEFECTS, None)
    with pytest.raises(ExportError, match="reserve label 0 for the background"):
        export_model(detector, no_background, tmp_path, source="d.pt")
    half = export_request("det", "detection", "boxes_scores_labels", DETECTOR_CLASSES, "background", fp16=True)
    with pytest.raises(ExportError, match="fp16 is not available for torchvision detectors"):
        export_model(detector, half, tmp_path, source="d.pt")
    assert_nothing_written(tmp_path)


def test_boxes_scores_labels_decoder_needs_a_torchvision_detector(tmp_path: Path) -> None:
    head = TinyYoloHead(channels=3, num_classes=3)
    detection = export_request("det", "detection", "boxes_scores_labels", DETECTOR_CLASSES, "background")
    with pytest.raises(ExportError, match="needs a torchvision detector"):
        export_model(head, detection, tmp_path, source="d.pt")


def test_parity_inputs_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"^parity inputs must be uint8 \[N, 3, 64, 64\], got torch.float32"):
        export_model(
            FixedSizeClassifier(3, 4),
            export_request("weld", "classification", "softmax", WELD_CLASSES, "no_defect"),
            tmp_path,
            source="m.pt",
            parity_inputs=torch.zeros(2, 3, SIZE, SIZE),
        )
