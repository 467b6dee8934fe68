"""The demo models shipped in model_store/: loadable, self-describing, and actually trained."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from export.synthetic import CLASSES, DEFECT_CLASSES, SEGMENTATION_CLASSES, generate_weld
from service.manifest import ModelManifest, Task
from service.model_store import ModelVersion, load_version
from service.pipeline.boxes import box_iou
from service.pipeline.geometry import Geometry

MODEL_STORE = Path(__file__).resolve().parents[2] / "model_store"
# Streams no demo model was trained or measured on (training uses seed 0, the test set 10000).
FRESH_SEED = 424_242
AIMS = {"weld-classifier": ("accuracy", 0.9), "weld-detector": ("map50", 0.6), "weld-segmenter": ("mean_iou", 0.5)}
TASKS = {"weld-classifier": Task.CLASSIFICATION, "weld-detector": Task.DETECTION, "weld-segmenter": Task.SEGMENTATION}


def _version(name: str) -> ModelVersion:
    return load_version(MODEL_STORE, name)


def _session(version: ModelVersion) -> ort.InferenceSession:
    return ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"])


def _model_input(image: np.ndarray, manifest: ModelManifest) -> tuple[np.ndarray, Geometry]:
    """A frame resized per the manifest with Pillow, as a [1, 1, H, W] uint8 batch."""
    spec = manifest.input
    height, width = image.shape
    if spec.resize == "letterbox":
        geometry = Geometry.letterbox((width, height), (spec.width, spec.height))
    else:
        geometry = Geometry.stretch((width, height), (spec.width, spec.height))
    x0, y0, x1, y1 = geometry.content_box
    batch = np.full((1, 1, spec.height, spec.width), spec.letterbox_fill, dtype=np.uint8)
    batch[0, 0, y0:y1, x0:x1] = np.asarray(Image.fromarray(image).resize((x1 - x0, y1 - y0), Image.BILINEAR))
    return batch, geometry


@pytest.mark.parametrize("name", sorted(AIMS))
def test_demo_model_manifest_validates_and_names_itself(name: str) -> None:
    version = _version(name)
    manifest = ModelManifest.read(version.path)
    assert (manifest.name, manifest.version, manifest.task) == (name, 1, TASKS[name])
    assert version.path == MODEL_STORE / name / "1"
    assert manifest.provenance.parity is not None
    assert manifest.provenance.parity.max_abs_diff <= manifest.provenance.parity.tolerance


@pytest.mark.parametrize("name", sorted(AIMS))
def test_demo_model_graph_input_and_outputs_match_its_manifest(name: str) -> None:
    version = _version(name)
    manifest = version.manifest
    session = _session(version)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == manifest.input.name
    assert graph_input.type == "tensor(uint8)" and manifest.input.dtype == "uint8"
    assert graph_input.shape[1:] == [manifest.input.channels, manifest.input.height, manifest.input.width]
    assert isinstance(graph_input.shape[0], str)  # a dynamic batch axis
    # The classifier also gives its features, for class activation maps, with its weights beside it.
    extra = [manifest.activation_map.features] if name == "weld-classifier" else []
    assert [o.name for o in session.get_outputs()] == manifest.output.names + extra
    if extra:
        weights = np.load(version.path / manifest.activation_map.weights)
        features = session.get_outputs()[1].shape
        assert weights.shape == (len(manifest.classes), features[1]) and weights.dtype == np.float32
    assert version.onnx_path.stat().st_size < 3_000_000


@pytest.mark.parametrize("name", sorted(AIMS))
def test_demo_model_quality_is_recorded_and_reaches_its_aim(name: str) -> None:
    quality = _version(name).manifest.quality
    assert quality is not None and "seed" in quality.dataset
    metric, aim = AIMS[name]
    assert quality.metrics[metric] >= aim


def test_classifier_labels_a_fresh_crack_frame_as_crack() -> None:
    version = _version("weld-classifier")
    assert version.manifest.classes == list(CLASSES)
    sample = generate_weld(FRESH_SEED, 640, 480, label="crack")
    batch, _ = _model_input(sample.image, version.manifest)
    (logits,) = _session(version).run(["logits"], {"images": batch})
    assert version.manifest.classes[int(logits[0].argmax())] == "crack"


def test_classifier_labels_fresh_5mp_frames_of_every_class() -> None:
    version = _version("weld-classifier")
    session = _session(version)
    for offset, label in enumerate(CLASSES):
        sample = generate_weld(FRESH_SEED + offset, 2448, 2048, label=label)
        batch, _ = _model_input(sample.image, version.manifest)
        (logits,) = session.run(["logits"], {"images": batch})
        assert version.manifest.classes[int(logits[0].argmax())] == label


def test_detector_finds_each_pore_of_a_fresh_porosity_frame() -> None:
    version = _version("weld-detector")
    manifest = version.manifest
    assert manifest.classes == list(DEFECT_CLASSES) and manifest.background_class is None
    sample = generate_weld(FRESH_SEED, 640, 480, label="porosity")
    batch, geometry = _model_input(sample.image, manifest)
    (head,) = _session(version).run(None, {"images": batch})
    assert head.shape == (1, 4 + len(DEFECT_CLASSES), (manifest.input.height // 8) * (manifest.input.width // 8))
    scores = head[0, 4:]
    confident = scores.max(axis=0) >= manifest.thresholds["porosity"]
    assert (scores[:, confident].argmax(axis=0) == DEFECT_CLASSES.index("porosity")).all()
    centre, size = head[0, :2][:, confident].T, head[0, 2:4][:, confident].T
    boxes = geometry.boxes_to_original(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
    # Every pore is found by some confident cell (duplicates are the service's NMS to remove).
    assert (box_iou(sample.boxes, boxes).max(axis=1) >= 0.5).all()


def test_segmenter_marks_the_groove_of_a_fresh_undercut_frame() -> None:
    version = _version("weld-segmenter")
    manifest = version.manifest
    assert manifest.classes == list(SEGMENTATION_CLASSES)
    sample = generate_weld(FRESH_SEED, 640, 480, label="undercut")
    batch, geometry = _model_input(sample.image, manifest)
    (logits,) = _session(version).run(None, {"images": batch})
    assert logits.shape == (1, len(SEGMENTATION_CLASSES), manifest.input.height, manifest.input.width)
    predicted = geometry.mask_to_original(logits[0].argmax(axis=0).astype(np.uint8))
    undercut = SEGMENTATION_CLASSES.index("undercut")
    truth, marked = sample.mask == undercut, predicted == undercut
    assert (truth & marked).sum() / (truth | marked).sum() >= 0.5
    assert set(np.unique(predicted)) <= {0, undercut}
