"""Schema validation of the deployment files, offline.

Kubernetes' own kinds: the OpenAPI schemas that `kubernetes-validate` ships, in their strict form
(an unknown field is an error, as `kubectl apply --validate=strict` makes it). Custom resources
(KEDA, KServe): the `openAPIV3Schema` of their CRDs, vendored in schemas/ (see schemas/README.md),
closed the way the API server's strict field validation closes them; their CEL rules
(`x-kubernetes-validations`) are not evaluated. The prometheus-adapter configuration: a schema
written from the Go types it parses strictly.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

Document = dict[str, Any]

SCHEMAS = Path(__file__).parent / "schemas"
# The oldest Kubernetes still commonly run, and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_v1alpha1_servingruntime.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_v1beta1_inferenceservice.json",
}
ADAPTER_SCHEMA = "prometheus-adapter-config.schema.json"


class InvalidDocument(ValueError):
    """A document its schema refuses, with where and why."""

    def __init__(self, what: str, error: jsonschema.ValidationError) -> None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top)"
        super().__init__(f"{what}: {where}: {error.message}")


def validate_resource(document: Document) -> None:
    """Raises InvalidDocument unless `document` is a valid Kubernetes object of a known kind."""
    key = (document.get("apiVersion"), document.get("kind"))
    what = f"{key[1]}/{document.get('metadata', {}).get('name')}"
    if key in CUSTOM_RESOURCES:
        _raise_first_error(_custom_resource_validator(CUSTOM_RESOURCES[key]), document, what)
        # A custom resource's schema leaves `metadata` open: the API server checks it as ObjectMeta.
        _validate_builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": document.get("metadata", {})}, what)
    else:
        _validate_builtin(document, what)


def _validate_builtin(document: Document, what: str) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise InvalidDocument(f"{what} (Kubernetes {version})", error) from None


def validate_adapter_config(config: Document) -> None:
    """Raises InvalidDocument unless `config` is a configuration prometheus-adapter would load."""
    schema = json.loads((SCHEMAS / ADAPTER_SCHEMA).read_text())
    _raise_first_error(jsonschema.Draft202012Validator(schema), config, "prometheus-adapter config")


def _raise_first_error(validator: jsonschema.protocols.Validator, document: Document, what: str) -> None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        raise InvalidDocument(what, error)


@cache
def _custom_resource_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = _closed(json.loads((SCHEMAS / filename).read_text()))
    return jsonschema.Draft202012Validator(schema)


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every object that lists its properties closed to others.

    The API server prunes (or, with strict field validation, refuses) fields a structural schema
    does not list, unless the object preserves unknown fields; a typo would otherwise pass here.
    """
    closed: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword in ("properties", "patternProperties"):
            closed[keyword] = {name: _closed(subschema) for name, subschema in value.items()}
        elif keyword in ("items", "additionalProperties", "not") and isinstance(value, dict):
            closed[keyword] = _closed(value)
        elif keyword in ("allOf", "anyOf", "oneOf"):
            closed[keyword] = [_closed(subschema) for subschema in value]
        else:
            closed[keyword] = value
    open_by_design = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-embedded-resource")
    if "properties" in schema and "additionalProperties" not in schema and not open_by_design:
        closed["additionalProperties"] = False
    return closed
