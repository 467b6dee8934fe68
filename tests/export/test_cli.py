"""`python -m export` end to end: real checkpoints, real exports, real onnxruntime."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from export.architectures import build_weld_classifier
from export.cli import build_parser, main
from service.model_store import load_version

from .models import (
    DEFECTS,
    SIZE,
    WELD_CLASSES,
    NoisyClassifier,
    TinySegmenter,
    TinyYoloHead,
    calibrated,
    normalised,
    random_images,
    run_onnx,
    save_state_dict,
    torchvision_model,
)

ROOT = Path(__file__).resolve().parents[2]
GRAY = ["--mean", "0.5", "--std", "0.25"]
WELD = ["--classes", ",".join(WELD_CLASSES), "--background-class", "no_defect", "--input-size", f"{SIZE}x{SIZE}"]


@dataclass
class Run:
    code: int
    out: str
    err: str


def run(*argv: object) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Run(code, out.getvalue(), err.getvalue())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    save_state_dict(calibrated(torchvision_model("resnet18", 4)), folder / "resnet18.pt")
    save_state_dict(torchvision_model("resnet18", 5), folder / "resnet18-5-classes.pt")
    torch.save(calibrated(TinySegmenter(1, 4), channels=1), folder / "segmenter-module.pt")
    torch.save(NoisyClassifier(1, 4), folder / "noisy-module.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated: this stands for an old file
        traced = torch.jit.trace(TinySegmenter(1, 4).eval(), torch.zeros(1, 1, SIZE, SIZE))
        torch.jit.save(traced, folder / "scripted.pt")
    weld_classifier = calibrated(build_weld_classifier(1, 4), channels=1)
    torch.save({"state_dict": weld_classifier.state_dict(), "epoch": 12}, folder / "weld-classifier.ckpt")

    class FloatPixelYolo(torch.nn.Module):
        """A YOLO-family graph as exported elsewhere: float32 input, pixels scaled by 1/255 inside."""

        def __init__(self) -> None:
            super().__init__()
            self.head = calibrated(TinyYoloHead(1, len(DEFECTS)), channels=1)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(images)

    torch.onnx.export(
        FloatPixelYolo().eval(),
        (torch.rand(2, 1, SIZE, SIZE),),
        folder / "yolo.onnx",
        dynamo=True,
        external_data=False,
        input_names=["pixels"],
        output_names=["output0"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=64)}},
        verbose=False,
    )
    return folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, checkpoints: Path) -> Path:
    """A store holding a sidecar-described classifier export and an imported YOLO graph."""
    store = tmp_path_factory.mktemp("store")
    sidecar = checkpoints / "weld-classifier.json"
    sidecar.write_text(
        json.dumps(
            {
                "name": "weld-classifier",
                "classes": WELD_CLASSES,
                "background_class": "no_defect",
                "input_size": [SIZE, SIZE],
                "mean": [0.5],
                "std": [0.25],
                "thresholds": {"crack": 0.25, "porosity": 0.6},
                "description": "from the sidecar",
                "quality": {"dataset": "synthetic welds, seed 5, 200 images 64x64", "metrics": {"accuracy": 0.93}},
            }
        )
    )
    exported = run(
        "torch",
        "--arch",
        "weld-classifier",
        "--checkpoint",
        checkpoints / "weld-classifier.ckpt",
        "--sidecar",
        sidecar,
        "--description",
        "from the command line",
        "--thresholds",
        "crack=0.2",
        "--heatmap-scale",
        "2.5",
        "--store",
        store,
    )
    assert exported.code == 0, exported.err
    imported = run(
        "import",
        "--onnx",
        checkpoints / "yolo.onnx",
        "--name",
        "weld-yolo",
        "--task",
        "detection",
        "--decoder",
        "yolo",
        "--classes",
        ",".join(DEFECTS),
        "--mean",
        "0",
        "--std",
        "1",
        "--resize",
        "letterbox",
        "--nms-iou",
        "0.6",
        "--store",
        store,
    )
    assert imported.code == 0, imported.err
    return store


def test_torchvision_checkpoint_exports_grayscale_by_repeating_the_channel_in_the_graph(
    tmp_path: Path, checkpoints: Path
) -> None:
    checkpoint = checkpoints / "resnet18.pt"
    result = run(
        "torch",
        "--arch",
        "resnet18",
        "--checkpoint",
        checkpoint,
        "--name",
        "weld-r18",
        *WELD,
        *GRAY,
        "--thresholds",
        "crack=0.3",
        "--store",
        tmp_path,
    )

    assert result.code == 0, result.err
    assert result.out.startswith(f"wrote weld-r18:1 to {tmp_path / 'weld-r18' / '1'} (parity ")
    manifest = load_version(tmp_path, "weld-r18").manifest
    assert manifest.input.channels == 1 and manifest.input.mean == (0.5,)
    assert manifest.thresholds == {"porosity": 0.5, "crack": 0.3, "undercut": 0.5}
    assert manifest.provenance.architecture == "resnet18" and manifest.provenance.source == str(checkpoint)
    assert manifest.provenance.source_sha256 == sha256(checkpoint)

    model = torchvision_model("resnet18", 4)
    model.load_state_dict(torch.load(checkpoint))
    images = random_images(3, channels=1)
    logits, features = run_onnx(tmp_path / "weld-r18" / "1" / "model.onnx", images)
    rgb = normalised(images, 0.5, 0.25).expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = model.eval()(rgb)
        stem = model.maxpool(model.relu(model.bn1(model.conv1(rgb))))
        expected_features = model.layer4(model.layer3(model.layer2(model.layer1(stem))))
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-3)
    # The class activation maps' features (layer4's output) and weights (fc's), beside the logits.
    assert manifest.activation_map is not None and manifest.activation_map.features == "features"
    np.testing.assert_allclose(features, expected_features.numpy(), atol=1e-3)
    weights = np.load(tmp_path / "weld-r18" / "1" / manifest.activation_map.weights)
    np.testing.assert_array_equal(weights, model.fc.weight.detach().numpy())


def test_torchvision_segmenter_checkpoint_with_its_training_only_auxiliary_head_exports(tmp_path: Path) -> None:
    model = calibrated(
        torchvision.models.get_model(
            "deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=4, aux_loss=True
        )
    )
    checkpoint = save_state_dict(model, tmp_path / "deeplab.pt")
    assert any(key.startswith("aux_classifier.") for key in torch.load(checkpoint))

    result = run(
        "torch",
        "--arch",
        "deeplabv3_mobilenet_v3_large",
        "--checkpoint",
        checkpoint,
        "--name",
        "weld-seg",
        "--classes",
        "background,porosity,crack,undercut",
        "--background-class",
        "background",
        "--input-size",
        "64x64",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--store",
        tmp_path / "store",
    )

    assert result.code == 0, result.err
    version = load_version(tmp_path / "store", "weld-seg")
    assert version.manifest.task == "segmentation" and version.manifest.output.decoder == "segmentation_logits"
    (logits,) = run_onnx(version.onnx_path, random_images(3, channels=3))
    assert logits.shape == (3, 4, 64, 64)


def test_saved_module_exports_with_the_task_given(tmp_path: Path, checkpoints: Path) -> None:
    result = run(
        "torch",
        "--arch",
        "module",
        "--checkpoint",
        checkpoints / "segmenter-module.pt",
        "--name",
        "seg",
        "--task",
        "segmentation",
        "--classes",
        "background,porosity,crack,undercut",
        "--background-class",
        "background",
        "--input-size",
        "64x64",
        *GRAY,
        "--store",
        tmp_path,
    )

    assert result.code == 0, result.err
    manifest = load_version(tmp_path, "seg").manifest
    assert manifest.output.decoder == "segmentation_logits" and manifest.provenance.architecture == "module"


def test_sidecar_supplies_the_fields_and_command_line_options_win(shipped: Path) -> None:
    manifest = load_version(shipped, "weld-classifier").manifest

    assert manifest.description == "from the command line"
    assert manifest.thresholds == {"porosity": 0.5, "crack": 0.2, "undercut": 0.5}  # --thresholds replaces the dict
    assert (manifest.input.channels, manifest.input.height, manifest.input.width) == (1, SIZE, SIZE)
    assert manifest.quality.metrics == {"accuracy": 0.93}
    assert manifest.provenance.architecture == "weld-classifier"
    assert manifest.provenance.parity.max_abs_diff <= manifest.provenance.parity.tolerance


def test_import_wraps_a_float_input_yolo_graph_unchanged(shipped: Path, checkpoints: Path) -> None:
    version = load_version(shipped, "weld-yolo")
    manifest = version.manifest

    assert version.onnx_path.read_bytes() == (checkpoints / "yolo.onnx").read_bytes()
    assert manifest.input.name == "pixels" and manifest.output.names == ["output0"]
    assert manifest.input.dtype == "float32" and not manifest.input.normalization_in_graph
    assert manifest.input.dynamic_batch and manifest.input.resize == "letterbox"
    assert (manifest.input.channels, manifest.input.height, manifest.input.width) == (1, SIZE, SIZE)
    assert manifest.nms_iou == 0.6 and manifest.classes == DEFECTS and manifest.background_class is None
    assert manifest.provenance.exporter == "import" and manifest.provenance.parity is None
    assert manifest.provenance.source_sha256 == sha256(checkpoints / "yolo.onnx")


def test_list_prints_one_row_per_version(shipped: Path) -> None:
    result = run("list", "--store", shipped)

    lines = result.out.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "VERSION",
        "TASK",
        "DECODER",
        "CLASSES",
        "INPUT",
        "EXPORTER",
        "PARITY",
        "CREATED",
        "(UTC)",
    ]
    classifier, yolo = (line.split() for line in lines[1:])
    assert classifier[:8] == ["weld-classifier", "1", "classification", "softmax", "4", "1x64x64", "uint8", "stretch"]
    assert classifier[8] == "dynamo" and float(classifier[9]) < 1e-3
    assert yolo[:10] == ["weld-yolo", "1", "detection", "yolo", "3", "1x64x64", "float32", "letterbox", "import", "-"]


def test_show_prints_parity_quality_and_thresholds(shipped: Path) -> None:
    result = run("show", "weld-classifier:1", "--store", shipped)

    shown = {line[:14].strip(): line[14:] for line in result.out.splitlines() if not line.startswith(" ")}
    assert shown["model"].startswith("weld-classifier:1")
    assert shown["classes"] == "no_defect (background), porosity, crack, undercut"
    assert shown["thresholds"] == "porosity=0.5, crack=0.2, undercut=0.5"
    assert shown["parity"].startswith("max |onnxruntime - torch| ") and "4 images at batch size 1, 3" in shown["parity"]
    assert shown["quality"] == "synthetic welds, seed 5, 200 images 64x64"
    assert shown["heat maps"] == "class activation (output features, weights activation_weights.npy, full at 2.5)"
    assert "accuracy 0.93" in result.out
    imported = run("show", "weld-yolo", "--store", shipped)
    assert "parity        none (imported graph)" in imported.out
    assert "normalisation (pixels * 0.00392157 - [0.0]) / [1.0], by the service" in imported.out


def test_show_of_a_missing_version_is_refused(shipped: Path) -> None:
    result = run("show", "weld-classifier:7", "--store", shipped)
    assert (result.code, result.err) == (2, "error: weld-classifier has no version 7 (has 1)\n")


def _refusals() -> list[tuple[list[object], str]]:
    module = ["--arch", "module", "--input-size", "64x64", *GRAY]
    resnet = ["--arch", "resnet18", "--name", "weld", *WELD, *GRAY]
    return [
        ([*resnet, "--checkpoint", "{ckpt}/missing.pt"], r"checkpoint .*missing\.pt does not exist"),
        (
            [*resnet, "--checkpoint", "{ckpt}/resnet18-5-classes.pt"],
            r"does not fit resnet18 with 4 classes and 1 channel\(s\): fc\.bias is \[5\] in the checkpoint, \[4\] in "
            r"the model \(and 1 more\)",
        ),
        (
            ["--arch", "resnet1000", "--checkpoint", "{ckpt}/resnet18.pt", "--name", "weld", *WELD, *GRAY],
            r"unknown architecture 'resnet1000': use a torchvision classifier",
        ),
        (
            [*resnet, "--checkpoint", "{ckpt}/resnet18.pt", "--decoder", "yolo"],
            r"this architecture's output reads with softmax or sigmoid, not yolo",
        ),
        (
            [*resnet, "--checkpoint", "{ckpt}/resnet18.pt", "--task", "segmentation"],
            r"this architecture is a classification model, not segmentation",
        ),
        (
            [
                *module,
                "--checkpoint",
                "{ckpt}/segmenter-module.pt",
                "--name",
                "m",
                "--classes",
                "a,b,c,d",
                "--task",
                "classification",
                "--decoder",
                "yolo",
            ],
            r"decoder yolo does not fit task classification \(use sigmoid, softmax\)",
        ),
        (
            [
                "--arch",
                "resnet18",
                "--checkpoint",
                "{ckpt}/resnet18.pt",
                "--name",
                "weld",
                "--classes",
                "a,b",
                "--input-size",
                "64by64",
                *GRAY,
            ],
            r"bad --input-size '64by64': model input as HEIGHTxWIDTH",
        ),
        (
            ["--arch", "resnet18", "--checkpoint", "{ckpt}/resnet18.pt", "--name", "Weld Classifier", *WELD, *GRAY],
            r"bad model name 'Weld Classifier'",
        ),
        (
            [
                "--arch",
                "resnet18",
                "--checkpoint",
                "{ckpt}/resnet18.pt",
                "--name",
                "weld",
                "--input-size",
                "64x64",
                *GRAY,
            ],
            r"missing --classes \(or 'classes' in the sidecar\)",
        ),
        (
            [
                *module,
                "--checkpoint",
                "{ckpt}/segmenter-module.pt",
                "--name",
                "m",
                "--task",
                "segmentation",
                "--classes",
                "background,porosity,crack",
            ],
            r"the model gives \[1, 4, 64, 64\] for 1 image\(s\); the segmentation_logits decoder with 3 classes",
        ),
        (
            [
                *module,
                "--checkpoint",
                "{ckpt}/noisy-module.pt",
                "--name",
                "m",
                "--task",
                "classification",
                "--classes",
                "a,b,c,d",
            ],
            r"parity check failed: logits differ by up to",
        ),
        (
            [
                *module,
                "--checkpoint",
                "{ckpt}/scripted.pt",
                "--name",
                "m",
                "--task",
                "segmentation",
                "--classes",
                "a,b,c,d",
            ],
            r"scripted\.pt is a TorchScript file",
        ),
        (
            [
                *module,
                "--checkpoint",
                "{ckpt}/resnet18.pt",
                "--name",
                "m",
                "--task",
                "classification",
                "--classes",
                "a,b,c,d",
            ],
            r"resnet18\.pt holds weights \(a dict\), not a saved module: give its architecture with --arch",
        ),
        (
            [
                *module,
                "--checkpoint",
                "{ckpt}/segmenter-module.pt",
                "--name",
                "s",
                "--task",
                "segmentation",
                "--classes",
                "background,porosity,crack,undercut",
                "--background-class",
                "background",
                "--heatmap-scale",
                "2",
            ],
            r"a heat map scale is for classifiers with class activation maps .*this model gets none",
        ),
    ]


@pytest.mark.parametrize(("arguments", "message"), _refusals())
def test_refusal_is_one_line_on_stderr_with_status_2_and_writes_nothing(
    tmp_path: Path, checkpoints: Path, arguments: list[object], message: str
) -> None:
    argv = [str(a).replace("{ckpt}", str(checkpoints)) for a in arguments]
    result = run("torch", *argv, "--store", tmp_path / "store")

    assert result.code == 2
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    assert re.search(message, result.err), result.err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--classes", "no_defect,porosity,crack,undercut"],
            r"the yolo decoder with 4 classes needs \[N, 4 \+ C, A\] with 8 at index 1",
        ),
        (
            ["--classes", "porosity,crack,undercut", "--input-size", "32x32"],
            r"the graph's input has height 64, not the declared 32",
        ),
        (
            ["--classes", "porosity,crack,undercut", "--task", "segmentation"],
            r"decoder yolo does not fit task segmentation",
        ),
    ],
)
def test_import_refuses_a_graph_that_does_not_fit_the_declaration(
    tmp_path: Path, checkpoints: Path, arguments: list[str], message: str
) -> None:
    result = run(
        "import",
        "--onnx",
        checkpoints / "yolo.onnx",
        "--name",
        "yolo",
        "--task",
        "detection",
        "--decoder",
        "yolo",
        "--mean",
        "0",
        "--std",
        "1",
        *arguments,
        "--store",
        tmp_path / "store",
    )

    assert result.code == 2 and result.err.count("\n") == 1
    assert re.search(message, result.err), result.err
    assert not (tmp_path / "store").exists()


def test_module_entry_point_refuses_with_status_2_and_lists_without_torch(tmp_path: Path, shipped: Path) -> None:
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "torch",
            "--arch",
            "resnet18",
            "--checkpoint",
            str(tmp_path / "none.pt"),
            "--name",
            "weld",
            *WELD,
            *GRAY,
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert refused.stderr == f"error: checkpoint {tmp_path / 'none.pt'} does not exist\n"

    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from export.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules; raise SystemExit(code)",
            "list",
            "--store",
            str(shipped),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "weld-yolo" in listing.stdout


def test_demo_command_hands_store_and_seed_to_the_demo_trainer() -> None:
    args = build_parser().parse_args(["demo", "--seed", "3"])
    assert (args.store, args.seed, args.handler.__name__) == (Path("model_store"), 3, "_demo")


def ultralytics_file(checkpoints: Path, folder: Path, **metadata: str) -> Path:
    """The test's YOLO-style graph as ultralytics' exporter writes it: with its metadata."""
    import onnx

    model = onnx.load(checkpoints / "yolo.onnx")
    props = {
        "author": "Ultralytics",
        "task": "detect",
        "names": str(dict(enumerate(DEFECTS))),
        "imgsz": str([SIZE, SIZE]),
        "stride": "32",
        **metadata,
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = folder / "best.onnx"
    onnx.save(model, path)
    return path


def test_an_ultralytics_file_imports_with_one_command_saying_what_it_inferred(checkpoints: Path, tmp_path: Path):
    store = tmp_path / "store"
    result = run("import", "--onnx", ultralytics_file(checkpoints, tmp_path), "--name", "steel", "--store", store)

    assert result.code == 0, result.err
    said = result.out.splitlines()[0]
    assert said.startswith("ultralytics detector: 3 classes (porosity, crack, undercut), input 64x64 (stride 32)")
    manifest = load_version(store, "steel").manifest
    assert (manifest.task, manifest.output.decoder, manifest.classes) == ("detection", "yolo", DEFECTS)
    assert manifest.input.resize == "letterbox" and manifest.input.scale == pytest.approx(1 / 255)
    assert manifest.input.resize_filter == "linear" and manifest.input.letterbox_fill == 114
    assert (manifest.input.mean, manifest.input.std) == ((0.0,), (1.0,))
    assert manifest.thresholds == dict.fromkeys(DEFECTS, 0.25)
    assert (manifest.nms_iou, manifest.max_detections) == (0.7, 300)


def test_options_override_what_an_ultralytics_file_implies(checkpoints: Path, tmp_path: Path):
    path = ultralytics_file(checkpoints, tmp_path)
    result = run(
        "import", "--onnx", path, "--name", "steel", "--store", tmp_path, "--thresholds", "0.4", "--nms-iou", "0.5"
    )
    assert result.code == 0, result.err
    manifest = load_version(tmp_path, "steel").manifest
    assert manifest.thresholds == dict.fromkeys(DEFECTS, 0.4) and manifest.nms_iou == 0.5


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"task": "segment"}, "this is an ultralytics 'segment' model; the service serves ultralytics detectors"),
        ({"imgsz": "[96, 96]"}, "the ultralytics metadata says imgsz height 96, the graph's input has 64"),
        ({"names": "{0: 'porosity'}"}, r"an ultralytics detector's output is \[N, 4 \+ 1, A\]"),
    ],
)
def test_an_ultralytics_file_that_does_not_fit_is_refused_saying_why(checkpoints, tmp_path, metadata, message):
    result = run(
        "import", "--onnx", ultralytics_file(checkpoints, tmp_path, **metadata), "--name", "steel", "--store", tmp_path
    )
    assert result.code == 2 and re.search(message, result.err), result.err
