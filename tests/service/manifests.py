"""Manifests for tests that need a model's contract but no graph."""

from collections.abc import Sequence
from datetime import UTC, datetime

from service.manifest import InputSpec, ModelManifest, OutputSpec, Provenance

WELD_CLASSES = ["no_defect", "porosity", "crack", "undercut"]
DEFECTS = ["porosity", "crack", "undercut"]


def _input(channels: int = 1, size: int = 64, resize: str = "stretch", dynamic_batch: bool = True) -> InputSpec:
    return InputSpec(
        name="images",
        channels=channels,
        height=size,
        width=size,
        resize=resize,
        dtype="uint8",
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        normalization_in_graph=True,
        dynamic_batch=dynamic_batch,
    )


def _provenance() -> Provenance:
    return Provenance(exporter="dynamo", source="tests", created_at=datetime(2026, 11, 1, tzinfo=UTC))


def classifier_manifest(decoder: str = "softmax", thresholds: dict[str, float] | None = None) -> ModelManifest:
    return ModelManifest(
        name="test-classifier",
        version=1,
        task="classification",
        classes=WELD_CLASSES,
        background_class="no_defect",
        input=_input(),
        output=OutputSpec(decoder=decoder, names=["logits"]),
        thresholds=thresholds or {"porosity": 0.5, "crack": 0.3, "undercut": 0.5},
        provenance=_provenance(),
    )


def detector_manifest(
    decoder: str = "yolo", classes: list[str] = DEFECTS, background: str | None = None, max_detections: int = 100
) -> ModelManifest:
    defects = [c for c in classes if c != background]
    names = ["detections"] if decoder == "yolo" else ["boxes", "scores", "labels"]
    return ModelManifest(
        name="test-detector",
        version=1,
        task="detection",
        classes=classes,
        background_class=background,
        input=_input(size=320, resize="letterbox", dynamic_batch=decoder == "yolo"),
        output=OutputSpec(decoder=decoder, names=names),
        thresholds={c: 0.5 for c in defects},
        nms_iou=0.5,
        max_detections=max_detections,
        provenance=_provenance(),
    )


def segmenter_manifest(thresholds: dict[str, float] | None = None) -> ModelManifest:
    return ModelManifest(
        name="test-segmenter",
        version=1,
        task="segmentation",
        classes=["background", *DEFECTS],
        background_class="background",
        input=_input(size=64),
        output=OutputSpec(decoder="segmentation_logits", names=["logits"]),
        thresholds=thresholds or {c: 0.5 for c in DEFECTS},
        provenance=_provenance(),
    )


def make_manifest(
    name: str = "weld-classifier",
    task: str = "classification",
    classes: Sequence[str] = WELD_CLASSES,
    version: int = 1,
    threshold: float = 0.5,
) -> ModelManifest:
    """Any task, name, version and classes; the first class is the background, every defect class at `threshold`."""
    decoder = {"classification": "softmax", "detection": "yolo", "segmentation": "segmentation_logits"}[task]
    return ModelManifest(
        name=name,
        version=version,
        task=task,
        classes=list(classes),
        background_class=classes[0],
        input=_input(),
        output=OutputSpec(decoder=decoder, names=["out"]),
        thresholds={c: threshold for c in classes[1:]},
        nms_iou=0.45 if task == "detection" else None,
        provenance=_provenance(),
    )
