"""What every task shares, and what a task is.

A prediction's answer is typed from the model to the wire: `Answer` holds what every task answers (the
model and version, the frame's size, the decision, the defects, the thresholds revision), and each
task's answer adds its own fields under it, told apart by `task`. The answer's JSON dump is what
`/v1` sends; the metrics, the sweeps and the protocols read its fields. Scores keep their full
precision in the answer and are rounded on the wire (`Score`, `Pixel`).

`PredictionOptions` are one request's options, the same model whatever the protocol (`/v1`'s query,
the Open Inference Protocol's `parameters`): the options every task takes are here, a task adds its
own in a subclass. A `TaskHead` is everything in which the tasks differ; `service.tasks` registers one
per task.

A shadow run answers one frame with the active version and with a candidate; `ClassAgreement` is how
the two answers compare for one defect class, in terms every task shares (the decision, the label, an
IoU), so that what reads the comparison need not know which task made it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PrivateAttr, ValidationError, model_validator

from service.errors import InvalidParameters
from service.heatmaps import AUTO, Heatmap, HeatmapMethod
from service.manifest import ModelManifest, OutputDecoder, Task
from service.pipeline.geometry import Geometry
from service.tasks.decision import Decision, decide
from service.tensors import Tensor
from service.thresholds.rules import ThresholdSet, check_review, parse_class_values, unknown_classes
from service.thresholds.samples import LabelledImage, SampleFiles
from service.thresholds.sweep import ClassEvidence, Truth

# Decimals kept on the wire: probabilities stay comparable to thresholds set to 4 decimals; boxes
# need no more than a hundredth of a pixel.
SCORE_DIGITS = 6
PIXEL_DIGITS = 2

Score = Annotated[float, PlainSerializer(lambda value: round(value, SCORE_DIGITS), when_used="json")]
Pixel = Annotated[float, PlainSerializer(lambda value: round(value, PIXEL_DIGITS), when_used="json")]


class ImageSize(BaseModel):
    width: int = Field(description="Original width after EXIF orientation.", examples=[640])
    height: int = Field(description="Original height after EXIF orientation.", examples=[480])


class Answer(BaseModel):
    """What every task answers; a task's answer adds its fields after these."""

    model: str = Field(examples=["weld-classifier"])
    model_version: int = Field(examples=[1])
    task: str
    image: ImageSize
    thresholds_revision: int = Field(description="The thresholds revision this answer used.")
    decision: Decision = Field(
        description="reject when any defect class crossed its threshold; else review when a class is in its review "
        "band (only where review thresholds are set); else accept."
    )
    defects: list[str] = Field(description="Defect classes that crossed their threshold.", examples=[["crack"]])
    review: list[str] | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Defect classes in their review band (at or above their review threshold, below their reject "
        "threshold). Only in answers of models with review thresholds.",
        examples=[["porosity"]],
    )
    heatmap: Heatmap | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Where the evidence for one defect class lies on the frame; only in answers that ask (`heatmap`).",
    )


def answer_header(
    manifest: ModelManifest,
    geometry: Geometry,
    thresholds: ThresholdSet,
    defects: list[str],
    review: list[str] | None = None,
) -> dict[str, Any]:
    """The fields of `Answer` for one image, to build a task's answer from (`model_construct`: the
    post-processing's own values need no validation). `review`: the classes in their review band, None
    where the request has no review thresholds (the answer then has no `review` field)."""
    return {
        "model": manifest.name,
        "model_version": manifest.version,
        "task": manifest.task.value,
        "image": ImageSize.model_construct(width=geometry.original_width, height=geometry.original_height),
        "thresholds_revision": thresholds.revision,
        "decision": decide(defects, review),
        "defects": defects,
        "review": review,
    }


