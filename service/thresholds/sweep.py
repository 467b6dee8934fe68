"""Choosing per-class thresholds from labelled samples: one run of the model, then a sweep.

The model runs once per labelled image with every threshold at 0, so that every score
comes back; a class is flagged at threshold t when its score reaches t (`score >= t`, as
in serving). What a positive is, per task:

- classification: an image labelled with the class. The class's score on an image is its
  probability; an image is a true positive of the class when it is labelled with it and the
  score reaches the threshold.
- detection: a labelled box of the class. A detection at or above the threshold is a true
  positive when it overlaps a labelled box of its class with IoU >= 0.5 that no better-scored
  detection took already (VOC matching); otherwise a false positive. A labelled box that no
  such detection took is a false negative.
- segmentation: an image whose label mask contains the class (an image-level decision: does
  the part have this defect). The class's score on an image is its highest pixel probability
  among the pixels where it is the most probable class; an image where it wins no pixel
  never flags it.

Raising a threshold only removes flagged candidates, and a detection's match depends only
on better-scored ones, so the counts at every threshold follow from that one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service.manifest import ModelManifest
from service.thresholds.evaluation import confusion_matrix, match_detections
from service.thresholds.report import (
    ClassSweep,
    Confusion,
    LabelledBox,
    Proposal,
    ProposedPoint,
    ReviewBand,
    SampleTruth,
    SweepCurve,
    SweepPoint,
    SweepReport,
    SweptSample,
)

if TYPE_CHECKING:
    from service.tasks import TaskEvidence

MATCH_IOU = 0.5
NONE_LABEL = "none"  # the predicted label of an image no class flags, for models without a background class

Basis = Literal["target_recall", "max_f1", "unchanged"]


@dataclass(frozen=True, eq=False)
class Truth:
    """What one labelled image shows.

    `label`: classification, the image's class. `boxes` (m, 4) xyxy in original-image pixels
    with `box_classes`: detection. `present`: the defect classes it contains (every task).
    """

    present: frozenset[str]
    label: str | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    box_classes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ClassEvidence:
    """One class's scored candidates over a sample set.

    `scores[i]` is candidate i's score (-inf: never flagged), `hits[i]` whether it is a true
    positive when flagged, `positives` how many labelled positives there are, flagged or not.
    Candidates are images (classification, segmentation) or detections (detection).
    """

    scores: np.ndarray
    hits: np.ndarray
    positives: int


@dataclass(frozen=True, eq=False)
class Curve:
    """Counts of one class at each threshold of a grid."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        """TP / (TP + FP); NaN where nothing is flagged."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        """TP / (TP + FN); NaN without labelled positives."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.tp / (self.tp + self.fn)

    @property
    def f1(self) -> np.ndarray:
        """2TP / (2TP + FP + FN): the harmonic mean of precision and recall, 0 when TP is 0."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2 * self.tp / (2 * self.tp + self.fp + self.fn)


@dataclass(frozen=True)
class Choice:
    """The threshold proposed for one class, and why."""

    threshold: float
    basis: Basis
    target_recall: float | None = None
    target_met: bool | None = None


def threshold_grid(step: float = 0.01) -> np.ndarray:
    """0 to 1 inclusive by `step`, rounded so that the values print as written (0.07, not 0.07000000000000001)."""
    if not 0.0 < step <= 0.5:
        raise ValueError(f"step must lie in (0, 0.5], got {step}")
    count = int(round(1.0 / step))
    grid = np.round(np.arange(count + 1) * step, 10)
    return grid if grid[-1] >= 1.0 else np.append(grid, 1.0)


def image_evidence(truth: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> dict[str, ClassEvidence]:
    """Image-level evidence: `truth` (n, k) bool (image i shows class j), `scores` (n, k) in `classes` order."""
    truth = np.asarray(truth, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    return {name: ClassEvidence(scores[:, j], truth[:, j], int(truth[:, j].sum())) for j, name in enumerate(classes)}


def detection_evidence(
    truths: Sequence[tuple[np.ndarray, Sequence[str]]],
    detections: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]],
    classes: Sequence[str],
    iou_threshold: float = MATCH_IOU,
) -> dict[str, ClassEvidence]:
    """Box-level evidence. Per image: truth (boxes (m, 4), class names), detections (boxes (n, 4),
    scores (n,), class names), all xyxy in the same pixels; detections from a run at threshold 0."""
    if len(truths) != len(detections):
        raise ValueError(f"{len(truths)} labelled images but {len(detections)} predicted ones")
    evidence = {}
    for name in classes:
        scores, hits, positives = [], [], 0
        for (truth_boxes, truth_classes), (boxes, confidence, predicted) in zip(truths, detections, strict=True):
            theirs = np.asarray(truth_boxes, dtype=np.float64).reshape(-1, 4)[np.asarray(truth_classes) == name]
            mine = np.asarray(predicted) == name
            mine_scores = np.asarray(confidence, dtype=np.float64).reshape(-1)[mine]
            scores.append(mine_scores)
            mine_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[mine]
            hits.append(match_detections(mine_boxes, mine_scores, theirs, iou_threshold))
            positives += len(theirs)
        evidence[name] = ClassEvidence(np.concatenate(scores), np.concatenate(hits), positives)
    return evidence


def counts(evidence: ClassEvidence, thresholds: np.ndarray) -> Curve:
    """TP, FP and FN at each threshold: a candidate is flagged when its score >= the threshold."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(evidence.scores, kind="stable")
    scores = evidence.scores[order]
    hits_below = np.concatenate([[0], np.cumsum(evidence.hits[order])])
    below = np.searchsorted(scores, thresholds, side="left")  # candidates scoring under each threshold
    tp = hits_below[-1] - hits_below[below]
    fp = (len(scores) - below) - tp
    return Curve(thresholds, tp, fp, evidence.positives - tp)


