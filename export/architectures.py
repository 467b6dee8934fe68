"""The project's own small CNNs for weld inspection: a classifier, a detector and a U-Net.

Each takes a normalised float32 NCHW tensor. They use only ops that export to ONNX with the
dynamo exporter (opset 18 and later) with a dynamic batch axis: convolutions, batch norm, ReLU, max
pooling, transposed convolutions, nearest upsampling, concatenation, and no control flow that
depends on the data.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class WeldClassifier(nn.Module):
    """A plain conv stack with average and max pooling: the max keeps a single small pore visible."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 16, stride=2),
            conv_bn_relu(16, 24),
            nn.MaxPool2d(2),
            conv_bn_relu(24, 48),
            nn.MaxPool2d(2),
            conv_bn_relu(48, 64),
            conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
            conv_bn_relu(64, 128),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * 128, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The last convolutional features [N, 128, h, w] -> logits [N, num_classes]."""
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))


def build_weld_classifier(in_channels: int, num_classes: int) -> nn.Module:
    """Logits [N, num_classes]; any input size of at least 32x32."""
    return WeldClassifier(in_channels, num_classes)


class WeldDetector(nn.Module):
    """Anchor-free single-stage detector on a stride-8 grid, CenterNet-style.

    A small backbone goes down to stride 32; a top-down path (nearest upsampling plus lateral 1x1
    convolutions) brings that context back to stride 8, so a cell sees a whole long crack. Every
    cell predicts a score per class, and a box: the offset of its centre from the cell's centre
    and its log size, both in strides (so a cell next to a thin crack can still place it). `forward` returns the
    YOLO layout `[N, 4 + C, A]`: cx, cy, w, h in input pixels, then sigmoid class scores, one column
    per grid cell (A = H/8 * W/8), so that the service thresholds and runs NMS on it.
    """

    stride = 8

    def __init__(self, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        height, width = input_size
        if height % 32 or width % 32:
            raise ValueError(f"detector input size must be a multiple of 32, got {height}x{width}")
        self.stem = nn.Sequential(conv_bn_relu(in_channels, 12, stride=2), conv_bn_relu(12, 24, stride=2))
        self.stage8 = nn.Sequential(conv_bn_relu(24, 48, stride=2), conv_bn_relu(48, 48))
        self.stage16 = nn.Sequential(conv_bn_relu(48, 64, stride=2), conv_bn_relu(64, 64))
        self.stage32 = nn.Sequential(conv_bn_relu(64, 96, stride=2), conv_bn_relu(96, 96))
        self.lateral32 = nn.Conv2d(96, 64, 1)
        self.lateral16 = nn.Conv2d(64, 64, 1)
        self.lateral8 = nn.Conv2d(48, 64, 1)
        self.merge16 = conv_bn_relu(64, 64)
        self.merge8 = conv_bn_relu(64, 48)
        self.head = conv_bn_relu(48, 48)
        self.score = nn.Conv2d(48, num_classes, 1)
        self.box = nn.Conv2d(48, 4, 1)
        # Heatmap peaks are rare: start every score near 0.01 so early training is not swamped.
        nn.init.constant_(self.score.bias, -4.6)
        rows, cols = height // self.stride, width // self.stride
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        centres = torch.stack([xs, ys]).reshape(2, -1).float().add(0.5).mul(self.stride)
        self.register_buffer("cell_centres", centres, persistent=False)  # [2, A] x, y in input pixels

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score logits [N, C, A] and raw boxes [N, 4, A] (centre offset, log size; in strides) for training."""
        f8 = self.stage8(self.stem(images))
        f16 = self.stage16(f8)
        f32 = self.stage32(f16)
        up32 = nn.functional.interpolate(self.lateral32(f32), scale_factor=2.0, mode="nearest")
        p16 = self.merge16(self.lateral16(f16) + up32)
        p8 = self.merge8(self.lateral8(f8) + nn.functional.interpolate(p16, scale_factor=2.0, mode="nearest"))
        head = self.head(p8)
        return self.score(head).flatten(2), self.box(head).flatten(2)

    def centres_and_sizes(self, raw_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw boxes [N, 4, A] -> box centres [N, 2, A] and sizes [N, 2, A] in input pixels."""
        centres = self.cell_centres + raw_boxes[:, :2] * self.stride
        sizes = raw_boxes[:, 2:].clamp(max=6.0).exp() * self.stride
        return centres, sizes

    def boxes(self, raw_boxes: torch.Tensor) -> torch.Tensor:
        """Raw boxes [N, 4, A] -> xyxy [N, 4, A] in input pixels."""
        centres, sizes = self.centres_and_sizes(raw_boxes)
        return torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        score_logits, raw_boxes = self.raw(images)
        centres, sizes = self.centres_and_sizes(raw_boxes)
        return torch.cat([centres, sizes, score_logits.sigmoid()], dim=1)


def build_weld_detector(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """`input_size` is (height, width), each a multiple of 32; the grid is fixed at build time."""
    return WeldDetector(in_channels, num_classes, input_size)


class UNet(nn.Module):
    """The standard U-Net: double 3x3 convs, max-pool down, transposed-conv up, skip concatenation."""

    def __init__(self, in_channels: int, num_classes: int, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [base * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList([self._double_conv(in_channels, widths[0])])
        self.down.extend(self._double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.up = nn.ModuleList(self._double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.classify = nn.Conv2d(widths[0], num_classes, 1)

    @staticmethod
    def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        x = images
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for upsample, block in zip(self.upsample, self.up):
            x = block(torch.cat([skips.pop(), upsample(x)], dim=1))
        return self.classify(x)


def build_unet(in_channels: int, num_classes: int, base: int = 16, depth: int = 4) -> nn.Module:
    """Logits [N, num_classes, H, W]; H and W must be multiples of 2**depth."""
    return UNet(in_channels, num_classes, base, depth)
