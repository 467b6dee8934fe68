"""Adding versions to the model store, atomically and without ever replacing one.

A new version is staged in a hidden `<store>/<name>/.tmp-<random>/` folder (the service skips
dot-folders), flushed to disk, then renamed to the next free version number. Renaming onto an
existing, non-empty folder fails, so of two concurrent exports the second simply takes the next
number; and a failure at any point leaves no folder behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from service.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.model_store import ModelVersion, load_version


def write_version(
    store: Path, manifest: ModelManifest, onnx_model: bytes, files: Mapping[str, bytes] | None = None
) -> ModelVersion:
    """Store `onnx_model` as the next version of `manifest.name`, with `files` (name -> content) beside it.

    The manifest's own `version` is ignored: the version is the number this write claims.
    """
    model_dir = store / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".tmp-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        _write_durably(staging / MODEL_FILE, onnx_model)
        for name, content in (files or {}).items():
            _write_durably(staging / name, content)
        while True:
            version = _next_version(model_dir)
            numbered = manifest.model_copy(update={"version": version})
            _write_durably(staging / MANIFEST_FILE, numbered.to_json().encode())
            _fsync_dir(staging)
            try:
                os.rename(staging, model_dir / str(version))
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # a concurrent export claimed this number first
                raise
            _fsync_dir(model_dir)
            return load_version(store, manifest.name, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _next_version(model_dir: Path) -> int:
    # Every numbered folder counts, complete or not, so a rename never lands on one.
    taken = [int(child.name) for child in model_dir.iterdir() if child.name.isdigit()]
    return max(taken, default=0) + 1


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
