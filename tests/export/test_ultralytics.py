"""An ultralytics detector, trained here on generated welds, imported with one command, answers through
the service as ultralytics' own `predict` does on the same bytes (ultralytics, AGPL-3.0, is a
test-only dependency): exported with fixed image axes (every frame letterboxed to the full square) and
with dynamic ones (`dynamic=True`, where `predict` pads a frame only to a multiple of the stride)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from export.cli import main
from export.synthetic import generate_weld
from service.model_store import load_version
from service.pipeline.decode import DecodedImage
from service.pipeline.preprocess import to_model_input
from tests.conftest import app_in_process

ultralytics = pytest.importorskip("ultralytics", reason="ultralytics (a test-only dependency) is not installed")
cv2 = pytest.importorskip("cv2", reason="OpenCV, which ultralytics installs, is missing")

CLASSES = ["porosity", "crack", "undercut"]
SIZE = 128
# A detector trained for seconds is unsure of everything: compare every box it keeps at 0.001.
CONFIDENCE = 0.001


def write_dataset(root: Path, images: int = 24, frame: int = 320) -> Path:
    """Generated welds in the YOLO layout (images/, labels/ with class cx cy w h), and its data yaml."""
    for split, offset in (("train", 0), ("val", 1000)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(images if split == "train" else 4):
            sample = generate_weld(96_000 + offset + i, frame, frame, label=CLASSES[i % 3])
            Image.fromarray(sample.image).convert("RGB").save(root / split / "images" / f"{i}.png")
            rows = [
                f"{CLASSES.index(name)} {(x1 + x2) / 2 / frame} {(y1 + y2) / 2 / frame} "
                f"{(x2 - x1) / frame} {(y2 - y1) / frame}"
                for (x1, y1, x2, y2), name in zip(sample.boxes, sample.box_labels, strict=True)
            ]
            (root / split / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    data = root / "weld.yaml"
    data.write_text(f"path: {root}\ntrain: train/images\nval: val/images\nnames:\n{names}")
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> ultralytics.YOLO:
    """A yolov8n trained briefly from scratch."""
    folder = tmp_path_factory.mktemp("ultralytics")
    model = ultralytics.YOLO("yolov8n.yaml")  # the architecture alone: nothing to download
    model.train(
        data=str(write_dataset(folder / "data")),
        epochs=20,
        imgsz=SIZE,
        batch=8,
        workers=0,
        device="cpu",
        plots=False,
        val=False,
        amp=False,
        project=str(folder / "runs"),
        name="weld",
        verbose=False,
    )
    return model


def export_onnx(model: ultralytics.YOLO, *, dynamic: bool) -> Path:
    """The model exported by ultralytics' own exporter; it writes best.onnx whatever the options, so each
    export is moved aside."""
    written = Path(model.export(format="onnx", imgsz=SIZE, dynamic=dynamic))
    return written.rename(written.with_name(f"best-{'dynamic' if dynamic else 'fixed'}.onnx"))


@pytest.fixture(scope="module")
def exported(trained: ultralytics.YOLO) -> Path:
    return export_onnx(trained, dynamic=False)


@pytest.fixture(scope="module")
def exported_dynamic(trained: ultralytics.YOLO) -> Path:
    return export_onnx(trained, dynamic=True)


@pytest.fixture(scope="module")
def store(exported: Path, exported_dynamic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both exports, each imported with one command."""
    store = tmp_path_factory.mktemp("store")
    assert main(["import", "--onnx", str(exported), "--name", "weld-yolo", "--store", str(store)]) == 0
    assert main(["import", "--onnx", str(exported_dynamic), "--name", "weld-yolo-dynamic", "--store", str(store)]) == 0
    return store


