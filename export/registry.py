"""Architectures the `torch` command can rebuild, and loading checkpoints into them.

An architecture is a torchvision model name (classifier, segmenter or detector), one of the
project's own weld models, or `module` for a whole model saved with `torch.save(model)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from service.manifest import OutputDecoder, Task

from .errors import ExportError, reason

SAVED_MODULE = "module"

# Detectors whose torchvision output is boxes/scores/labels and nothing more.
_DETECTOR_PREFIXES = ("fasterrcnn_", "retinanet_", "ssd", "fcos_")

# (channels, number of classes, (height, width)) -> an untrained model
Builder = Callable[[int, int, tuple[int, int]], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    task: Task
    decoders: tuple[OutputDecoder, ...]  # the first is the default
    build: Builder
    from_torchvision: bool  # then it takes 3 channels, whatever the images have


class GrayAsRgb(nn.Module):
    """Feeds a single-channel image to a model built for RGB by repeating the channel."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.model(images.expand(-1, 3, -1, -1))


def resolve_architecture(name: str) -> Architecture:
    """The architecture called `name`; ExportError naming the families when there is none."""
    if name in _PROJECT_ARCHITECTURES:
        return _PROJECT_ARCHITECTURES[name]
    if name in torchvision.models.list_models(module=torchvision.models):
        return Architecture(
            name,
            Task.CLASSIFICATION,
            (OutputDecoder.SOFTMAX, OutputDecoder.SIGMOID),
            _torchvision_builder(name, backbone=False),
            from_torchvision=True,
        )
    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        return Architecture(
            name,
            Task.SEGMENTATION,
            (OutputDecoder.SEGMENTATION_LOGITS,),
            _torchvision_builder(name, backbone=True),
            from_torchvision=True,
        )
    if name.startswith(_DETECTOR_PREFIXES) and name in torchvision.models.list_models(
        module=torchvision.models.detection
    ):
        return Architecture(
            name,
            Task.DETECTION,
            (OutputDecoder.BOXES_SCORES_LABELS,),
            _torchvision_builder(name, backbone=True),
            from_torchvision=True,
        )
    raise ExportError(
        f"unknown architecture {name!r}: use a torchvision classifier (e.g. resnet18), segmenter "
        f"(e.g. lraspp_mobilenet_v3_large) or detector (fasterrcnn_*, retinanet_*, ssd*, fcos_*), "
        f"one of {', '.join(sorted(_PROJECT_ARCHITECTURES))}, or {SAVED_MODULE!r} for a saved module"
    )


def load_checkpoint_model(
    architecture: Architecture, checkpoint: Path, channels: int, num_classes: int, input_size: tuple[int, int]
) -> nn.Module:
    """Build `architecture` and load the checkpoint's weights into it, strictly."""
    state = read_state_dict(checkpoint)
    try:
        model = architecture.build(channels, num_classes, input_size)
    except Exception as exc:
        raise ExportError(f"cannot build {architecture.name} for {num_classes} classes: {reason(exc)}") from exc
    if architecture.task is Task.SEGMENTATION and architecture.from_torchvision:
        # The auxiliary head of torchvision segmenters only helps training; inference never runs it.
        state = {key: value for key, value in state.items() if not key.startswith("aux_classifier.")}
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise ExportError(
            f"checkpoint {checkpoint} does not fit {architecture.name} with {num_classes} classes "
            f"and {channels} channel(s): {mismatch}"
        )
    model.load_state_dict(state)
    if architecture.from_torchvision and channels == 1 and architecture.task is not Task.DETECTION:
        # Detectors are fed RGB by the export wrapper, which hands them a list of images.
        model = GrayAsRgb(model)
    return model


def read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A state_dict, or a dict holding one under 'state_dict' or 'model'."""
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint {checkpoint} does not exist")
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(f"cannot read checkpoint {checkpoint} as a state_dict: {reason(exc)}") from exc
    if isinstance(content, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ExportError(
            f"checkpoint {checkpoint} holds no state_dict (a dict of tensors, or one under 'state_dict' or 'model')"
        )
    return dict(content)


def load_saved_module(path: Path) -> nn.Module:
    """A whole model saved with `torch.save(model)`."""
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    try:
        # Unpickling runs code from the file: only for the engineer's own checkpoints.
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ExportError(f"cannot load saved module {path}: {reason(exc)}") from exc
    if isinstance(content, torch.jit.ScriptModule):
        raise ExportError(
            f"{path} is a TorchScript file, which neither ONNX exporter can wrap with the pixel normalisation: "
            "save the nn.Module with torch.save(model), or export ONNX yourself and use `import`"
        )
    if not isinstance(content, nn.Module):
        held = "weights (a dict)" if isinstance(content, Mapping) else f"a {type(content).__name__}"
        raise ExportError(f"{path} holds {held}, not a saved module: give its architecture with --arch")
    return content


def _state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """Why `given` cannot load into a model with `expected` weights, in one line ("" when it can)."""
    problems = []
    resized = [key for key in expected.keys() & given.keys() if expected[key].shape != given[key].shape]
    if resized:
        key = sorted(resized)[0]
        problems.append(
            f"{key} is {list(given[key].shape)} in the checkpoint, {list(expected[key].shape)} in the model"
            + (f" (and {len(resized) - 1} more)" if len(resized) > 1 else "")
        )
    for label, keys in (("missing", expected.keys() - given.keys()), ("unexpected", given.keys() - expected.keys())):
        if keys:
            problems.append(f"{len(keys)} {label} key(s), e.g. {sorted(keys)[0]}")
    return "; ".join(problems)


def _torchvision_builder(name: str, backbone: bool) -> Builder:
    # Never download weights: the checkpoint provides every parameter.
    extra = {"weights_backbone": None} if backbone else {}

    def build(channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)

    return build


def _weld_classifier(channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    from .architectures import build_weld_classifier

    return build_weld_classifier(channels, num_classes)


def _weld_detector(channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    from .architectures import build_weld_detector

    return build_weld_detector(channels, num_classes, input_size)


def _unet(channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    from .architectures import build_unet

    return build_unet(channels, num_classes)


_PROJECT_ARCHITECTURES = {
    "weld-classifier": Architecture(
        "weld-classifier",
        Task.CLASSIFICATION,
        (OutputDecoder.SOFTMAX, OutputDecoder.SIGMOID),
        _weld_classifier,
        from_torchvision=False,
    ),
    "weld-detector": Architecture(
        "weld-detector", Task.DETECTION, (OutputDecoder.YOLO,), _weld_detector, from_torchvision=False
    ),
    "unet": Architecture(
        "unet", Task.SEGMENTATION, (OutputDecoder.SEGMENTATION_LOGITS,), _unet, from_torchvision=False
    ),
}