class PredictionOptions(BaseModel):
    """One request's options, as a client sends them (a query's strings, a protocol's typed values),
    checked against its model by `check` (`service.tasks.parse_options` does both)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: str | float | None = Field(
        default=None,
        description="Threshold overrides for this request: per class (`crack:0.3,porosity:0.6` or `crack=0.3`), "
        "or one value for every defect class (`0.25`).",
        examples=["crack:0.3,porosity:0.6"],
    )
    review_thresholds: str | float | None = Field(
        default=None,
        description="Review threshold overrides for this request (`crack:0.15`, or one value for every defect class): "
        "a class at or above it, and below its reject threshold, sends the part to review.",
        examples=["crack:0.15"],
    )
    classes: str | None = Field(default=None, description="Report only these defect classes.", examples=["crack"])
    heatmap: str | None = Field(
        default=None,
        description="Add a heat map of the evidence for one defect class to the answer: `auto` (the model's first "
        "method), `cam` (class activation, classifiers exported with it), `occlusion` (classifiers; 49 more model "
        "runs) or `scores` (segmenters' probabilities, detectors' grid scores). Off by default.",
        examples=["auto"],
    )
    heatmap_class: str | None = Field(
        default=None,
        description="The defect class the heat map is of (implies `heatmap=auto` when that is not given); by "
        "default the defect class scored highest.",
        examples=["crack"],
    )

    # What the values mean for the model, set by `check` and `choose_heatmap`.
    _overrides: dict[str, float] = PrivateAttr(default_factory=dict)
    _review_overrides: dict[str, float] = PrivateAttr(default_factory=dict)
    _class_filter: frozenset[str] | None = PrivateAttr(default=None)
    _heatmap: HeatmapMethod | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            flags = sorted(name for name, value in values.items() if isinstance(value, bool))
            if flags:
                raise ValueError(f"{', '.join(flags)} must not be true or false")
        return values

    def check(self, manifest: ModelManifest) -> None:
        """Checks the values against the model (422 naming the mistake) and keeps what they mean."""
        defect_classes = manifest.defect_classes
        overrides = _overrides_of(self.thresholds, defect_classes, "thresholds")
        review_overrides = _overrides_of(self.review_thresholds, defect_classes, "review_thresholds")
        class_filter = None
        if self.classes:
            class_filter = frozenset(c.strip() for c in self.classes.split(",") if c.strip())
            try:
                unknown_classes(class_filter, defect_classes, "classes")
            except ValueError as exc:
                raise InvalidParameters(str(exc)) from None
        if self.heatmap_class is not None and self.heatmap_class not in defect_classes:
            raise InvalidParameters(
                f"heatmap_class {self.heatmap_class!r} is not a defect class of {manifest.name} "
                f"({', '.join(defect_classes)})"
            )
        self._overrides, self._review_overrides, self._class_filter = overrides, review_overrides, class_filter

    def choose_heatmap(self, methods: Sequence[HeatmapMethod]) -> None:
        """Resolve the heat map asked for among the model's `methods` (its head's, the first for `auto`)."""
        asked = self.heatmap or (AUTO if self.heatmap_class is not None else None)
        if asked is None:
            return
        if not methods:
            raise InvalidParameters("this model has no heat map: its graph gives boxes only, no grid of scores")
        offered = [AUTO, *methods]
        if asked not in offered:
            raise InvalidParameters(f"heatmap must be one of {', '.join(offered)} for this model, not {asked!r}")
        self._heatmap = methods[0] if asked == AUTO else HeatmapMethod(asked)

    @property
    def class_filter(self) -> frozenset[str] | None:
        """The defect classes this request reports, or None for all of them."""
        return self._class_filter

    @property
    def heatmap_method(self) -> HeatmapMethod | None:
        """The heat map this request asks for, or None."""
        return self._heatmap

    def heatmap_candidates(self, manifest: ModelManifest) -> list[str]:
        """The classes the heat map may be of: the one asked for, else the reported defect classes."""
        if self.heatmap_class is not None:
            return [self.heatmap_class]
        return [c for c in manifest.defect_classes if self._class_filter is None or c in self._class_filter]

    def thresholds_for(self, active: ThresholdSet) -> ThresholdSet:
        """The set this request uses: the active one with its overrides on top. A reject threshold the
        request lowers below the class's active review threshold leaves that class no band; a review
        threshold the request sets above its class's reject threshold answers 422."""
        if not self._overrides and not self._review_overrides:
            return active
        values = {**active.values, **self._overrides}
        review = {name: min(low, values[name]) for name, low in active.review.items()}
        if self._review_overrides:
            try:
                check_review(self._review_overrides, values)
            except ValueError as exc:
                raise InvalidParameters(str(exc)) from None
            review.update(self._review_overrides)
        return ThresholdSet(revision=active.revision, values=values, nms_iou=active.nms_iou, review=review)