def choose_threshold(curve: Curve, target_recall: float | None = None) -> Choice | None:
    """The proposal for one class; None without labelled positives (nothing to measure recall on).

    With a target recall: the highest threshold whose recall meets it (the fewest false alarms
    that still catch enough); where none does, the highest threshold with the best recall there
    is, marked as not met. Otherwise the threshold with the highest F1; where several tie, the
    middle one, since the samples do not tell them apart and the middle leaves most margin.
    """
    if curve.tp[0] + curve.fn[0] == 0:
        return None
    recall = curve.recall
    if target_recall is not None:
        meets = np.flatnonzero(recall >= target_recall - 1e-12)
        met = bool(meets.size)
        index = int(meets[-1]) if met else int(np.flatnonzero(recall == recall.max())[-1])
        return Choice(float(curve.thresholds[index]), "target_recall", target_recall, met)
    f1 = curve.f1
    best = np.flatnonzero(f1 == np.nanmax(f1))
    return Choice(float(curve.thresholds[best[len(best) // 2]]), "max_f1")


@dataclass(frozen=True)
class Band:
    """A class's review band, from its review threshold up to (not including) its reject threshold, and
    what it does on the samples: candidates it sends to review, positives it still lets through."""

    review_threshold: float
    reject_threshold: float
    reviewed: int  # candidates scored in the band (images; detections for a detector)
    missed: int  # labelled positives below the review threshold: neither rejected nor reviewed
    images: int
    positives: int
    max_miss_rate: float | None
    max_review_rate: float | None

    @property
    def miss_rate(self) -> float | None:
        return self.missed / self.positives if self.positives else None

    @property
    def review_rate(self) -> float:
        return self.reviewed / self.images if self.images else 0.0

    @property
    def miss_target_met(self) -> bool | None:
        if self.max_miss_rate is None:
            return None
        return (self.miss_rate or 0.0) <= self.max_miss_rate + 1e-12

    @property
    def review_target_met(self) -> bool | None:
        return None if self.max_review_rate is None else self.review_rate <= self.max_review_rate + 1e-12


def choose_band(
    evidence: ClassEvidence,
    reject: float,
    images: int,
    grid: np.ndarray,
    max_miss_rate: float | None,
    max_review_rate: float | None,
) -> Band:
    """The review threshold for a class whose reject threshold is `reject`, from two targets: the share
    of its labelled positives that may escape (neither rejected nor reviewed) and the share of parts
    the line can staff to review. With a miss target: the highest review threshold that meets it (the
    fewest reviews that still catch enough); without, the lowest that the review target allows (the
    fewest escapes the staff can afford). Where the miss target cannot be met, the lowest threshold."""
    lows = np.append(grid[grid <= reject], reject)
    at = counts(evidence, lows)
    flagged_at_reject = int(at.tp[-1] + at.fp[-1])
    reviewed = (at.tp + at.fp) - flagged_at_reject
    missed = at.fn
    if max_miss_rate is not None:
        meets = np.flatnonzero(missed <= max_miss_rate * evidence.positives + 1e-9)
        index = int(meets[-1]) if meets.size else 0
    else:
        assert max_review_rate is not None
        meets = np.flatnonzero(reviewed <= max_review_rate * images + 1e-9)
        index = int(meets[0]) if meets.size else len(lows) - 1
    return Band(
        review_threshold=float(lows[index]),
        reject_threshold=float(reject),
        reviewed=int(reviewed[index]),
        missed=int(missed[index]),
        images=images,
        positives=evidence.positives,
        max_miss_rate=max_miss_rate,
        max_review_rate=max_review_rate,
    )


def classification_labels(
    scores: np.ndarray, classes: Sequence[str], background_class: str | None, thresholds: Mapping[str, float]
) -> list[str]:
    """Each image's decided label at a threshold set: the best-scored class among those reaching
    their threshold, else the background class (or `none` without one)."""
    scores = np.asarray(scores, dtype=np.float64)
    limits = np.array([thresholds.get(name, np.inf) for name in classes])
    flagged = np.where(scores >= limits, scores, -np.inf)
    best = flagged.argmax(axis=1)
    nothing = background_class if background_class is not None else NONE_LABEL
    return [classes[k] if np.isfinite(flagged[i, k]) else nothing for i, k in enumerate(best)]


def confusion_at(
    true_labels: Sequence[str],
    scores: np.ndarray,
    classes: Sequence[str],
    background_class: str | None,
    thresholds: Mapping[str, float],
) -> tuple[list[str], np.ndarray]:
    """Classification confusion at a threshold set: (labels, counts[true, decided])."""
    labels = list(classes) if background_class is not None else [*classes, NONE_LABEL]
    decided = classification_labels(scores, classes, background_class, thresholds)
    index = {name: i for i, name in enumerate(labels)}
    matrix = confusion_matrix(
        np.array([index[name] for name in true_labels]), np.array([index[name] for name in decided]), len(labels)
    )
    return labels, matrix


def presence(truths: list[Truth], classes: Sequence[str]) -> np.ndarray:
    """(images, classes) bool: which classes each image's labels contain."""
    truth = np.array([[name in t.present for name in classes] for t in truths], dtype=bool)
    return truth.reshape(len(truths), len(classes))


class SweepTally:
    """Gathers, image by image, each labelled image's truth and the model's answer at threshold 0
    (the service's prediction JSON), and turns them into evidence and a report."""

    def __init__(self, manifest: ModelManifest, scorer: TaskEvidence) -> None:
        """`scorer`: the task head's, `HEADS[manifest.task].evidence(manifest)` (`service.tasks`)."""
        self.manifest = manifest
        self.classes = list(manifest.defect_classes)
        self._truths: list[Truth] = []
        self._scorer = scorer
        self.samples: list[tuple[str, Truth, Any]] = []  # (name, truth, answer), in the order added

    def add(self, truth: Truth, answer: Any, name: str = "") -> None:
        """One labelled image's truth and the model's answer to it at threshold 0."""
        self._scorer.add(truth, answer)
        self._truths.append(truth)
        self.samples.append((name, truth, answer))

    def evidence(self) -> dict[str, ClassEvidence]:
        return self._scorer.evidence(self._truths)

    def report(
        self,
        current: Mapping[str, float],
        revision: int,
        nms_iou: float | None,
        targets: Mapping[str, float] | None = None,
        step: float = 0.01,
        max_miss_rates: Mapping[str, float] | None = None,
        max_review_rates: Mapping[str, float] | None = None,
    ) -> TuningReport:
        """Sweep every defect class, propose a set (classes without positives keep `current`), and
        count outcomes at both the current and the proposed set. A class with a miss or a review target
        also gets a review band below its proposed threshold (`choose_band`)."""
        targets = dict(targets or {})
        max_miss_rates, max_review_rates = dict(max_miss_rates or {}), dict(max_review_rates or {})
        unknown = sorted((set(targets) | set(max_miss_rates) | set(max_review_rates)) - set(self.classes))
        if unknown:
            raise ValueError(
                f"targets name unknown defect classes {unknown}; {self.manifest.name}'s are {self.classes}"
            )
        if not self._truths:
            raise ValueError("no labelled images")
        grid = threshold_grid(step)
        classes = {}
        for name, evidence in self.evidence().items():
            curve = counts(evidence, grid)
            choice = choose_threshold(curve, targets.get(name)) or Choice(float(current[name]), "unchanged")
            band = None
            if name in max_miss_rates or name in max_review_rates:
                band = choose_band(
                    evidence,
                    choice.threshold,
                    len(self._truths),
                    grid,
                    max_miss_rates.get(name),
                    max_review_rates.get(name),
                )
            classes[name] = ClassTuning(
                positives=evidence.positives,
                curve=curve,
                choice=choice,
                at_proposal=counts(evidence, np.array([choice.threshold])),
                at_current=counts(evidence, np.array([float(current[name])])),
                band=band,
            )
        proposed = {name: tuning.choice.threshold for name, tuning in classes.items()}
        confusion = self._scorer.confusion(self._truths, proposed)
        return TuningReport(
            manifest=self.manifest,
            images=len(self._truths),
            positive=self._scorer.positive,
            revision=revision,
            current=dict(current),
            nms_iou=nms_iou,
            classes=classes,
            confusion=confusion,
        )


@dataclass(frozen=True, eq=False)
class ClassTuning:
    positives: int
    curve: Curve
    choice: Choice
    at_proposal: Curve  # one threshold: the proposed one
    at_current: Curve  # one threshold: the active one
    band: Band | None = None  # with a miss or review target: the review band below the proposal


@dataclass(frozen=True, eq=False)
class TuningReport:
    manifest: ModelManifest
    images: int
    positive: str  # what one positive is, for this task
    revision: int  # the active revision when the sweep ran: the base of the proposal
    current: dict[str, float]
    nms_iou: float | None  # the NMS IoU the detections were made with
    classes: dict[str, ClassTuning]
    confusion: tuple[list[str], np.ndarray] | None  # classification: (labels, counts[true, decided])

    @property
    def proposal(self) -> dict[str, float]:
        return {name: tuning.choice.threshold for name, tuning in self.classes.items()}

    def to_report(self) -> SweepReport:
        """The report as the sweep endpoint answers it (and `python -m service.thresholds.tune --json` writes it).
        `proposal` is a ready PUT body but for `author` and `reason`."""
        manifest = self.manifest
        confusion = None
        if self.confusion is not None:
            labels, matrix = self.confusion
            confusion = Confusion(labels=labels, matrix=matrix.tolist())
        return SweepReport(
            model=manifest.name,
            model_version=manifest.version,
            task=manifest.task.value,
            images=self.images,
            positive=self.positive,
            thresholds_revision=self.revision,
            nms_iou=self.nms_iou,
            classes={name: _class_sweep(tuning, self.current[name]) for name, tuning in self.classes.items()},
            proposal=Proposal(
                thresholds=self.proposal,
                review_thresholds={
                    name: tuning.band.review_threshold for name, tuning in self.classes.items() if tuning.band
                },
                expected_revision=self.revision,
            ),
            confusion=confusion,
        )


def swept_samples(tally: SweepTally) -> list[SweptSample]:
    """Each image of a sweep as the report lists it with `samples=true`."""
    return [
        SweptSample(
            name=name,
            truth=SampleTruth(
                label=truth.label,
                present=sorted(truth.present),
                boxes=[
                    LabelledBox(class_name=c, box=dict(zip(("x1", "y1", "x2", "y2"), map(float, box), strict=True)))
                    for box, c in zip(np.asarray(truth.boxes).reshape(-1, 4), truth.box_classes, strict=True)
                ],
            ),
            answer=answer.model_dump(mode="json") if hasattr(answer, "model_dump") else dict(answer),
        )
        for name, truth, answer in tally.samples
    ]


def _class_sweep(tuning: ClassTuning, current: float) -> ClassSweep:
    choice, curve = tuning.choice, tuning.curve
    return ClassSweep(
        positives=tuning.positives,
        proposed=ProposedPoint(
            threshold=choice.threshold,
            basis=choice.basis,
            target_recall=choice.target_recall,
            target_met=choice.target_met,
            **_point(tuning.at_proposal),
        ),
        current=SweepPoint(threshold=current, **_point(tuning.at_current)),
        curve=SweepCurve(
            thresholds=curve.thresholds.tolist(),
            precision=_floats(curve.precision),
            recall=_floats(curve.recall),
            f1=_floats(curve.f1),
            tp=curve.tp.tolist(),
            fp=curve.fp.tolist(),
            fn=curve.fn.tolist(),
        ),
        band=None if tuning.band is None else ReviewBand.model_validate(tuning.band),
    )


def _point(curve: Curve) -> dict[str, Any]:
    return {
        "precision": _floats(curve.precision)[0],
        "recall": _floats(curve.recall)[0],
        "f1": _floats(curve.f1)[0],
        "tp": int(curve.tp[0]),
        "fp": int(curve.fp[0]),
        "fn": int(curve.fn[0]),
    }


def _floats(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: undefined ratios become null."""
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


class Progress:
    """A line every `every_s` seconds on long sweeps: done/total, rate, time left."""

    def __init__(self, total: int, write: Callable[[str], None], every_s: float = 2.0) -> None:
        self.total = total
        self.done = 0
        self._write = write
        self._every_s = every_s
        self._started = self._last = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last >= self._every_s or self.done == self.total:
            self._last = now
            elapsed = max(now - self._started, 1e-9)
            rate = self.done / elapsed
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            self._write(
                f"{self.done}/{self.total} images, {rate:.1f} img/s, {elapsed:.0f} s elapsed, ~{left:.0f} s left"
            )
