"""The model package contract: what `export` writes and the service reads.

One `manifest.json` sits beside each `model.onnx` in
`model_store/<name>/<version>/`. Everything the service needs to turn image bytes
into an answer for that graph is here: the task, the classes, how to build the
input tensor, how to decode the outputs, the default thresholds, and where the
graph came from (with its PyTorch parity figures).
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.thresholds.rules import check_thresholds

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Task(StrEnum):
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"


class ResizeMode(StrEnum):
    STRETCH = "stretch"
    LETTERBOX = "letterbox"


class ResizeFilter(StrEnum):
    BILINEAR_ANTIALIAS = "bilinear_antialias"  # Pillow's bilinear (torchvision on PIL images)
    LINEAR = "linear"  # OpenCV's INTER_LINEAR: no antialiasing when shrinking (ultralytics)


class OutputDecoder(StrEnum):
    SOFTMAX = "softmax"  # classification logits [N, C]
    SIGMOID = "sigmoid"  # multi-label classification logits [N, C]
    BOXES_SCORES_LABELS = "boxes_scores_labels"  # torchvision-style, NMS in graph, one image
    YOLO = "yolo"  # raw head [N, 4 + C, A]: cx, cy, w, h in input pixels, then class scores
    SEGMENTATION_LOGITS = "segmentation_logits"  # [N, C, H, W]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str = Field(description="Name of the graph's image input.", examples=["images"])
    channels: Literal[1, 3] = Field(description="1 for grayscale, 3 for RGB.")
    height: int = Field(ge=8, le=8192, description="Model input height in pixels.")
    width: int = Field(ge=8, le=8192, description="Model input width in pixels.")
    resize: ResizeMode = Field(description="`stretch` to the input size, or `letterbox` (keep aspect, pad).")
    letterbox_fill: int = Field(default=114, ge=0, le=255, description="Pad value for letterbox.")
    resize_filter: ResizeFilter = Field(
        default=ResizeFilter.BILINEAR_ANTIALIAS,
        description="How frames are resized to the input, as the trainer did: `bilinear_antialias` (Pillow's, "
        "as torchvision pipelines on PIL images; JPEG frames may be reduced while decoding), or `linear` "
        "(OpenCV's INTER_LINEAR: no antialiasing when shrinking, frames decoded at full size; ultralytics).",
    )
    dtype: Literal["uint8", "float32", "float16"] = Field(
        description="Element type of the graph input. uint8 means the graph normalises itself."
    )
    layout: Literal["NCHW"] = "NCHW"
    scale: float = Field(default=1 / 255, description="Pixel values are multiplied by this first.")
    mean: tuple[float, ...] = Field(description="Per-channel mean, after scaling.")
    std: tuple[float, ...] = Field(description="Per-channel std, after scaling.")
    normalization_in_graph: bool = Field(
        description="True when scale/mean/std are applied inside the graph (input is raw pixels)."
    )
    dynamic_batch: bool = Field(description="True when the graph accepts any batch size.")
    pad_to_stride: int | None = Field(
        default=None,
        ge=1,
        description="For a graph whose image axes are dynamic: letterbox each frame into height x width, then pad "
        "it only up to the next multiple of this stride on each axis instead of to the full input (ultralytics' "
        "`LetterBox(auto=True)`, how `YOLO.predict` runs such a graph): a 320x200 frame at 256x256, stride 32, "
        "runs at 256x160. Null: every frame is padded to height x width.",
        examples=[32],
    )

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s), one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.dtype == "uint8" and not self.normalization_in_graph:
            raise ValueError("a uint8 input carries raw pixels: normalization_in_graph must be true")
        stride = self.pad_to_stride
        if stride is not None:
            if self.resize is not ResizeMode.LETTERBOX:
                raise ValueError("pad_to_stride pads a letterboxed frame: it needs resize 'letterbox'")
            if self.height % stride or self.width % stride:
                raise ValueError(f"input size {self.height}x{self.width} is not a multiple of pad_to_stride {stride}")
        return self


class OutputSpec(_Strict):
    decoder: OutputDecoder
    names: list[str] = Field(min_length=1, description="Graph output names, in the order the decoder reads them.")


class ActivationMap(_Strict):
    """What class activation maps need, recorded by the export for classifiers whose head is global
    pooling and one linear layer (`export.activation`): a class's map is its weights' sum of the features."""

    features: str = Field(description="Graph output with the last convolutional features, [N, K, h, w].")
    weights: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\.npy$",
        description="File beside the graph: float32 [C, K], each class's weight on each feature channel.",
    )
    scale: float = Field(
        gt=0,
        description="The class activation a heat map shows at full intensity (255); 0 at 0, linear between, "
        "clipped: one scale for every frame of the version.",
    )


class Parity(_Strict):
    max_abs_diff: float = Field(description="Largest |onnxruntime - PyTorch| over all compared values.")
    tolerance: float = Field(description="The bound the export was checked against.")
    samples: int = Field(ge=1, description="How many input images were compared.")
    batch_sizes: list[int] = Field(description="Batch sizes the graph was run at.")
    details: dict[str, float] = Field(default_factory=dict, description="Per-output or per-check figures.")


class Provenance(_Strict):
    exporter: Literal["dynamo", "torchscript", "import"]
    source: str = Field(description="What the graph was made from: checkpoint path, architecture or ONNX file.")
    source_sha256: str | None = None
    architecture: str | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    onnx_version: str | None = None
    opset: int | None = None
    fp16: bool = False
    created_at: datetime
    parity: Parity | None = Field(default=None, description="None only for imported graphs.")


class Quality(_Strict):
    dataset: str = Field(description="What the figures were measured on.")
    metrics: dict[str, float] = Field(description="E.g. accuracy, map50, mean_iou, per-class recall.")


class ModelManifest(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=MODEL_NAME_PATTERN, examples=["weld-classifier"])
    version: int = Field(ge=1)
    task: Task
    description: str = ""
    classes: list[str] = Field(min_length=1, description="Class names, in the graph's output order.")
    background_class: str | None = Field(
        default=None, description="The class that means 'no defect' (or background); never rejects."
    )
    input: InputSpec
    output: OutputSpec
    thresholds: dict[str, float] = Field(description="Default per-class score thresholds, 0 to 1.")
    nms_iou: float | None = Field(default=None, ge=0.0, le=1.0, description="Default NMS IoU (detectors).")
    max_detections: int = Field(default=100, ge=1, le=10000)
    provenance: Provenance
    quality: Quality | None = None
    activation_map: ActivationMap | None = Field(
        default=None, description="Classifiers only: what class activation maps need (heat maps); None: none."
    )

    @model_validator(mode="after")
    def _check(self) -> ModelManifest:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        if self.background_class is not None and self.background_class not in self.classes:
            raise ValueError(f"background_class {self.background_class!r} is not one of the classes")
        from service.tasks import HEADS  # the tasks' heads read manifests: imported once both exist

        head = HEADS[self.task]
        if self.output.decoder not in head.decoders:
            allowed = ", ".join(sorted(head.decoders))
            raise ValueError(f"decoder {self.output.decoder} does not fit task {self.task} (use {allowed})")
        check_thresholds(self.thresholds, self.defect_classes)
        missing = set(self.defect_classes) - set(self.thresholds)
        if missing:
            raise ValueError(f"thresholds missing for defect classes: {sorted(missing)}")
        from service.heatmaps import HeatmapMethod

        if self.activation_map is not None and HeatmapMethod.CAM not in head.heatmap_methods(self):
            raise ValueError(f"{self.task} models have no class activation maps")
        if head.carries_nms and self.nms_iou is None:
            raise ValueError(f"{self.task} models need a default nms_iou")
        return self

    @property
    def defect_classes(self) -> list[str]:
        """Classes that can reject a part: every class but the background one."""
        return [c for c in self.classes if c != self.background_class]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> str:
        # Left out when unset, so that a manifest without it is written byte for byte as before the field existed.
        unset: dict[str, Any] = {"input": {"pad_to_stride"}} if self.input.pad_to_stride is None else {}
        if self.activation_map is None:
            unset["activation_map"] = True
        return self.model_dump_json(indent=2, exclude=unset or None) + "\n"

    @classmethod
    def read(cls, version_dir: Path) -> ModelManifest:
        return cls.model_validate(json.loads((version_dir / MANIFEST_FILE).read_text()))