def _overrides_of(given: str | float | None, defect_classes: list[str], what: str) -> dict[str, float]:
    """A request's per-class values (`crack:0.3,porosity:0.6`, or one value for every class)."""
    if given is None or given == "":
        return {}
    text = repr(given) if isinstance(given, float) else given
    try:
        return parse_class_values(text, defect_classes, what)
    except ValueError as exc:
        raise InvalidParameters(str(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line for a client: `field: what is wrong; ...`."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


class TaskEvidence(Protocol):
    """Scores a sweep's answers (predictions at threshold 0) against the labels, image by image."""

    positive: str  # what one positive is, as the sweep's report states it

    def add(self, truth: Truth, answer: Answer) -> None: ...

    def evidence(self, truths: list[Truth]) -> dict[str, ClassEvidence]: ...

    def confusion(self, truths: list[Truth], proposed: Mapping[str, float]) -> tuple[list[str], np.ndarray] | None: ...


@dataclass(frozen=True)
class ClassAgreement:
    """How a candidate's answer compares with the active one's for one defect class.

    `label` is each task's own: classification, both answers have the class as their label or neither
    does; detection, the class's boxes of the two answers match one to one; segmentation, the class's
    masks overlap enough (or are both empty). `iou` is detection's mean IoU of the matched boxes and
    segmentation's mask IoU; None where it means nothing (classification, nothing to compare).
    """

    decision: bool  # both answers have the class among their defects, or neither does
    label: bool  # they agree on what the class is on the frame
    iou: float | None


class TensorSpec(BaseModel):
    """One output of the Open Inference Protocol's model metadata: its name, datatype and shape (-1: varies)."""

    name: str
    datatype: str
    shape: list[int]


def bytes_tensor(name: str, items: list[bytes]) -> Tensor:
    """A BYTES tensor of shape [len(items)]."""
    data = np.empty(len(items), dtype=object)
    data[:] = items
    return Tensor(name, "BYTES", data)


class TaskHead(Protocol):
    task: ClassVar[Task]
    decoders: ClassVar[frozenset[OutputDecoder]]  # the output decoders a manifest of this task may name
    carries_nms: ClassVar[bool]  # whether its thresholds (and manifests) carry an NMS IoU
    # True when post-processing takes tens of microseconds: cheaper on the event loop than a hand-off
    # to a thread, where it would queue behind other requests' decoding.
    on_event_loop: ClassVar[bool]
    options: ClassVar[type[PredictionOptions]]
    answer: ClassVar[type[Answer]]
    score_unit: ClassVar[str]  # what the values of its `scores` heat map are ("" where it has none)

    def postprocess(
        self,
        outputs: list[np.ndarray],
        geometry: Geometry,
        manifest: ModelManifest,
        thresholds: ThresholdSet,
        options: PredictionOptions,
    ) -> Answer:
        """One image's model outputs -> its answer, with the accept/reject decision."""
        ...

    def heatmap_methods(self, manifest: ModelManifest) -> tuple[HeatmapMethod, ...]:
        """The heat maps `manifest`'s model gives, its default first (`service.heatmaps`); () for none."""
        ...

    def score_map(
        self, outputs: list[np.ndarray], manifest: ModelManifest, geometry: Geometry, candidates: list[str]
    ) -> tuple[str, np.ndarray]:
        """One image's outputs -> (the candidate class scored highest, its scores (h, w) on a grid tiling the
        model input): the `scores` heat map, for the tasks that offer it."""
        ...

    def read_labels(self, names: list[str], files: SampleFiles, manifest: ModelManifest) -> list[LabelledImage]:
        """The labelled images of a sample set in this task's layout (`service.thresholds.samples`)."""
        ...

    def evidence(self, manifest: ModelManifest) -> TaskEvidence:
        """A fresh scorer of a sweep's answers for `manifest`."""
        ...

    def output_specs(self, manifest: ModelManifest) -> list[TensorSpec]:
        """The tensors its answers are given as (the Open Inference Protocol's outputs), besides those of
        every task (`decision`, `answer`)."""
        ...

    def output_tensors(self, manifest: ModelManifest, answers: list[Answer | None]) -> list[Tensor]:
        """`answers` (None: an image that failed) as the tensors of `output_specs`, one row per image."""
        ...

    def agreement(self, active: Answer, candidate: Answer, manifest: ModelManifest) -> dict[str, ClassAgreement]:
        """How `candidate` compares with `active` (two versions' answers on one frame), one entry per defect
        class of `manifest`, in its order."""
        ...
