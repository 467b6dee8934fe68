"""Labelled sample sets for tuning thresholds: a folder, or a zip archive of one.

Each task has its layout, read by its head (`service.tasks`: classification `<class>/<image>`,
detection `images/` with `labels.json`, segmentation `images/` with `masks/`); paths are relative
to the set's root, images in any format the service decodes (.jpg .jpeg .png .bmp .tif .tiff .webp).

A zip archive holds the same layout at its root or inside one top-level folder (as
`zip -r samples.zip samples/` makes it). `python -m export.samples` writes such sets.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from service.manifest import ModelManifest
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


# A task's layout: the set's file names (hidden ones left out), its files, the model -> its labelled images.
ReadLabels = Callable[[list[str], "SampleFiles", ModelManifest], list["LabelledImage"]]


def read_samples(files: SampleFiles, manifest: ModelManifest, read_labels: ReadLabels) -> list[LabelledImage]:
    """The labelled images of a set in the layout of `manifest.task` (`read_labels`: its task head's,
    `HEADS[manifest.task].read_labels` in `service.tasks`), sorted by path."""
    names = [n for n in files.names() if not _hidden(n)]
    samples = read_labels(names, files, manifest)
    if not samples:
        raise SampleSetError(f"no labelled images found; expected the {manifest.task.value} layout")
    return samples


def image_names(names: list[str], under: str | None = None) -> Iterator[str]:
    for name in names:
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if under is None or name.startswith(f"{under}/"):
            yield name


def _hidden(name: str) -> bool:
    """Files archivers and desktops add: __MACOSX/, .DS_Store and the like."""
    return any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(name).parts)
