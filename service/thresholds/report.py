"""What a threshold sweep reports: the answer of the sweep endpoint and of `python -m service.thresholds.tune`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SweepPoint(BaseModel):
    threshold: float
    precision: float | None = Field(description="TP / (TP + FP); null when nothing is flagged.")
    recall: float | None = Field(description="TP / (TP + FN); null without labelled positives.")
    f1: float | None
    tp: int
    fp: int
    fn: int


class ProposedPoint(SweepPoint):
    basis: str = Field(
        description="target_recall: the highest threshold meeting the target; max_f1: the best F1; "
        "unchanged: no labelled positives, the active value is kept."
    )
    target_recall: float | None
    target_met: bool | None


class SweepCurve(BaseModel):
    thresholds: list[float]
    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    tp: list[int]
    fp: list[int]
    fn: list[int]


class ReviewBand(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the sweep's Band, its rates and targets included

    review_threshold: float = Field(description="The proposed review threshold: the band's bottom.")
    reject_threshold: float = Field(description="The proposed (reject) threshold: the band's top, not included.")
    reviewed: int = Field(description="Candidates the band sends to review (images; detections for a detector).")
    review_rate: float = Field(description="reviewed / images: the share of parts the line would review.")
    missed: int = Field(description="Labelled positives below the review threshold: neither rejected nor reviewed.")
    miss_rate: float | None = Field(description="missed / positives: what still escapes; null without positives.")
    max_miss_rate: float | None = Field(description="The miss target asked for.")
    max_review_rate: float | None = Field(description="The review target asked for.")
    miss_target_met: bool | None
    review_target_met: bool | None


class ClassSweep(BaseModel):
    positives: int = Field(description="Labelled positives of the class in the samples.")
    proposed: ProposedPoint
    current: SweepPoint = Field(description="The same counts at the active threshold.")
    curve: SweepCurve
    band: ReviewBand | None = Field(
        default=None, description="With a miss or review target (`max_miss_rate`, `max_review_rate`): the review band."
    )


class Proposal(BaseModel):
    thresholds: dict[str, float]
    review_thresholds: dict[str, float] = Field(
        default_factory=dict, description="The review bands proposed, for the classes given a miss or review target."
    )
    expected_revision: int = Field(description="The active revision when the sweep ran.")


class Confusion(BaseModel):
    labels: list[str]
    matrix: list[list[int]] = Field(description="matrix[i][j]: images labelled labels[i], decided labels[j].")


class LabelledBox(BaseModel):
    class_name: str
    box: dict[str, float] = Field(description="x1, y1, x2, y2 in the image's pixels.")


class SampleTruth(BaseModel):
    label: str | None = Field(description="Classification: the image's class.")
    present: list[str] = Field(description="The defect classes the image shows.")
    boxes: list[LabelledBox] = Field(default_factory=list, description="Detection: the labelled boxes.")


class SweptSample(BaseModel):
    name: str = Field(description="The image's path in the sample set.")
    truth: SampleTruth
    answer: dict = Field(
        description="The model's answer with every threshold at 0 (every class's score, every detection, "
        "every segment): the outcome at any thresholds follows from it."
    )


class SweepReport(BaseModel):
    model: str = Field(examples=["weld-classifier"])
    model_version: int
    task: str
    images: int
    positive: str = Field(description="What counts as a positive for this task.")
    thresholds_revision: int = Field(description="The active revision when the sweep ran.")
    nms_iou: float | None = Field(description="Detectors: the NMS IoU the detections were made with.")
    classes: dict[str, ClassSweep]
    proposal: Proposal = Field(description="With author and reason added, a ready PUT body.")
    confusion: Confusion | None = Field(default=None, description="Classification: at the proposed thresholds.")
    samples: list[SweptSample] | None = Field(
        default=None, description="With `samples=true`: each image's labels and the model's answer, in the set's order."
    )
