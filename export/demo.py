"""The three demo weld models: synthetic data, CPU training, held-out evaluation, export.

`python -m export demo [--store model_store] [--seed 0]` trains a classifier, a detector and a
U-Net segmenter on generated weld frames, measures each on a held-out set generated from another
seed at the camera's frame size (640x480), and exports each as the next version of
`weld-classifier`, `weld-detector` and `weld-segmenter`, with the figures in the manifest's
`quality`. A few minutes on 2 CPU cores.

Frames go through the service's own preprocessing (`service.preprocess`), so the models are
trained on exactly the pixels they will be served.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss

from service.manifest import InputSpec, OutputDecoder, Quality, ResizeMode, Task
from service.model_store import ModelVersion
from service.pipeline.decode import DecodedImage
from service.pipeline.geometry import Geometry
from service.pipeline.preprocess import to_model_input
from service.thresholds.evaluation import (
    accuracy,
    average_precision_per_class,
    confusion_matrix,
    iou_per_class,
    precision_per_class,
    recall_per_class,
)

from . import synthetic
from .activation import activation_parts, class_activations
from .architectures import WeldDetector, build_unet, build_weld_classifier, build_weld_detector
from .exporting import ExportRequest, export_model

Log = Callable[[str], None]

# Training frames: small (cheap to draw) and of several aspect ratios; the test frames are the
# camera's 640x480, so the figures also say whether the models carry over to other frame sizes.
TRAIN_FRAME_SIZES = ((320, 240), (384, 288), (448, 336), (320, 256), (400, 320), (352, 352))
TEST_FRAME_SIZE = (640, 480)
TEST_SEED_OFFSET = 10_000
MEAN, STD = (0.45,), (0.25,)
LEARNING_RATE = 3e-3


def _input_spec(height: int, width: int, resize: ResizeMode) -> InputSpec:
    return InputSpec(
        name="images",
        channels=1,
        height=height,
        width=width,
        resize=resize,
        dtype="uint8",
        mean=MEAN,
        std=STD,
        normalization_in_graph=True,
        dynamic_batch=True,
    )


@dataclass(frozen=True)
class DemoModel:
    """One demo model as its manifest will describe it."""

    name: str
    task: Task
    classes: tuple[str, ...]
    background_class: str | None
    input: InputSpec
    decoder: OutputDecoder
    thresholds: dict[str, float]
    nms_iou: float | None
    description: str

    def export_request(self) -> ExportRequest:
        return ExportRequest(
            name=self.name,
            task=self.task,
            classes=list(self.classes),
            background_class=self.background_class,
            channels=self.input.channels,
            height=self.input.height,
            width=self.input.width,
            resize=self.input.resize,
            mean=self.input.mean,
            std=self.input.std,
            scale=self.input.scale,
            decoder=self.decoder,
            thresholds=self.thresholds,
            nms_iou=self.nms_iou,
            description=self.description,
        )


_DEMO_NOTE = "Demo model trained on synthetic weld images by `python -m export demo`; not for production use."
# A missed crack costs most: its default threshold is the lowest.
CLASSIFIER = DemoModel(
    name="weld-classifier",
    task=Task.CLASSIFICATION,
    classes=synthetic.CLASSES,
    background_class="no_defect",
    input=_input_spec(160, 160, ResizeMode.STRETCH),
    decoder=OutputDecoder.SOFTMAX,
    thresholds={"porosity": 0.5, "crack": 0.3, "undercut": 0.5},
    nms_iou=None,
    description=f"Weld image classifier (no_defect, porosity, crack, undercut). {_DEMO_NOTE}",
)
DETECTOR = DemoModel(
    name="weld-detector",
    task=Task.DETECTION,
    classes=synthetic.DEFECT_CLASSES,
    background_class=None,
    input=_input_spec(256, 256, ResizeMode.LETTERBOX),
    decoder=OutputDecoder.YOLO,
    thresholds={"porosity": 0.3, "crack": 0.25, "undercut": 0.3},
    nms_iou=0.5,
    description=f"Weld defect detector: one box per pore, crack or undercut groove. {_DEMO_NOTE}",
)
SEGMENTER = DemoModel(
    name="weld-segmenter",
    task=Task.SEGMENTATION,
    classes=synthetic.SEGMENTATION_CLASSES,
    background_class="background",
    input=_input_spec(256, 256, ResizeMode.STRETCH),
    decoder=OutputDecoder.SEGMENTATION_LOGITS,
    thresholds={"porosity": 0.5, "crack": 0.4, "undercut": 0.5},
    nms_iou=None,
    description=f"Weld defect segmenter (U-Net): per-pixel porosity, crack and undercut. {_DEMO_NOTE}",
)


@dataclass(frozen=True)
class TrainingPlan:
    """How much data and training each model gets; the defaults fit a few minutes on 2 cores."""

    train_images: int = 2400
    test_images: int = 300
    classifier_epochs: int = 4
    detector_epochs: int = 6
    segmenter_epochs: int = 8
    # The U-Net trains on crops, mostly around defects (16x cheaper than whole inputs, and the
    # defect pixels are no longer lost among the background), and runs on whole inputs.
    segmenter_crop: int = 64
    batch_size: int = 32


@dataclass
class WeldSet:
    """Generated frames, prepared at each demo model's input size, with their labels."""

    description: str
    frame_sizes: list[tuple[int, int]]  # (width, height) of each original frame
    labels: np.ndarray  # (n,) index into CLASSES
    classifier_inputs: np.ndarray  # (n, 1, h, w) uint8
    detector_inputs: np.ndarray  # (n, 1, h, w) uint8
    detector_boxes: list[np.ndarray]  # (k, 4) xyxy in detector input pixels
    detector_classes: list[np.ndarray]  # (k,) index into DEFECT_CLASSES
    segmenter_inputs: np.ndarray  # (n, 1, h, w) uint8
    segmenter_masks: np.ndarray  # (n, h, w) uint8 at the segmenter's input size
    frame_boxes: list[np.ndarray]  # (k, 4) xyxy in original pixels
    frame_masks: list[np.ndarray] | None  # original-size masks, kept for the test set only

    def __len__(self) -> int:
        return len(self.labels)


