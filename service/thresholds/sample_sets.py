"""Labelled sample sets kept on the server, in `INSPECTION_SAMPLE_SETS_DIR`: each a zip archive
(`NAME.zip`, or `NAME.ZIP`) or a folder (`NAME/`) in the layout `python -m export.samples` writes. A
sweep can name one instead of uploading it (`?set=NAME`), and the QA console shows its frames from
`GET /v1/sample-sets/{name}/files/{path}`. Names are plain (letters, digits, `.`, `_`, `-`): nothing
outside the folder is ever read.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from service.errors import NotFound, PayloadTooLarge
from service.thresholds.samples import FolderFiles, SampleFiles, SampleSetError, ZipFiles

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class SampleSetInfo:
    name: str
    kind: str  # "zip" or "folder"
    size_bytes: int


class SampleSets:
    def __init__(self, root: Path, max_bytes: int, max_files: int) -> None:
        self.root = root
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._lock = threading.Lock()
        # The last set opened, with its files' names: the console reads its frames one request at a time.
        self._open: tuple[str, float, SampleFiles, frozenset[str]] | None = None

    def list(self) -> list[SampleSetInfo]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            name = _set_name(path)
            if name is not None and path.is_file():
                found.append(SampleSetInfo(name, "zip", path.stat().st_size))
            elif name is not None:
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                found.append(SampleSetInfo(name, "folder", size))
        return found

    def open(self, name: str) -> SampleFiles:
        """The set's files; NotFound when there is no such set, PayloadTooLarge over the sweep's limits."""
        return self._opened(name)[0]

    def _opened(self, name: str) -> tuple[SampleFiles, frozenset[str]]:
        path = self._path(name)
        stamp = path.stat().st_mtime
        with self._lock:
            if self._open is not None and self._open[:2] == (name, stamp):
                return self._open[2], self._open[3]
        if path.is_dir():
            files: SampleFiles = FolderFiles(path)
        else:
            size = path.stat().st_size
            if size > self._max_bytes:
                raise PayloadTooLarge(
                    f"sample set {name} is {size} bytes; INSPECTION_MAX_SWEEP_BYTES is {self._max_bytes}"
                )
            try:
                files = ZipFiles(path.read_bytes(), self._max_bytes, self._max_files)
            except SampleSetError as exc:
                raise PayloadTooLarge(f"sample set {name}: {exc}") from None
        names = frozenset(files.names())
        with self._lock:
            self._open = (name, stamp, files, names)
        return files, names

    def read(self, name: str, file: str) -> bytes:
        """One file of a set, by its path in the set (as a sweep's report names it)."""
        files, names = self._opened(name)
        if file not in names:
            raise NotFound(f"sample set {name} has no file {file!r}")
        return files.read(file)

    def _path(self, name: str) -> Path:
        """The set's archive or folder, as `list` finds it (an archive first, with both)."""
        if _NAME.fullmatch(name) and self.root.is_dir():
            if _set_name(self.root / f"{name}.zip") == name:  # the usual name, without a listing
                return self.root / f"{name}.zip"
            found = [path for path in self.root.iterdir() if _set_name(path) == name]
            if found:
                return min(found, key=lambda path: (path.is_dir(), path.name))
        known = ", ".join(s.name for s in self.list()) or "none"
        raise NotFound(f"no sample set named {name!r} in {self.root}; there are: {known}")


def _set_name(path: Path) -> str | None:
    """The name of the sample set at `path`: a zip archive (`NAME.zip`, its suffix in any case) or a
    folder (`NAME/`); None for anything else."""
    if path.is_file() and path.suffix.lower() == ".zip":
        name = path.stem
    elif path.is_dir():
        name = path.name
    else:
        return None
    return name if _NAME.fullmatch(name) else None
