"""write_version on a real filesystem: numbering, never overwriting, concurrency, failures."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from export.store import write_version
from service.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from service.model_store import load_version, version_numbers
from tests.service.manifests import make_manifest


def manifest(description: str = "") -> ModelManifest:
    return make_manifest().model_copy(update={"description": description})


def test_versions_are_numbered_from_one_and_each_manifest_names_its_own(tmp_path: Path) -> None:
    written = [write_version(tmp_path, manifest(f"run {i}"), f"graph {i}".encode()) for i in range(3)]

    assert [v.manifest.version for v in written] == [1, 2, 3]
    assert version_numbers(tmp_path / "weld-classifier") == [1, 2, 3]
    for i, version in enumerate(written):
        assert version.path == tmp_path / "weld-classifier" / str(i + 1)
        assert version.onnx_path.read_bytes() == f"graph {i}".encode()
        assert ModelManifest.read(version.path) == version.manifest
        assert version.manifest.description == f"run {i}"


def test_existing_versions_and_incomplete_numbered_folders_are_never_reused(tmp_path: Path) -> None:
    first = write_version(tmp_path, manifest("first"), b"first graph")
    (tmp_path / "weld-classifier" / "2").mkdir()  # e.g. a version someone is deleting by hand

    third = write_version(tmp_path, manifest("second"), b"second graph")

    assert third.manifest.version == 3
    assert first.onnx_path.read_bytes() == b"first graph"
    assert ModelManifest.read(first.path).description == "first"
    assert not any((tmp_path / "weld-classifier" / "2").iterdir())


def test_concurrent_writers_each_get_their_own_version(tmp_path: Path) -> None:
    def write(i: int) -> int:
        return write_version(tmp_path, manifest(f"writer {i}"), f"graph of writer {i}".encode()).manifest.version

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(write, range(8)))

    assert sorted(versions) == list(range(1, 9))
    model_dir = tmp_path / "weld-classifier"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(str(v) for v in versions)  # no staging left
    for number in versions:
        version = load_version(tmp_path, "weld-classifier", number)
        writer = version.manifest.description.removeprefix("writer ")
        assert version.onnx_path.read_bytes() == f"graph of writer {writer}".encode()


def test_failure_after_staging_began_leaves_no_folder_and_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_version(tmp_path, manifest("kept"), b"kept graph")
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the model file is on disk; the manifest write fails
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left on device"):
        write_version(tmp_path, manifest("lost"), b"lost graph")

    assert [p.name for p in (tmp_path / "weld-classifier").iterdir()] == ["1"]
    assert version_numbers(tmp_path / "weld-classifier") == [1]
    assert sorted(p.name for p in (tmp_path / "weld-classifier" / "1").iterdir()) == [MANIFEST_FILE, MODEL_FILE]


def test_writer_that_loses_the_race_for_a_number_takes_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename
    rival = tmp_path / "weld-classifier" / "1"

    def rival_claims_first(source: Path, target: Path) -> None:
        # Another exporter renames its complete version onto the same number just before us.
        if not rival.exists():
            rival.mkdir()
            (rival / MODEL_FILE).write_bytes(b"rival graph")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rival_claims_first)
    version = write_version(tmp_path, manifest("ours"), b"our graph")

    assert version.manifest.version == 2 and version.onnx_path.read_bytes() == b"our graph"
    assert ModelManifest.read(version.path).version == 2
    assert (rival / MODEL_FILE).read_bytes() == b"rival graph"