def generate_set(seed: int, count: int, frame_sizes: Sequence[tuple[int, int]], *, keep_masks: bool = False) -> WeldSet:
    """`count` frames drawn from one seeded stream, each at a size picked from `frame_sizes`."""
    rng = np.random.default_rng(seed)
    sizes, labels, frame_boxes, frame_masks = [], [], [], []
    classifier_inputs, detector_inputs, segmenter_inputs, segmenter_masks = [], [], [], []
    detector_boxes, detector_classes = [], []
    for _ in range(count):
        width, height = frame_sizes[int(rng.integers(len(frame_sizes)))]
        sample = synthetic.generate_weld(rng, width, height)
        sizes.append((width, height))
        labels.append(synthetic.CLASSES.index(sample.label))
        frame_boxes.append(sample.boxes)
        if keep_masks:
            frame_masks.append(sample.mask)

        pixels, _ = prepare_input(sample.image, CLASSIFIER.input)
        classifier_inputs.append(pixels)

        pixels, geometry = prepare_input(sample.image, DETECTOR.input)
        detector_inputs.append(pixels)
        detector_boxes.append(_boxes_to_input(sample.boxes, geometry))
        detector_classes.append(
            np.array([synthetic.DEFECT_CLASSES.index(c) for c in sample.box_labels], dtype=np.int64)
        )

        pixels, geometry = prepare_input(sample.image, SEGMENTER.input)
        segmenter_inputs.append(pixels)
        segmenter_masks.append(mask_to_input(sample.mask, geometry))

    size_text = "x".join(map(str, frame_sizes[0])) if len(frame_sizes) == 1 else "of mixed sizes"
    return WeldSet(
        description=f"synthetic welds, seed {seed}, {count} images {size_text}",
        frame_sizes=sizes,
        labels=np.array(labels, dtype=np.int64),
        classifier_inputs=np.stack(classifier_inputs),
        detector_inputs=np.stack(detector_inputs),
        detector_boxes=detector_boxes,
        detector_classes=detector_classes,
        segmenter_inputs=np.stack(segmenter_inputs),
        segmenter_masks=np.stack(segmenter_masks),
        frame_boxes=frame_boxes,
        frame_masks=frame_masks if keep_masks else None,
    )


