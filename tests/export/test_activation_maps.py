"""Class activation maps end to end: classifiers exported by the export stage, served by a real server,
and the map in its answer against one computed from the PyTorch model's own features and weights."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import ResNet

from export.architectures import build_weld_classifier
from export.exporting import export_model
from export.registry import GrayAsRgb
from export.synthetic import encode_image, generate_weld
from service.model_store import load_version
from service.pipeline.decode import DecodedImage
from service.pipeline.preprocess import to_model_input
from tests.conftest import running_server
from tests.export.models import calibrated, export_request, torchvision_model
from tests.service.clients import error_of, post, predict

CLASSES = ["no_defect", "porosity", "crack", "undercut"]
FRAME = (640, 480)


class DoubledResNet(ResNet):
    """A ResNet whose forward is not torchvision's: the export cannot know where its maps lie."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(images)


def _weld(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return calibrated(build_weld_classifier(1, len(CLASSES)), channels=1, height=160, width=160).eval()


def _resnet(cls: type[ResNet] = ResNet) -> torch.nn.Module:
    torch.manual_seed(3)
    model = torchvision_model("resnet18", len(CLASSES))
    model.__class__ = cls
    return GrayAsRgb(calibrated(model, channels=3, height=224, width=224)).eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A store of three classifiers (the project's, torchvision's resnet18, a resnet18 with its own forward)
    and a server on it; (server, {name: PyTorch model})."""
    store = tmp_path_factory.mktemp("store")
    models = {"weld": (_weld(1), 160), "r18": (_resnet(), 224), "r18-doubled": (_resnet(DoubledResNet), 224)}
    for name, (model, size) in models.items():
        request = export_request(
            name, "classification", "softmax", CLASSES, "no_defect", channels=1, height=size, width=size, mean=0.45
        )
        export_model(model, request, store, source=f"{name}.pt")
    with running_server(tmp_path_factory.mktemp("server"), model_store=store) as server:
        yield server, store, {name: model for name, (model, _) in models.items()}


def _torch_maps(model: torch.nn.Module, name: str, frame: np.ndarray, store: Path) -> np.ndarray:
    """Every class's activation map [C, h, w] from the PyTorch model, on the pixels the service feeds it."""
    manifest = load_version(store, name).manifest
    width, height = FRAME
    decoded = DecodedImage(image=Image.fromarray(frame), original_width=width, original_height=height, format="PNG")
    pixels, _ = to_model_input(decoded, manifest.input)
    images = (torch.tensor(pixels[None]).float() / 255 - 0.45) / 0.25
    with torch.no_grad():
        if name == "weld":
            features = model.features(images)
            weights = model.head.weight[:, model.head.in_features // 2 :]  # the max-pooling half of its head
        else:
            resnet = model.model
            x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images.expand(-1, 3, -1, -1)))))
            features = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))
            weights = resnet.fc.weight
        maps = torch.einsum("nkhw,ck->nchw", features, weights)[0]
    return maps.numpy()


@pytest.mark.parametrize("name", ["weld", "r18"])
def test_the_served_activation_map_is_the_pytorch_model_s(served, name):
    server, store, models = served
    manifest = load_version(store, name).manifest
    assert manifest.activation_map is not None
    for seed, defect in ((1, "crack"), (2, "porosity")):
        frame = generate_weld(seed, *FRAME, label=defect).image
        answer = predict(server, name, encode_image(frame, "PNG"), heatmap="cam", heatmap_class=defect)
        heatmap = answer["heatmap"]
        maps = _torch_maps(models[name], name, frame, store)
        expected = maps[CLASSES.index(defect)]
        rows, cols = expected.shape
        assert (rows, cols) == {"weld": (10, 10), "r18": (7, 7)}[name]
        # The peak: its value, and its cell's centre on the frame.
        assert heatmap["peak"] == pytest.approx(float(expected.max()), rel=1e-4, abs=1e-4)
        row, col = np.unravel_index(int(expected.argmax()), expected.shape)
        assert (heatmap["peak_x"], heatmap["peak_y"]) == (
            int((col + 0.5) / cols * FRAME[0]),
            int((row + 0.5) / rows * FRAME[1]),
        )
        # The PNG: the map drawn bilinearly over the frame at half its size, on the export's scale.
        assert (heatmap["downscale"], heatmap["width"], heatmap["height"]) == (2, 320, 240)
        image = Image.fromarray(expected)
        drawn = np.asarray(image.resize((320, 240), Image.Resampling.BILINEAR, box=(0, 0, cols, rows)))
        intensity = np.rint(np.clip(drawn / manifest.activation_map.scale, 0, 1) * 255)
        served_pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(heatmap["png"]))))
        assert np.abs(served_pixels.astype(int) - intensity).max() <= 1
        assert heatmap["scale"] == manifest.activation_map.scale


def test_a_classifier_the_export_does_not_know_gets_occlusion_maps_only(served):
    server, store, _ = served
    version = load_version(store, "r18-doubled")
    assert version.manifest.activation_map is None
    assert sorted(p.name for p in version.path.iterdir()) == ["manifest.json", "model.onnx"]
    frame = encode_image(generate_weld(4, *FRAME, label="crack").image, "PNG")
    answer = predict(server, "r18-doubled", frame, heatmap="auto")
    assert answer["heatmap"]["method"] == "occlusion" and answer["heatmap"]["runs"] == 49
    response = post(server, "r18-doubled", frame, "image/png", heatmap="cam")
    assert error_of(response, 422) == "invalid_parameters"
    assert "one of auto, occlusion" in response.json()["error"]["message"]
