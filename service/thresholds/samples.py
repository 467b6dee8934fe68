"""Labelled sample sets for tuning thresholds: a folder, or a zip archive of one.

Layouts, per task (paths relative to the set's root; images in any format the service
decodes: .jpg .jpeg .png .bmp .tif .tiff .webp):

- classification: `<class>/<image>`, one folder per class, named as the model's classes
  (e.g. `no_defect/0001.jpg`, `crack/0002.jpg`). Folders of other names are an error.
- detection: `images/<image>` and `labels.json`, which lists every image by file name with
  its labelled boxes in original-image pixels (x1, y1, x2, y2), `[]` for a clean part:
  `{"0001.jpg": [{"class_name": "crack", "box": [412.0, 130.5, 470.0, 301.0]}], "0002.jpg": []}`
- segmentation: `images/<name>.<ext>` and `masks/<name>.png`: a single-channel PNG of the
  image's size whose pixel values are indices into the model's classes (for the demo
  segmenter 0 background, 1 porosity, 2 crack, 3 undercut).

A zip archive holds the same layout at its root or inside one top-level folder (as
`zip -r samples.zip samples/` makes it). `python -m export.samples` writes such sets.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
from PIL import Image

from service.manifest import ModelManifest, Task
from service.thresholds.sweep import Truth

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
LABELS_FILE = "labels.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"


class SampleSetError(ValueError):
    """The sample set does not follow the documented layout, or does not fit the model."""


class SampleFiles(Protocol):
    def names(self) -> list[str]: ...  # relative POSIX paths of the files, sorted

    def read(self, name: str) -> bytes: ...


class FolderFiles:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SampleSetError(f"{root} is not a folder")
        self.root = root

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class ZipFiles:
    """A zip archive held in memory; refused when it would unpack to more than `max_bytes`."""

    def __init__(self, data: bytes, max_bytes: int, max_files: int) -> None:
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise SampleSetError(f"not a zip archive: {exc}") from exc
        files = [info for info in self._zip.infolist() if not info.is_dir() and not _hidden(info.filename)]
        if len(files) > max_files:
            raise SampleSetError(f"the archive holds {len(files)} files; the limit is {max_files}")
        unpacked = sum(info.file_size for info in files)
        if unpacked > max_bytes:
            raise SampleSetError(f"the archive unpacks to {unpacked} bytes; the limit is {max_bytes}")
        tops = {PurePosixPath(info.filename).parts[0] for info in files}
        nested = len(tops) == 1 and all(len(PurePosixPath(info.filename).parts) > 1 for info in files)
        self._prefix = f"{tops.pop()}/" if nested else ""
        self._names = sorted(info.filename[len(self._prefix) :] for info in files)

    def names(self) -> list[str]:
        return self._names

    def read(self, name: str) -> bytes:
        return self._zip.read(self._prefix + name)


@dataclass(frozen=True, eq=False)
class LabelledImage:
    name: str  # path in the set
    truth: Truth


def read_samples(files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    """The labelled images of a set in the layout of `manifest.task`, sorted by path."""
    names = [n for n in files.names() if not _hidden(n)]
    samples = _LAYOUTS[manifest.task](names, files, manifest)
    if not samples:
        raise SampleSetError(f"no labelled images found; expected the {manifest.task.value} layout")
    return samples


def _classification(names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    samples = []
    for name in _images(names):
        parts = PurePosixPath(name).parts
        if len(parts) != 2:
            raise SampleSetError(f"{name}: classification images go in one folder per class, as <class>/<image>")
        label = parts[0]
        if label not in manifest.classes:
            raise SampleSetError(f"{name}: folder {label!r} is not a class of {manifest.name} ({manifest.classes})")
        present = frozenset({label}) if label != manifest.background_class else frozenset()
        samples.append(LabelledImage(name, Truth(present=present, label=label)))
    return samples


def _detection(names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    if LABELS_FILE not in names:
        raise SampleSetError(f"detection samples need {LABELS_FILE} beside the {IMAGES_DIR}/ folder")
    try:
        labels = json.loads(files.read(LABELS_FILE))
    except ValueError as exc:
        raise SampleSetError(f"{LABELS_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(labels, dict):
        raise SampleSetError(f'{LABELS_FILE} must map image file names to box lists: {{"0001.jpg": [...]}}')
    images = {PurePosixPath(n).name: n for n in _images(names, under=IMAGES_DIR)}
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise SampleSetError(f"{LABELS_FILE} does not list {unlabelled[:5]}; give [] for an image without defects")
    missing = sorted(set(labels) - set(images))
    if missing:
        raise SampleSetError(f"{LABELS_FILE} lists images not in {IMAGES_DIR}/: {missing[:5]}")
    samples = []
    for file_name, path in sorted(images.items()):
        boxes, classes = [], []
        for box in labels[file_name]:
            try:
                class_name, xyxy = box["class_name"], [float(v) for v in box["box"]]
            except (KeyError, TypeError, ValueError):
                raise SampleSetError(
                    f'{LABELS_FILE}, {file_name}: each box is {{"class_name": ..., "box": [x1, y1, x2, y2]}}, got {box!r}'
                ) from None
            if class_name not in manifest.defect_classes:
                raise SampleSetError(
                    f"{LABELS_FILE}, {file_name}: {class_name!r} is not a defect class of {manifest.name}"
                )
            if len(xyxy) != 4 or not (xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3]):
                raise SampleSetError(f"{LABELS_FILE}, {file_name}: box {xyxy} is not x1 < x2, y1 < y2")
            boxes.append(xyxy)
            classes.append(class_name)
        truth = Truth(
            present=frozenset(classes),
            boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
            box_classes=tuple(classes),
        )
        samples.append(LabelledImage(path, truth))
    return samples


def _segmentation(names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
    masks = {PurePosixPath(n).stem: n for n in names if n.startswith(f"{MASKS_DIR}/") and n.endswith(".png")}
    samples = []
    for path in _images(names, under=IMAGES_DIR):
        stem = PurePosixPath(path).stem
        if stem not in masks:
            raise SampleSetError(f"{path} has no mask {MASKS_DIR}/{stem}.png")
        try:
            with Image.open(io.BytesIO(files.read(masks[stem]))) as image:
                mask = np.asarray(image)
            with Image.open(io.BytesIO(files.read(path))) as image:
                size = image.size
        except OSError as exc:
            raise SampleSetError(f"{path}: {exc}") from exc
        if mask.ndim != 2 or (mask.shape[1], mask.shape[0]) != size:
            raise SampleSetError(f"{masks[stem]} must be a single-channel image of {size[0]}x{size[1]} pixels")
        values = np.unique(mask)
        if values.max() >= len(manifest.classes):
            raise SampleSetError(
                f"{masks[stem]} has class index {values.max()}; {manifest.name} has {len(manifest.classes)}"
            )
        present = frozenset(manifest.classes[v] for v in values) & set(manifest.defect_classes)
        samples.append(LabelledImage(path, Truth(present=present)))
    if not samples and masks:
        raise SampleSetError(f"masks found but no images under {IMAGES_DIR}/")
    return samples


def _images(names: list[str], under: str | None = None) -> Iterator[str]:
    for name in names:
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if under is None or name.startswith(f"{under}/"):
            yield name


def _hidden(name: str) -> bool:
    """Files archivers and desktops add: __MACOSX/, .DS_Store and the like."""
    return any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(name).parts)


# Each task's layout of a labelled sample set (see the module's docstring).
_LAYOUTS = {Task.CLASSIFICATION: _classification, Task.DETECTION: _detection, Task.SEGMENTATION: _segmentation}