@pytest.fixture(scope="module")
def served(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_in_process(store, tmp_path_factory.mktemp("state")) as client:
        yield client


def png(width: int, height: int, seed: int) -> bytes:
    sample = generate_weld(97_000 + seed, width, height, label=CLASSES[seed % 3])
    buffer = io.BytesIO()
    Image.fromarray(sample.image).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def box_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_answers_as_ultralytics(served: TestClient, model: str, exported: Path, width: int, height: int) -> None:
    """Three frames of `width` x `height`: the same boxes (count, class, IoU >= 0.9, confidence within 0.01)."""
    predictor = ultralytics.YOLO(str(exported), task="detect")
    for seed in range(3):
        frame = png(width, height, seed)
        response = served.post(
            f"/v1/models/{model}/predict?thresholds={CONFIDENCE}",
            content=frame,
            headers={"Content-Type": "image/png"},
        )
        assert response.status_code == 200, response.text
        ours = response.json()["detections"]
        (theirs,) = predictor.predict(
            cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR),
            imgsz=SIZE,
            conf=CONFIDENCE,
            iou=0.7,
            max_det=300,
            verbose=False,
        )
        expected = list(zip(theirs.boxes.xyxy.tolist(), theirs.boxes.conf.tolist(), theirs.boxes.cls.tolist()))
        assert expected and len(ours) == len(expected)
        for box, confidence, class_id in expected:
            same_class = [d for d in ours if d["class_id"] == int(class_id)]
            best = max(same_class, key=lambda d: box_iou(box, [d["box"][k] for k in ("x1", "y1", "x2", "y2")]))
            assert box_iou(box, [best["box"][k] for k in ("x1", "y1", "x2", "y2")]) >= 0.9
            assert abs(best["confidence"] - confidence) <= 0.01


@pytest.mark.parametrize(("width", "height"), [(SIZE, SIZE), (320, 320), (320, 200), (200, 320), (640, 360)])
def test_the_service_answers_as_ultralytics_predicts_on_the_same_bytes(served, exported, width, height):
    assert_answers_as_ultralytics(served, "weld-yolo", exported, width, height)


@pytest.mark.parametrize(("width", "height"), [(320, 320), (320, 200), (200, 320), (640, 360), (333, 171)])
def test_a_dynamic_export_answers_as_ultralytics_predicts_on_frames_it_pads_only_to_the_stride(
    served, exported_dynamic, width, height
):
    assert_answers_as_ultralytics(served, "weld-yolo-dynamic", exported_dynamic, width, height)


def test_the_one_command_import_pads_a_dynamic_export_only_to_the_stride_and_a_fixed_one_to_the_input(store):
    assert load_version(store, "weld-yolo-dynamic").manifest.input.pad_to_stride == 32
    assert load_version(store, "weld-yolo").manifest.input.pad_to_stride is None


def test_padding_to_the_stride_can_be_turned_off_for_a_dynamic_export_and_not_on_for_a_fixed_one(
    exported, exported_dynamic, tmp_path, capsys
):
    common = ["--store", str(tmp_path), "--name", "weld-yolo"]
    assert main(["import", "--onnx", str(exported_dynamic), "--pad-to-stride", "none", *common]) == 0
    assert load_version(tmp_path, "weld-yolo").manifest.input.pad_to_stride is None
    assert main(["import", "--onnx", str(exported), "--pad-to-stride", "32", *common]) == 2
    assert "the graph's input is fixed at 128x128" in capsys.readouterr().err


@pytest.mark.parametrize(("width", "height"), [(320, 200), (200, 320), (640, 360), (333, 171), (128, 400)])
def test_the_input_of_a_dynamic_export_is_the_one_ultralytics_letterbox_makes(store, width, height):
    from ultralytics.data.augment import LetterBox

    spec = load_version(store, "weld-yolo-dynamic").manifest.input
    rgb = np.asarray(Image.open(io.BytesIO(png(width, height, 0))))
    theirs = LetterBox(SIZE, auto=True, stride=32)(image=np.ascontiguousarray(rgb[:, :, ::-1]))  # BGR, as cv2 reads
    ours, geometry = to_model_input(DecodedImage(Image.fromarray(rgb), width, height, "PNG"), spec)
    assert ours.shape == (3, *theirs.shape[:2]) and ours.shape[1:] != (SIZE, SIZE)
    # The same padding on each side; inside, OpenCV's and Pillow's fixed-point rounding differ by 1 at most.
    difference = np.abs(ours.astype(int) - theirs[:, :, ::-1].transpose(2, 0, 1).astype(int))
    assert int(difference.max()) <= 1
