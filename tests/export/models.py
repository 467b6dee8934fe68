"""Small real PyTorch models and checkpoints for the export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torch import nn

from export.exporting import ExportRequest

WELD_CLASSES = ["no_defect", "porosity", "crack", "undercut"]
DEFECTS = ["porosity", "crack", "undercut"]
DETECTOR_CLASSES = ["background", *DEFECTS]
SIZE = 64
MEAN, STD = 0.5, 0.25


def export_request(
    name: str,
    task: str,
    decoder: str,
    classes: list[str],
    background: str | None,
    channels: int = 3,
    height: int = SIZE,
    width: int = SIZE,
    mean: float = MEAN,
    std: float = STD,
    **extra: object,
) -> ExportRequest:
    """An export of a stretched input, normalised by one `mean` and `std` on every channel."""
    return ExportRequest(
        name=name,
        task=task,
        classes=classes,
        background_class=background,
        channels=channels,
        height=height,
        width=width,
        resize="stretch",
        mean=(mean,) * channels,
        std=(std,) * channels,
        decoder=decoder,
        **extra,
    )


def calibrated(model: nn.Module, channels: int = 3, height: int = SIZE, width: int = SIZE) -> nn.Module:
    """Random weights with BatchNorm statistics that fit inputs near N(0, 1), then eval mode.

    Without this, untrained BatchNorm layers make outputs collapse and parity means nothing.
    """
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, channels, height, width))
    return model.eval()


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    backbone = {} if name in torchvision.models.list_models(module=torchvision.models) else {"weights_backbone": None}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **backbone)


def torchvision_detector(name: str) -> nn.Module:
    detector = torchvision_model(name, num_classes=len(DETECTOR_CLASSES))
    calibrated(detector.backbone)  # detectors train only with targets: calibrate the backbone alone
    return detector.eval()


def save_state_dict(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


class TinyYoloHead(nn.Module):
    """A stride-8 anchor-free head in the YOLO layout: [N, 4 + C, A] with boxes in input pixels."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.predict = nn.Conv2d(16, 4 + num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raw = self.predict(self.features(images))
        n, _, rows, columns = raw.shape
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
        centres = torch.stack([xs, ys]).to(raw.dtype).add(0.5).mul(8).reshape(1, 2, -1)
        flat = raw.reshape(n, raw.shape[1], -1)
        xy = centres + flat[:, :2].tanh() * 8
        wh = flat[:, 2:4].sigmoid() * 64
        return torch.cat([xy, wh, flat[:, 4:].sigmoid()], dim=1)


class TinySegmenter(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, num_classes, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class NoisyClassifier(nn.Module):
    """Different logits on every run, as a model left with active noise would give."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(images.mean(dim=(2, 3)))
        return logits + torch.rand_like(logits)


class FixedSizeClassifier(nn.Module):
    """Runs only on 64x64 inputs (a flatten into a fixed linear layer)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(8)
        self.head = nn.Linear(channels * 8 * 8, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(images).flatten(1))


def random_images(count: int, channels: int, height: int = SIZE, width: int = SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, channels, height, width), dtype=np.uint8)


def normalised(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """What a PyTorch training loop feeds the model for these pixels."""
    return (torch.from_numpy(images).float() / 255 - mean) / std


def run_onnx(path: Path, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})
