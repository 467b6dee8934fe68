"""PyTorch model -> verified ONNX version in the model store.

The exported graph takes raw uint8 pixels, `images` [N, C, H, W], and normalises them itself, so
the service only decodes, resizes and batches. Before anything is written, onnxruntime and PyTorch
run the same images through the graph and the model, and the export is refused if they disagree.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from pydantic import ValidationError
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from service.manifest import (
    MODEL_NAME_PATTERN,
    ActivationMap,
    InputSpec,
    ModelManifest,
    OutputDecoder,
    OutputSpec,
    Provenance,
    Quality,
    ResizeFilter,
    ResizeMode,
    Task,
)
from service.model_store import ModelVersion
from service.thresholds.rules import check_thresholds

from .activation import FEATURES_OUTPUT, WEIGHTS_FILE, ActivationParts, activation_parts, class_activations
from .errors import ExportError, reason, validation_message
from .outputs import OUTPUT_NAMES, check_outputs
from .parity import ParityCheck
from .store import write_version

INPUT_NAME = "images"
DEFAULT_THRESHOLD = 0.5
DEFAULT_NMS_IOU = 0.5
FP32_TOLERANCE = 1e-3
FP16_TOLERANCE = 2e-2
# Low, so that the service's per-class thresholds, not the graph, decide what counts as a defect.
IN_GRAPH_SCORE_THRESHOLD = 0.01
_PARITY_SEED = 0
_TORCHVISION_DETECTORS = (GeneralizedRCNN, RetinaNet, FCOS, SSD)


@dataclass
class ExportRequest:
    """What the graph is and how the service must feed and read it."""

    name: str
    task: Task
    classes: list[str]
    background_class: str | None
    channels: int
    height: int
    width: int
    resize: ResizeMode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    decoder: OutputDecoder
    scale: float = 1 / 255
    thresholds: dict[str, float] | None = None  # default 0.5 for every defect class
    nms_iou: float | None = None  # default 0.5 for detection
    max_detections: int = 100
    description: str = ""
    fp16: bool = False
    resize_filter: ResizeFilter = ResizeFilter.BILINEAR_ANTIALIAS  # how the trainer resized
    pad_to_stride: int | None = None  # letterbox only to a multiple of this (graphs with dynamic image axes)
    # The class activation shown at full intensity in heat maps; None: the largest over the parity images.
    heatmap_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(MODEL_NAME_PATTERN, self.name):
            raise ExportError(
                f"bad model name {self.name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        for attribute, kind in (
            ("task", Task),
            ("decoder", OutputDecoder),
            ("resize", ResizeMode),
            ("resize_filter", ResizeFilter),
        ):
            value = getattr(self, attribute)
            if value not in set(kind):
                raise ExportError(f"unknown {attribute} {value!r}: use one of {', '.join(kind)}")
            setattr(self, attribute, kind(value))


def build_manifest(
    request: ExportRequest,
    *,
    input_name: str,
    input_dtype: Literal["uint8", "float32", "float16"],
    dynamic_batch: bool,
    output_names: list[str],
    provenance: Provenance,
    quality: Quality | None,
) -> ModelManifest:
    """The manifest for `request`, validated; version 1 stands in until the store assigns one."""
    defects = [c for c in request.classes if c != request.background_class]
    given = request.thresholds or {}
    try:
        check_thresholds(given, defects)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    nms_iou = request.nms_iou
    if nms_iou is None and request.task is Task.DETECTION:
        nms_iou = DEFAULT_NMS_IOU
    try:
        return ModelManifest(
            name=request.name,
            version=1,
            task=request.task,
            description=request.description,
            classes=request.classes,
            background_class=request.background_class,
            input=InputSpec(
                name=input_name,
                channels=request.channels,
                height=request.height,
                width=request.width,
                resize=request.resize,
                resize_filter=request.resize_filter,
                dtype=input_dtype,
                scale=request.scale,
                mean=request.mean,
                std=request.std,
                normalization_in_graph=input_dtype == "uint8",
                dynamic_batch=dynamic_batch,
                pad_to_stride=request.pad_to_stride,
            ),
            output=OutputSpec(decoder=request.decoder, names=output_names),
            thresholds={c: given.get(c, DEFAULT_THRESHOLD) for c in defects},
            nms_iou=nms_iou,
            max_detections=request.max_detections,
            provenance=provenance,
            quality=quality,
        )
    except ValidationError as exc:
        raise ExportError(validation_message(exc)) from exc


def export_model(
    model: nn.Module,
    request: ExportRequest,
    store: Path,
    *,
    source: str,
    source_sha256: str | None = None,
    architecture: str | None = None,
    quality: Quality | None = None,
    parity_inputs: torch.Tensor | None = None,
) -> ModelVersion:
    """Export `model` to ONNX, check it against PyTorch, and write it as the next version of `request.name`.

    `model` takes a normalised float32 NCHW tensor and returns the decoder's raw outputs (for
    boxes_scores_labels: a torchvision detector). It is put in eval mode; a torchvision detector is
    also configured in place for the input size and the request's NMS and detection limits.
    `parity_inputs`, uint8 [N, C, H, W], replace the random images the check runs on.

    A classifier of a kind `export.activation` knows also gives its last convolutional features as a
    second graph output, and its class weights go beside the graph, for class activation maps.
    """
    if request.pad_to_stride is not None:
        raise ExportError("pad_to_stride needs a graph with dynamic image axes; an export from PyTorch fixes them")
    detector = request.decoder is OutputDecoder.BOXES_SCORES_LABELS
    exporter: Literal["dynamo", "torchscript"] = "torchscript" if detector else "dynamo"
    names = OUTPUT_NAMES[request.decoder]
    provenance = Provenance(
        exporter=exporter,
        source=source,
        source_sha256=source_sha256,
        architecture=architecture,
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        onnx_version=onnx.__version__,
        fp16=request.fp16,
        created_at=datetime.now(UTC),
    )
    manifest = build_manifest(
        request,
        input_name=INPUT_NAME,
        input_dtype="uint8",
        dynamic_batch=not detector,
        output_names=names,
        provenance=provenance,
        quality=quality,
    )
    model.eval()
    wrapped = _wrap_detector(model, request, manifest) if detector else _PixelInput(model, request).eval()
    batches = _parity_batches(request, parity_inputs, dynamic_batch=not detector)
    expected = [_run_torch(wrapped, batch) for batch in batches]
    for batch, outputs in zip(batches, expected):
        check_outputs(request.decoder, request.classes, len(batch), outputs)
    split = _activation_input(model, request, batches, expected) if request.task is Task.CLASSIFICATION else None
    activation = None
    if split is not None:
        activation, expected = split
        wrapped, names = activation, [*names, FEATURES_OUTPUT]
    elif request.heatmap_scale is not None:
        raise ExportError(
            "a heat map scale is for classifiers with class activation maps (the project's, torchvision's with "
            "average pooling and one linear layer); this model gets none: the service gives it occlusion maps, "
            "on a scale of their own"
        )

    if detector:
        graph = _export_torchscript(wrapped, batches[0], names)
    else:
        # An example batch of 2: torch.export would specialise a batch of 1 into the graph.
        graph = _export_dynamo(wrapped, batches[0][:1].repeat(2, 1, 1, 1), names)
    if request.fp16:
        graph = _to_fp16(graph)
    onnx_model = graph.SerializeToString()

    check = ParityCheck(FP16_TOLERANCE if request.fp16 else FP32_TOLERANCE)
    session = onnxruntime_session(onnx_model)
    for batch, reference in zip(batches, expected):
        actual = session.run(None, {INPUT_NAME: batch.numpy()})
        if detector:
            check.add_detections(tuple(reference), tuple(actual))
        elif request.decoder is OutputDecoder.YOLO:
            # Box pixels run into the hundreds, scores lie in 0..1: bound each on its own scale.
            check.add("boxes", reference[0][:, :4], actual[0][:, :4])
            check.add("scores", reference[0][:, 4:], actual[0][:, 4:])
        else:
            check.add(names[0], reference[0], actual[0])
        if activation is not None:
            check.add(FEATURES_OUTPUT, reference[1], actual[1])
    failure = check.failure()
    if failure:
        raise ExportError(failure)

    parity = check.result(samples=sum(len(b) for b in batches), batch_sizes=sorted({len(b) for b in batches}))
    opset = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    update: dict[str, object] = {"provenance": provenance.model_copy(update={"parity": parity, "opset": opset})}
    files = {}
    if activation is not None:
        scale = request.heatmap_scale or _activation_scale(activation, request, manifest, expected)
        update["activation_map"] = ActivationMap(features=FEATURES_OUTPUT, weights=WEIGHTS_FILE, scale=scale)
        files[WEIGHTS_FILE] = _npy(activation.parts.weights.numpy().astype(np.float32))
    return write_version(store, manifest.model_copy(update=update), onnx_model, files)


class _ActivationInput(nn.Module):
    """uint8 pixels -> normalised -> (logits, last convolutional features): a classifier split where
    its class activation maps read it (`export.activation`)."""

    def __init__(self, parts: ActivationParts, pixels: _PixelInput) -> None:
        super().__init__()
        self.parts = parts
        self.pixels = pixels  # holds the model (its weights) and the normalisation

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.parts.features(self.pixels.normalise(images))
        return self.parts.classify(features), features


def _activation_input(
    model: nn.Module, request: ExportRequest, batches: list[torch.Tensor], expected: list[list[np.ndarray]]
) -> tuple[_ActivationInput, list[list[np.ndarray]]] | None:
    """The classifier split at its features, with its outputs (logits, features) on the parity batches,
    when it is of a kind `export.activation` knows and the split gives exactly the model's own logits on
    them; else None (exported without maps)."""
    parts = activation_parts(model)
    if parts is None:
        return None
    split = _ActivationInput(parts, _PixelInput(model, request)).eval()
    outputs = [_run_torch(split, batch) for batch in batches]
    for (logits, features), own in zip(outputs, expected, strict=True):
        if features.ndim != 4 or not np.allclose(logits, own[0], rtol=1e-5, atol=1e-5):
            return None
    return split, outputs


def _activation_scale(
    activation: _ActivationInput, request: ExportRequest, manifest: ModelManifest, outputs: list[list[np.ndarray]]
) -> float:
    """The largest activation of each parity image's most likely defect class, over the images, to two
    significant digits (at least 1e-3): the heat maps' full intensity when the request sets none."""
    defects = [request.classes.index(name) for name in manifest.defect_classes]
    largest = 0.0
    for logits, features in outputs:
        maps = class_activations(features, activation.parts.weights.numpy())
        for image, row in enumerate(logits):
            top = max(defects, key=lambda index: row[index])
            largest = max(largest, float(maps[image, top].max()))
    return float(f"{max(largest, 1e-3):.2g}")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class _PixelInput(nn.Module):
    """uint8 pixels -> (pixels * scale - mean) / std -> the model; torchvision segmenters' dict gives 'out'."""

    def __init__(self, model: nn.Module, request: ExportRequest) -> None:
        super().__init__()
        self.model = model
        self.scale = request.scale
        self.register_buffer("mean", torch.tensor(request.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(request.std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() * self.scale - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.model(self.normalise(images))
        return output["out"] if isinstance(output, dict) else output


class _DetectorPixelInput(nn.Module):
    """uint8 [1, C, H, W] -> one scaled image for a torchvision detector -> boxes, scores, labels.

    The detector normalises with mean/std itself (its transform), and needs three channels.
    """

    def __init__(self, model: nn.Module, scale: float, gray: bool) -> None:
        super().__init__()
        self.model = model
        self.scale = scale
        self.gray = gray

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = images[0].float() * self.scale
        if self.gray:
            image = image.expand(3, -1, -1)
        detections = self.model([image])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


def _wrap_detector(model: nn.Module, request: ExportRequest, manifest: ModelManifest) -> nn.Module:
    detector = next((m for m in model.modules() if isinstance(m, _TORCHVISION_DETECTORS)), None)
    if detector is None:
        raise ExportError(
            "the boxes_scores_labels decoder needs a torchvision detector (Faster R-CNN, RetinaNet, FCOS, SSD); "
            "export other detectors with a yolo-style [N, 4 + C, A] output"
        )
    if request.background_class != request.classes[0]:
        raise ExportError(
            "torchvision detectors reserve label 0 for the background: list it first in the classes "
            "and name it as the background class"
        )
    if request.fp16:
        raise ExportError(
            "fp16 is not available for torchvision detectors: their graph (NMS inside) does not convert cleanly"
        )
    transform = detector.transform
    # Resize to exactly the input size, i.e. not at all: the service already resized the frame.
    transform.min_size = (min(request.height, request.width),)
    transform.max_size = max(request.height, request.width)
    if transform.fixed_size is not None:  # SSD resizes to a fixed (width, height)
        transform.fixed_size = (request.width, request.height)
    channel_repeat = 3 // request.channels
    transform.image_mean = list(request.mean) * channel_repeat
    transform.image_std = list(request.std) * channel_repeat
    heads = detector.roi_heads if isinstance(detector, GeneralizedRCNN) else detector
    heads.score_thresh = IN_GRAPH_SCORE_THRESHOLD
    heads.nms_thresh = manifest.nms_iou
    heads.detections_per_img = request.max_detections
    return _DetectorPixelInput(model, request.scale, gray=request.channels == 1).eval()


def _parity_batches(
    request: ExportRequest, parity_inputs: torch.Tensor | None, dynamic_batch: bool
) -> list[torch.Tensor]:
    """Images split into the batches both runtimes see: 1, then 3 at a time when the batch is dynamic."""
    shape = (request.channels, request.height, request.width)
    if parity_inputs is None:
        rng = np.random.default_rng(_PARITY_SEED)
        images = torch.from_numpy(rng.integers(0, 256, (4 if dynamic_batch else 3, *shape), dtype=np.uint8))
    elif parity_inputs.dtype != torch.uint8 or tuple(parity_inputs.shape[1:]) != shape or len(parity_inputs) == 0:
        raise ExportError(
            f"parity inputs must be uint8 [N, {', '.join(map(str, shape))}], got "
            f"{parity_inputs.dtype} {list(parity_inputs.shape)}"
        )
    else:
        images = parity_inputs.contiguous()
    if not dynamic_batch:
        return list(images.split(1))
    return [images[:1], *images[1:].split(3)] if len(images) > 1 else [images]


def _run_torch(wrapped: nn.Module, batch: torch.Tensor) -> list[np.ndarray]:
    try:
        with torch.no_grad():
            outputs = wrapped(batch)
    except Exception as exc:
        raise ExportError(f"the model fails on a {list(batch.shape)} input: {reason(exc)}") from exc
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if not isinstance(outputs, tuple) or not all(isinstance(output, torch.Tensor) for output in outputs):
        raise ExportError(f"the model returns {type(outputs).__name__}, not the tensors its decoder reads")
    return [output.numpy() for output in outputs]


def _export_dynamo(wrapped: nn.Module, example: torch.Tensor, output_names: list[str]) -> onnx.ModelProto:
    try:
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}},
            verbose=False,
        )
    except Exception as exc:
        raise ExportError(f"dynamo export failed: {reason(exc)}") from exc
    return program.model_proto


def _export_torchscript(wrapped: nn.Module, example: torch.Tensor, output_names: list[str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    try:
        # Tracing torchvision detectors prints dozens of expected warnings (and this exporter
        # is deprecated, but the only one that handles them): keep the console readable.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_axes={name: {0: "detections"} for name in output_names},
            )
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {reason(exc)}") from exc
    return onnx.load_from_string(buffer.getvalue())


def _to_fp16(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Float16 weights and arithmetic; the uint8 input and the float32 outputs stay as they are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(graph, keep_io_types=True)


def onnxruntime_session(onnx_model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # The level the service runs at, so that parity covers its graph rewrites too.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the exported graph: {reason(exc)}") from exc
