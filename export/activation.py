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
- torchvision's ResNet family (resnet*, resnext*, wide_resnet*), fed gray frames or RGB.

Any other classifier exports as before, without them; the service then offers occlusion maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import ResNet

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
    if type(model) is ResNet:  # a subclass may have changed forward
        return ActivationParts(_resnet_features(model), _resnet_classify(model), model.fc.weight.detach())
    return None


def _resnet_features(model: ResNet) -> Callable[[torch.Tensor], torch.Tensor]:
    stages = (model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4)

    def features(images: torch.Tensor) -> torch.Tensor:
        for stage in stages:
            images = stage(images)
        return images

    return features


def _resnet_classify(model: ResNet) -> Callable[[torch.Tensor], torch.Tensor]:
    def classify(features: torch.Tensor) -> torch.Tensor:
        return model.fc(torch.flatten(model.avgpool(features), 1))

    return classify


def class_activations(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Features [N, K, h, w] and weights [C, K] -> every class's map [N, C, h, w]."""
    return torch.einsum("nkhw,ck->nchw", features, weights)
