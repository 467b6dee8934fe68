"""The tasks the service serves, one folder each, registered here.

`service/tasks/<task>/` holds everything in which a task differs from the others: its answer
(`answer.py`), post-processing (`postprocess.py`), the options only it takes (`options.py`), its answers
as tensors for the Open Inference Protocol (`tensors.py`), its labelled-sample layout and sweep
evidence (`samples.py`), how two versions' answers to a frame agree (`agreement.py`, for shadow
runs), its `scores` heat map where that needs more than a line (`heatmap.py`, detection's grid), and
its head (`__init__.py`): which output decoders its manifests may name, whether its thresholds carry
an NMS IoU, where its post-processing runs, and which heat maps its models give. Nothing outside these
folders asks which task a model has: it asks the model's head.

Adding a fourth task touches: a new folder `service/tasks/<task>/` with those modules; its head in
`HEADS` below; its name in `service.manifest.Task`; and a demo model of it in `export/demo.py`
(so that `make serve` and the tests run it). `tests/service/test_tasks.py` checks that list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from service.errors import InvalidParameters
from service.manifest import ModelManifest, Task
from service.tasks.base import Answer, PredictionOptions, TaskEvidence, TaskHead, TensorSpec, validation_message
from service.tasks.classification import ClassificationHead
from service.tasks.detection import DetectionHead
from service.tasks.segmentation import SegmentationHead

HEADS: dict[Task, TaskHead] = {head.task: head for head in (ClassificationHead(), DetectionHead(), SegmentationHead())}

# Any task's answer, told apart by its `task` field.
PredictionAnswer = Annotated[Union[tuple(head.answer for head in HEADS.values())], Field(discriminator="task")]  # noqa: UP007
ANSWERS: TypeAdapter[Answer] = TypeAdapter(PredictionAnswer)

# Every option a task takes, with the task that takes it.
_OPTION_TASKS: dict[str, str] = {
    name: head.task.value
    for head in HEADS.values()
    for name in head.options.model_fields
    if name not in PredictionOptions.model_fields
}


def head_for(manifest: ModelManifest) -> TaskHead:
    return HEADS[manifest.task]


def parse_options(manifest: ModelManifest, given: Mapping[str, Any], what: str = "parameters") -> PredictionOptions:
    """One request's options for `manifest`, as its task's options model; a mistake answers 422 (`what`
    names where they came from: a query's parameters, a protocol's)."""
    model = HEADS[manifest.task].options
    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        for name in unknown:
            if name in _OPTION_TASKS:
                raise InvalidParameters(f"{name} applies to {_OPTION_TASKS[name]} models only")
        raise InvalidParameters(f"unknown {what} {unknown}; accepted: {', '.join(model.model_fields)}")
    try:
        options = model.model_validate(given)
    except ValidationError as exc:
        raise InvalidParameters(validation_message(exc)) from None
    options.check(manifest)
    options.choose_heatmap(HEADS[manifest.task].heatmap_methods(manifest))
    return options


__all__ = [
    "ANSWERS",
    "HEADS",
    "Answer",
    "PredictionAnswer",
    "PredictionOptions",
    "TaskEvidence",
    "TaskHead",
    "TensorSpec",
    "head_for",
    "parse_options",
]
