"""What class activation maps need from a classifier (Zhou et al., "Learning Deep Features for
Discriminative Localization", 2016), found in the model before it is exported.

A classifier whose head is global pooling then one linear layer computes class c's logit as
`W_c . pool(F) + b_c`, where F [K, h, w] are its last convolutional features. With average pooling
the mean over the grid of `M_c = sum_k W_ck F_k` is exactly `W_c . mean(F)`: M_c says where on the
h x w grid the evidence for c lies, and once F is known it costs one weighted sum. The export adds F
to the graph's outputs and writes W beside the graph, so that the service gets the map from the
same run as the answer.

Found for:
- the project's `WeldClassifier`: its head reads the average and the maximum of each channel; its
  maps weigh the features with the maximum's weights, the half of the head that carries a small
  defect's evidence (with the average's weights added, the peak missed the defect more often on the
  demo's test frames);
- torchvision's classifiers whose head is average pooling then one linear layer (after dropout):
  ResNet (resnet*, resnext*, wide_resnet*), EfficientNet (v1 and v2), MobileNetV2, RegNet, DenseNet,
  ShuffleNetV2; fed gray frames or RGB. Not MobileNetV3, ConvNeXt, VGG and the like, whose heads are
  more than a weighted sum of the pooled features.

Any other classifier exports as before, without them; the service then offers occlusion maps. The
export uses the split only where it gives exactly the model's own logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import DenseNet, EfficientNet, MobileNetV2, RegNet, ResNet, ShuffleNetV2

from .architectures import WeldClassifier
from .registry import GrayAsRgb

FEATURES_OUTPUT = "features"
WEIGHTS_FILE = "activation_weights.npy"


@dataclass(frozen=True)
class ActivationParts:
    """A classifier split at its last convolutional features."""

    features: Callable[[torch.Tensor], torch.Tensor]  # normalised images -> features [N, K, h, w]
    classify: Callable[[torch.Tensor], torch.Tensor]  # features -> logits [N, C], as the model's forward
    weights: torch.Tensor  # [C, K]: each class's weight on each feature channel


def activation_parts(model: nn.Module) -> ActivationParts | None:
    """The parts of `model` a class activation map needs, or None for a model not of a known kind."""
    if isinstance(model, GrayAsRgb):
        inner = activation_parts(model.model)
        if inner is None:
            return None
        features = inner.features
        return ActivationParts(lambda images: features(images.expand(-1, 3, -1, -1)), inner.classify, inner.weights)
    if isinstance(model, WeldClassifier):
        channels = model.head.in_features // 2
        return ActivationParts(model.features, model.classify, model.head.weight.detach()[:, channels:])
    split = _torchvision_split(model)
    if split is None:
        return None
    stages, head = split
    linear = _linear(head)
    if linear is None:  # a head with more than one layer (MobileNetV3's): not a weighted sum of the features
        return None

    def features(images: torch.Tensor) -> torch.Tensor:
        for stage in stages:
            images = stage(images)
        return images

    def classify(features: torch.Tensor) -> torch.Tensor:
        return head(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))

    return ActivationParts(features, classify, linear.weight.detach())


def _torchvision_split(model: nn.Module) -> tuple[list[Callable[[torch.Tensor], torch.Tensor]], nn.Module] | None:
    """A torchvision classifier's stages up to its last features, and its head after average pooling,
    as its own forward runs them; None for any other model (a subclass may have changed forward)."""
    kind = type(model)
    if kind is ResNet:
        body = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3]
        return [*body, model.layer4], model.fc
    if kind in (EfficientNet, MobileNetV2):
        return [model.features], model.classifier
    if kind is RegNet:
        return [model.stem, model.trunk_output], model.fc
    if kind is DenseNet:
        return [model.features, F.relu], model.classifier
    if kind is ShuffleNetV2:
        return [model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4, model.conv5], model.fc
    return None


def _linear(head: nn.Module) -> nn.Linear | None:
    """The one linear layer of a head that is only that (after dropout, a no-op at inference), else None."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    *before, last = layers
    if isinstance(last, nn.Linear) and all(isinstance(layer, nn.Dropout) for layer in before):
        return last
    return None


def class_activations(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Features [N, K, h, w] and weights [C, K] -> every class's map [N, C, h, w]."""
    return np.einsum("nkhw,ck->nchw", features, weights)
