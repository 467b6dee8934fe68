"""The model store on disk: `<root>/<name>/<version>/{model.onnx, manifest.json}`.

Versions are positive integers; the highest complete one is the one served.
Folders whose names start with a dot are writes in progress and are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest


class ModelStoreError(Exception):
    """The store, or a model in it, is missing or inconsistent."""


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    path: Path

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE


def version_numbers(model_dir: Path) -> list[int]:
    """Complete versions of one model, ascending."""
    if not model_dir.is_dir():
        return []
    found = []
    for child in model_dir.iterdir():
        if child.name.isdigit() and (child / MANIFEST_FILE).is_file() and (child / MODEL_FILE).is_file():
            found.append(int(child.name))
    return sorted(found)


def model_names(root: Path) -> list[str]:
    if not root.is_dir():
        raise ModelStoreError(f"model store {root} does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and version_numbers(p))


def load_version(root: Path, name: str, version: int | None = None) -> ModelVersion:
    """Read one version's manifest (the latest when `version` is None) and check it names itself."""
    versions = version_numbers(root / name)
    if not versions:
        raise ModelStoreError(f"no model named {name!r} in {root}")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise ModelStoreError(f"{name} has no version {version} (has {', '.join(map(str, versions))})")
    path = root / name / str(version)
    try:
        manifest = ModelManifest.read(path)
    except ValueError as exc:
        raise ModelStoreError(f"{path / MANIFEST_FILE} is not a valid manifest: {exc}") from exc
    if (manifest.name, manifest.version) != (name, version):
        raise ModelStoreError(f"{path} holds a manifest for {manifest.ref}")
    return ModelVersion(manifest=manifest, path=path)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name` or `name:version` -> (name, version or None)."""
    name, sep, version = ref.partition(":")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ModelStoreError(f"bad version in {ref!r}: expected NAME or NAME:VERSION with VERSION >= 1")
    return name, int(version)
