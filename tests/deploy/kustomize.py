"""The part of `kustomize build` that deploy/kubernetes uses, so that the overlays render without a binary.

Resources (files and directories), `patches` given as strategic-merge files (one of which may
delete its resource with `$patch: delete`), `images` and `namespace`. Anything else in a
kustomization, any other patch directive or a list whose merge semantics are not written down
below is refused rather than rendered differently from kustomize; a patch that matches no
resource is refused as kustomize refuses it.
`test_renderer_agrees_with_kubectl_kustomize` compares the two wherever kubectl is installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "namespace", "resources", "patches", "images"})
# Lists that a strategic merge patch merges item by item, by this key (their patchMergeKey in the
# Kubernetes API), and lists it replaces whole (no merge key). A patch touching any other list is refused.
MERGED_LISTS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name"}
REPLACED_LISTS = frozenset({"tolerations", "metrics", "policies", "args", "command"})


class UnsupportedKustomization(ValueError):
    """The kustomization uses something this renderer does not do, or that kustomize would refuse."""


def load_documents(path: Path) -> list[Resource]:
    """The YAML documents of a file, empty ones left out."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(directory: Path) -> list[Resource]:
    """The resources that `kustomize build directory` prints, in the order of their kustomization."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise UnsupportedKustomization(f"{directory}: {sorted(unsupported)} not supported by this renderer")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += build(path) if path.is_dir() else load_documents(path)
    _refuse_duplicates(resources, directory)
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only `patches: - path: FILE` is supported, not {patch_entry}")
        for patch in load_documents(directory / patch_entry["path"]):
            index = _target_of(patch, resources, directory / patch_entry["path"])
            if patch.get("$patch") == "delete":
                del resources[index]
            else:
                resources[index] = strategic_merge(resources[index], patch)
    for image in kustomization.get("images", []):
        for resource in resources:
            _set_image(resource, image)
    if "namespace" in kustomization:
        for resource in resources:
            resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return resources


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """`patch` merged into `base` as a strategic merge patch does, for the lists named above."""
    if isinstance(base, dict) and isinstance(patch, dict):
        directives = [key for key in patch if key.startswith("$")]
        if directives:
            raise UnsupportedKustomization(f"patch directives {directives} are not supported")
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list):
        if field in MERGED_LISTS:
            return _merge_by_key(base, patch, MERGED_LISTS[field])
        if field not in REPLACED_LISTS:
            raise UnsupportedKustomization(f"how a patch merges the list `{field}` is not written down here")
    return copy.deepcopy(patch)


def _merge_by_key(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    """The patch's items (merged into the base's of the same key) in the patch's order, then the base's
    other items in theirs: the order kustomize prints."""
    by_key = {item.get(key): item for item in base}
    patched = [
        strategic_merge(by_key[item.get(key)], item) if item.get(key) in by_key else copy.deepcopy(item)
        for item in patch
    ]
    keys = {item.get(key) for item in patch}
    return patched + [copy.deepcopy(item) for item in base if item.get(key) not in keys]


def _identity(resource: Resource) -> tuple[str, str, str]:
    group = resource["apiVersion"].rpartition("/")[0]
    return group, resource["kind"], resource["metadata"]["name"]


def _refuse_duplicates(resources: list[Resource], directory: Path) -> None:
    seen = [_identity(resource) for resource in resources]
    duplicates = {identity for identity in seen if seen.count(identity) > 1}
    if duplicates:
        raise UnsupportedKustomization(f"{directory}: resources listed twice: {sorted(duplicates)}")


def _target_of(patch: Resource, resources: list[Resource], path: Path) -> int:
    wanted = _identity(patch)
    for index, resource in enumerate(resources):
        if _identity(resource) == wanted:
            return index
    raise UnsupportedKustomization(f"{path}: no resource matches the patch's {wanted}")


_IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$")


def _set_image(resource: Resource, image: dict[str, str]) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        match = _IMAGE.match(container.get("image", ""))
        if match is None or match["name"] != image["name"]:
            continue
        name = image.get("newName", match["name"])
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{name}:{image['newTag']}"
        else:
            container["image"] = name + (f":{match['tag']}" if match["tag"] else "")