def prepare_input(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """A grayscale frame -> (1, H, W) uint8 model input, exactly as the service prepares it."""
    height, width = image.shape
    decoded = DecodedImage(image=Image.fromarray(image), original_width=width, original_height=height, format="PNG")
    return to_model_input(decoded, spec)


def _boxes_to_input(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    scale = np.array([geometry.scale_x, geometry.scale_y] * 2, dtype=np.float32)
    offset = np.array([geometry.pad_x, geometry.pad_y] * 2, dtype=np.float32)
    return boxes * scale + offset


def mask_to_input(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Class map at input size: a pixel is a defect when the defect covers at least half of it."""
    x0, y0, x1, y1 = geometry.content_box
    coverage = Image.fromarray((mask > 0).astype(np.float32), mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR)
    target = np.zeros((geometry.input_height, geometry.input_width), dtype=np.uint8)
    target[y0:y1, x0:x1] = np.where(np.asarray(coverage) >= 0.5, mask.max(), 0)
    return target


def _normalise(pixels: np.ndarray | torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 pixels -> the normalised float tensor the models take (the graph does this when exported)."""
    images = torch.as_tensor(pixels).float() * spec.scale
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous(memory_format=torch.channels_last)


def _fit(
    model: nn.Module,
    name: str,
    num_samples: int,
    epochs: int,
    batch_size: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    log: Log,
) -> None:
    """AdamW with a one-cycle schedule over shuffled mini-batches; one progress line per epoch."""
    batches_per_epoch = max(1, num_samples // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * batches_per_epoch, pct_start=0.2
    )
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        permutation = torch.randperm(num_samples, generator=order)
        total = 0.0
        # Full batches only: BatchNorm statistics from a batch of one or two are noise.
        for index in permutation[: batches_per_epoch * batch_size].view(batches_per_epoch, -1):
            loss = batch_loss(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        log(
            f"{name}: epoch {epoch}/{epochs} loss {total / batches_per_epoch:.4f} ({time.perf_counter() - start:.0f} s)"
        )
    model.eval()


def _mirror(tensor: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (the last axis is x) the samples of a batch where `flip` is true."""
    return torch.where(flip.view(-1, *[1] * (tensor.dim() - 1)), tensor.flip(-1), tensor)


# --- classifier ---------------------------------------------------------------------------------

# Weighted cross entropy: a missed crack costs most, then porosity and undercut (see DESIGN.md).
_CLASS_WEIGHTS = torch.tensor([1.0, 1.5, 2.5, 1.5])


def train_classifier(data: WeldSet, plan: TrainingPlan, seed: int, log: Log) -> nn.Module:
    torch.manual_seed(seed)
    model = build_weld_classifier(1, len(CLASSIFIER.classes)).to(memory_format=torch.channels_last)
    images = torch.from_numpy(data.classifier_inputs)
    labels = torch.from_numpy(data.labels)
    flips = torch.Generator().manual_seed(seed)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(index), generator=flips) < 0.5
        logits = model(_normalise(_mirror(images[index], flip), CLASSIFIER.input))
        return F.cross_entropy(logits, labels[index], weight=_CLASS_WEIGHTS, label_smoothing=0.05)

    _fit(model, CLASSIFIER.name, len(data), plan.classifier_epochs, plan.batch_size, batch_loss, seed, log)
    return model


def evaluate_classifier(model: nn.Module, data: WeldSet) -> dict[str, float]:
    scores = _predict(model, data.classifier_inputs, CLASSIFIER.input).softmax(dim=1).numpy()
    confusion = confusion_matrix(data.labels, scores.argmax(axis=1), len(CLASSIFIER.classes))
    metrics = {"accuracy": accuracy(confusion)}
    metrics |= _per_class("recall", CLASSIFIER.classes, recall_per_class(confusion))
    metrics |= _per_class("precision", CLASSIFIER.classes, precision_per_class(confusion))
    # What the line sees with the default thresholds: defective parts caught, good parts diverted.
    thresholds = np.array([CLASSIFIER.thresholds.get(c, np.inf) for c in CLASSIFIER.classes])
    rejected = (scores >= thresholds).any(axis=1)
    defective = data.labels != CLASSIFIER.classes.index(CLASSIFIER.background_class)
    if defective.any():
        metrics["reject_rate_defective"] = float(rejected[defective].mean())
    if (~defective).any():
        metrics["reject_rate_good"] = float(rejected[~defective].mean())
    return metrics


def heatmap_scale(features: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> float:
    """The class activation the demo classifier's heat maps show at full intensity: over the test frames
    with a defect, the 95th percentile of their defect class's largest activation, to two significant digits.

    `features` [N, K, h, w] are the frames' last convolutional features, `weights` [C, K] the classes'.
    """
    defective = labels != CLASSIFIER.classes.index(CLASSIFIER.background_class)
    maps = class_activations(features[defective], weights)
    peaks = maps[np.arange(len(maps)), labels[defective]].max(axis=(1, 2))
    return float(f"{max(float(np.percentile(peaks, 95)), 1e-3):.2g}")


def classifier_heatmap_scale(model: nn.Module, data: WeldSet, batch_size: int = 32) -> float:
    """`heatmap_scale` of the trained demo classifier on `data`."""
    parts = activation_parts(model)
    assert parts is not None, "the demo classifier has class activation maps"
    model.eval()
    inputs = data.classifier_inputs
    with torch.no_grad():
        features = [
            parts.features(_normalise(inputs[start : start + batch_size], CLASSIFIER.input))
            for start in range(0, len(inputs), batch_size)
        ]
    return heatmap_scale(torch.cat(features).numpy(), parts.weights.numpy(), data.labels)


# --- detector -----------------------------------------------------------------------------------


@dataclass
class DetectorTargets:
    """Per grid cell: class heatmaps, the box a cell regresses, and how much that cell's box counts."""

    heatmaps: torch.Tensor  # [N, C, A] in 0..1, exactly 1 at each object's centre cell
    boxes: torch.Tensor  # [N, 4, A] xyxy in input pixels
    box_weights: torch.Tensor  # [N, A], 0 where a cell regresses nothing


def detector_targets(
    boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], num_classes: int, input_size: tuple[int, int]
) -> DetectorTargets:
    """CenterNet-style targets: a Gaussian peak per object (shaped like its box) on its class's heatmap.

    Every cell under the peak (target >= 0.3) regresses the object's box, weighted by the target,
    so long cracks train several cells; where objects compete for a cell, the smaller one wins.
    """
    height, width = input_size
    stride = WeldDetector.stride
    rows, cols = height // stride, width // stride
    cell_y = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) * stride
    cell_x = (np.arange(cols, dtype=np.float32)[None, :] + 0.5) * stride
    heatmaps = np.zeros((len(boxes), num_classes, rows, cols), dtype=np.float32)
    box_targets = np.zeros((len(boxes), 4, rows, cols), dtype=np.float32)
    weights = np.zeros((len(boxes), rows, cols), dtype=np.float32)
    for image, (image_boxes, image_classes) in enumerate(zip(boxes, classes)):
        areas = np.prod(image_boxes[:, 2:] - image_boxes[:, :2], axis=1)
        for index in np.argsort(-areas, kind="stable"):
            x1, y1, x2, y2 = image_boxes[index]
            centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
            sigma_x, sigma_y = max(0.5 * stride, (x2 - x1) / 10), max(0.5 * stride, (y2 - y1) / 10)
            peak = np.exp(-((cell_x - centre_x) ** 2) / (2 * sigma_x**2) - (cell_y - centre_y) ** 2 / (2 * sigma_y**2))
            row, col = min(rows - 1, int(centre_y // stride)), min(cols - 1, int(centre_x // stride))
            peak[row, col] = 1.0
            heatmap = heatmaps[image, image_classes[index]]
            np.maximum(heatmap, peak, out=heatmap)
            regress = peak >= 0.3
            box_targets[image][:, regress] = image_boxes[index][:, None]
            weights[image][regress] = peak[regress]
    return DetectorTargets(
        heatmaps=torch.from_numpy(heatmaps.reshape(len(boxes), num_classes, -1)),
        boxes=torch.from_numpy(box_targets.reshape(len(boxes), 4, -1)),
        box_weights=torch.from_numpy(weights.reshape(len(boxes), -1)),
    )


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss: negatives near a peak are penalised less, normalised by peak count."""
    positive = target.eq(1.0)
    probability = logits.sigmoid()
    positive_loss = -((1 - probability) ** 2) * F.logsigmoid(logits)
    negative_loss = -((1 - target) ** 4) * probability**2 * F.logsigmoid(-logits)
    loss = torch.where(positive, positive_loss, negative_loss).sum()
    return loss / positive.sum().clamp(min=1)


def train_detector(data: WeldSet, plan: TrainingPlan, seed: int, log: Log) -> nn.Module:
    torch.manual_seed(seed)
    spec = DETECTOR.input
    model = build_weld_detector(1, len(DETECTOR.classes), (spec.height, spec.width))
    model = model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(data.detector_inputs)
    targets = detector_targets(
        data.detector_boxes, data.detector_classes, len(DETECTOR.classes), (spec.height, spec.width)
    )
    grid = (len(DETECTOR.classes), spec.height // WeldDetector.stride, spec.width // WeldDetector.stride)
    flips = torch.Generator().manual_seed(seed)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        heatmaps = targets.heatmaps[index].view(-1, *grid)
        boxes = targets.boxes[index].view(-1, 4, *grid[1:])
        weights = targets.box_weights[index].view(-1, *grid[1:])
        flip = torch.rand(len(index), generator=flips) < 0.5
        batch, heatmaps, weights = (_mirror(t, flip) for t in (images[index], heatmaps, weights))
        # A mirrored image mirrors its grid, and each box's x1, x2 become width - x2, width - x1.
        mirrored = torch.stack([spec.width - boxes[:, 2], boxes[:, 1], spec.width - boxes[:, 0], boxes[:, 3]], 1)
        boxes = torch.where(flip.view(-1, 1, 1, 1), mirrored.flip(-1), boxes)
        score_logits, raw_boxes = model.raw(_normalise(batch, spec))
        focal = heatmap_focal_loss(score_logits, heatmaps.flatten(2))
        weights = weights.flatten(1)
        chosen = weights > 0
        predicted = model.boxes(raw_boxes).permute(0, 2, 1)[chosen]
        wanted = boxes.flatten(2).permute(0, 2, 1)[chosen]
        giou = generalized_box_iou_loss(predicted, wanted, reduction="none")
        return focal + 2.0 * (giou * weights[chosen]).sum() / weights[chosen].sum().clamp(min=1e-6)

    _fit(model, DETECTOR.name, len(data), plan.detector_epochs, plan.batch_size, batch_loss, seed, log)
    return model


def detect(
    model: nn.Module, inputs: np.ndarray, score_floor: float = 0.01, max_detections: int = 100
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image (xyxy in input pixels, confidence, class_id) after class-wise NMS, as the service decodes it."""
    raw = _predict(model, inputs, DETECTOR.input)
    results = []
    for head in raw:
        scores, class_ids = head[4:].max(dim=0)  # the best class per cell, as YOLOv8 decodes
        keep = scores >= score_floor
        centre, size = head[:2, keep].T, head[2:4, keep].T
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        kept = batched_nms(boxes, scores[keep], class_ids[keep], DETECTOR.nms_iou)[:max_detections]
        results.append((boxes[kept].numpy(), scores[keep][kept].numpy(), class_ids[keep][kept].numpy()))
    return results


def evaluate_detector(model: nn.Module, data: WeldSet) -> dict[str, float]:
    """AP@0.5 per class on boxes mapped back to the original frames, as the service reports them."""
    predictions = []
    for (boxes, scores, class_ids), (width, height) in zip(detect(model, data.detector_inputs), data.frame_sizes):
        geometry = Geometry.letterbox((width, height), (DETECTOR.input.width, DETECTOR.input.height))
        predictions.append((geometry.boxes_to_original(boxes), scores, class_ids))
    truths = list(zip(data.frame_boxes, data.detector_classes))
    ap = average_precision_per_class(predictions, truths, len(DETECTOR.classes), iou_threshold=0.5)
    return {"map50": float(np.nanmean(ap))} | _per_class("ap50", DETECTOR.classes, ap)


# --- segmenter ----------------------------------------------------------------------------------

_PIXEL_WEIGHTS = torch.tensor([1.0, 4.0, 4.0, 4.0])  # defect pixels are rare


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice, averaged over the defect classes (channel 0, the background, left out)."""
    probabilities = logits.softmax(dim=1)[:, 1:]
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    overlap = (probabilities * one_hot).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1 - ((2 * overlap + 1) / (total + 1)).mean()


def _crop_corners(masks: np.ndarray, crop: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of one crop per mask; most crops hold a defect, the rest fall anywhere."""
    height, width = masks.shape[1:]
    corners = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(ys) and rng.random() < 0.7:
            pick = int(rng.integers(len(ys)))
            y = ys[pick] - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
            x = xs[pick] - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
        else:
            y, x = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        corners.append((int(np.clip(y, 0, height - crop)), int(np.clip(x, 0, width - crop))))
    return corners


def train_segmenter(data: WeldSet, plan: TrainingPlan, seed: int, log: Log) -> nn.Module:
    torch.manual_seed(seed)
    model = build_unet(1, len(SEGMENTER.classes), base=8, depth=4).to(memory_format=torch.channels_last)
    crop = plan.segmenter_crop
    rng = np.random.default_rng(seed)
    flips = torch.Generator().manual_seed(seed)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        chosen = index.numpy()
        masks = data.segmenter_masks[chosen]
        corners = _crop_corners(masks, crop, rng)
        images = np.stack(
            [data.segmenter_inputs[i][:, y : y + crop, x : x + crop] for i, (y, x) in zip(chosen, corners)]
        )
        masks = np.stack([m[y : y + crop, x : x + crop] for m, (y, x) in zip(masks, corners)])
        flip = torch.rand(len(index), generator=flips) < 0.5
        images, masks = _mirror(torch.from_numpy(images), flip), _mirror(torch.from_numpy(masks).long(), flip)
        logits = model(_normalise(images, SEGMENTER.input))
        return F.cross_entropy(logits, masks, weight=_PIXEL_WEIGHTS) + dice_loss(logits, masks)

    _fit(model, SEGMENTER.name, len(data), plan.segmenter_epochs, plan.batch_size, batch_loss, seed, log)
    return model


def evaluate_segmenter(model: nn.Module, data: WeldSet) -> dict[str, float]:
    """IoU per class over all pixels of the original frames (argmax mapped back, as the service does)."""
    if data.frame_masks is None:
        raise ValueError("this set kept no original-size masks: generate it with keep_masks=True")
    num_classes = len(SEGMENTER.classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    input_size = (SEGMENTER.input.width, SEGMENTER.input.height)
    for start in range(0, len(data), 16):
        class_maps = _predict(model, data.segmenter_inputs[start : start + 16], SEGMENTER.input).argmax(dim=1)
        for offset, class_map in enumerate(class_maps.numpy().astype(np.uint8)):
            truth = data.frame_masks[start + offset]
            geometry = Geometry.stretch((truth.shape[1], truth.shape[0]), input_size)
            confusion += confusion_matrix(truth, geometry.mask_to_original(class_map), num_classes)
    iou = iou_per_class(confusion)
    return {"mean_iou": float(np.nanmean(iou[1:]))} | _per_class("iou", SEGMENTER.classes, iou)


# --- shared -------------------------------------------------------------------------------------


def _predict(model: nn.Module, inputs: np.ndarray, spec: InputSpec, batch_size: int = 32) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [model(_normalise(inputs[i : i + batch_size], spec)) for i in range(0, len(inputs), batch_size)]
        )


def _per_class(metric: str, classes: Sequence[str], values: np.ndarray) -> dict[str, float]:
    """`{metric}_{class}` entries; NaN (a class absent from the set) is left out, JSON has no NaN."""
    return {f"{metric}_{name}": float(value) for name, value in zip(classes, values) if not np.isnan(value)}


def run_demo(store: Path, seed: int, plan: TrainingPlan = TrainingPlan(), log: Log = print) -> list[ModelVersion]:
    """Generate data, train, evaluate and export the three demo models; returns the new versions."""
    start = time.perf_counter()
    train = generate_set(seed, plan.train_images, TRAIN_FRAME_SIZES)
    test = generate_set(seed + TEST_SEED_OFFSET, plan.test_images, [TEST_FRAME_SIZE], keep_masks=True)
    log(f"generated {len(train)} training and {len(test)} test frames ({time.perf_counter() - start:.0f} s)")

    stages = (
        (CLASSIFIER, "weld-classifier", train_classifier, evaluate_classifier, test.classifier_inputs),
        (DETECTOR, "weld-detector", train_detector, evaluate_detector, test.detector_inputs),
        (SEGMENTER, "unet (base 8, depth 4)", train_segmenter, evaluate_segmenter, test.segmenter_inputs),
    )
    versions = []
    for demo_model, architecture, train_model, evaluate, test_inputs in stages:
        model = train_model(train, plan, seed, log)
        metrics = evaluate(model, test)
        log(f"{demo_model.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        request = demo_model.export_request()
        if demo_model is CLASSIFIER:
            request.heatmap_scale = classifier_heatmap_scale(model, test)
        version = export_model(
            model,
            request,
            store,
            source=f"python -m export demo --seed {seed} ({train.description})",
            architecture=architecture,
            quality=Quality(dataset=test.description, metrics=metrics),
            parity_inputs=torch.from_numpy(test_inputs[:4]),
        )
        log(f"exported {version.manifest.ref} to {version.path} ({time.perf_counter() - start:.0f} s)")
        versions.append(version)
    return versions


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    run_demo(Path(args.store), args.seed)
