"""Shadow runs: a candidate version answers a share of the live frames in the background, and how often
it would have decided differently from the active version is counted.

A run is started by a lifecycle revision (`shadow`; its number names the run) and lasts until another
revision ends it: stopped, the candidate activated (promotion), the model unloaded. In every worker,
`ShadowRun.offer` is handed each frame the active version answered, after its answer is made: the
run takes `share` of them (every 1/share-th frame, so a share is exact), and runs the candidate on the
image the active version already decoded and preprocessed (when both take the same input), in a task
of its own. The active answer has gone before the candidate's is made, and is never changed by it.

Shed first: a frame is not taken while the model is queueing (admission's `busy`: a request admitted
now would take over twice an idle model's time, or requests wait for admission), or while
`max_in_flight` of the run's frames are still running (a slow or stuck candidate cannot pile up
work); a candidate that fails counts as failed, and its error is logged once.

Each compared frame adds to the run's `Tally`: per defect class, agreement on the decision and on
the label (the task's head decides what a label is, and the IoU of boxes or masks), the confusion of
active against candidate decisions, and each side's latency from the prepared image to its answer
(batch, model run, post-processing). The counts go to Prometheus as they are made and to the
database about once a second (each worker its own row), where the report adds them up across workers
and servers. With `keep_frames`, the first disagreeing frames are kept, with both answers
(`service.frames`).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import get_args

from service.errors import UnknownModel
from service.frames import FrameStore, frame_bytes
from service.lifecycle.store import Shadow, VersionStore
from service.metrics import inspection_metrics
from service.pipeline.decode import Frame
from service.pipeline.predictor import Predictor, PreparedImage
from service.tasks import Answer, PredictionOptions, head_for
from service.tasks.base import ClassAgreement
from service.tasks.decision import Decision

log = logging.getLogger(__name__)

SOURCE = "shadow"  # the kept frames' source
DECISIONS: tuple[str, ...] = get_args(Decision)
# Upper bounds of the latency buckets, in milliseconds (the last: anything slower).
LATENCY_BUCKETS_MS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, float("inf"))
# How long a candidate may take on one frame before it counts as failed.
CANDIDATE_TIMEOUT_S = 10.0


@dataclass
class ClassCounts:
    decision_agreed: int = 0
    label_agreed: int = 0
    iou_sum: float = 0.0
    iou_count: int = 0


@dataclass
class Tally:
    """One shadow run's counts, in one worker or added up over several."""

    compared: int = 0  # frames both versions answered
    shed: int = 0  # frames the run should have taken, not taken under load
    failed: int = 0  # frames the candidate failed on
    agreed: int = 0  # frames agreeing on every class's decision and label
    kept: int = 0  # disagreeing frames kept for review
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # active decision -> candidate's -> frames
    classes: dict[str, ClassCounts] = field(default_factory=dict)
    active_ms: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    candidate_ms: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    active_ms_sum: float = 0.0
    candidate_ms_sum: float = 0.0

    def add(
        self, active: Answer, candidate: Answer, classes: dict[str, ClassAgreement], active_s: float, candidate_s: float
    ) -> bool:
        """Count one compared frame; True when the two agreed on everything."""
        self.compared += 1
        row = self.confusion.setdefault(active.decision, {})
        row[candidate.decision] = row.get(candidate.decision, 0) + 1
        agreed = True
        for name, agreement in classes.items():
            counts = self.classes.setdefault(name, ClassCounts())
            counts.decision_agreed += agreement.decision
            counts.label_agreed += agreement.label
            if agreement.iou is not None:
                counts.iou_sum += agreement.iou
                counts.iou_count += 1
            agreed = agreed and agreement.decision and agreement.label
        self.agreed += agreed
        self.active_ms[_bucket(active_s * 1000.0)] += 1
        self.candidate_ms[_bucket(candidate_s * 1000.0)] += 1
        self.active_ms_sum += active_s * 1000.0
        self.candidate_ms_sum += candidate_s * 1000.0
        return agreed

    def merge(self, other: Tally) -> None:
        for name in ("compared", "shed", "failed", "agreed", "kept", "active_ms_sum", "candidate_ms_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for active, row in other.confusion.items():
            mine = self.confusion.setdefault(active, {})
            for candidate, count in row.items():
                mine[candidate] = mine.get(candidate, 0) + count
        for name, counts in other.classes.items():
            mine = self.classes.setdefault(name, ClassCounts())
            mine.decision_agreed += counts.decision_agreed
            mine.label_agreed += counts.label_agreed
            mine.iou_sum += counts.iou_sum
            mine.iou_count += counts.iou_count
        self.active_ms = [a + b for a, b in zip(self.active_ms, other.active_ms, strict=True)]
        self.candidate_ms = [a + b for a, b in zip(self.candidate_ms, other.candidate_ms, strict=True)]

    def to_json(self) -> str:
        data = {**self.__dict__, "classes": {name: counts.__dict__ for name, counts in self.classes.items()}}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Tally:
        data = json.loads(text)
        data["classes"] = {name: ClassCounts(**counts) for name, counts in data["classes"].items()}
        return cls(**data)


def quantile_ms(buckets: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding the `q` quantile (None with no data; inf: over 5 s)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for bound, count in zip(LATENCY_BUCKETS_MS, buckets, strict=True):
        seen += count
        if seen >= rank:
            return bound
    return LATENCY_BUCKETS_MS[-1]


def _bucket(milliseconds: float) -> int:
    return bisect.bisect_left(LATENCY_BUCKETS_MS, milliseconds)


class ShadowRun:
    """One shadow run in one worker: takes frames, runs the candidate on them, counts."""

    def __init__(
        self,
        run: int,
        spec: Shadow,
        candidate: Predictor,
        store: VersionStore,
        frames: FrameStore,
        max_in_flight: int,
    ) -> None:
        self.run = run
        self.spec = spec
        self.candidate = candidate
        self._manifest = candidate.manifest
        self._head = head_for(candidate.manifest)
        self._store = store
        self._frames = frames
        self._max_in_flight = max_in_flight
        self._credit = 0.0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._failing = False
        self._tally = Tally()
        self._lock = threading.Lock()  # the tally: counted on the event loop, saved by the watcher's thread
        self._dirty = False
        self._metrics = _RunMetrics(candidate.manifest.name, str(candidate.manifest.version))

    @property
    def model(self) -> str:
        return self._manifest.name

    def offer(
        self,
        frame: Frame,
        prepared: PreparedImage,
        options: PredictionOptions,
        answer: Answer,
        active_s: float,
        busy: bool,
    ) -> None:
        """A frame the active version answered in `active_s` (prepared image to answer); `busy`: the model
        is queueing. Returns at once; the candidate runs in a task of its own."""
        if self._stopped:
            return
        self._credit += self.spec.share
        if self._credit < 1.0:
            return
        self._credit -= 1.0
        if busy or self._in_flight >= self._max_in_flight:
            with self._lock:
                self._tally.shed += 1
                self._dirty = True
            self._metrics.frames("shed")
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._compare(frame, prepared, options, answer, active_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def flush(self, server: str, worker: int) -> None:
        """Save this worker's counts, when they changed (blocking: the watcher's thread)."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            text = self._tally.to_json()
        self._store.save_tally(self.model, self.run, server, worker, text)

    def stop(self) -> None:
        """Take no more frames; those under way finish, or find the candidate released."""
        self._stopped = True

    @property
    def finished(self) -> bool:
        """Stopped, with none of its frames still running: its counts are final."""
        return self._stopped and self._in_flight == 0

    async def _compare(
        self, frame: Frame, prepared: PreparedImage, options: PredictionOptions, answer: Answer, active_s: float
    ) -> None:
        try:
            try:
                with self.candidate.held():
                    started = time.perf_counter()
                    candidate, candidate_s = await asyncio.wait_for(
                        self._answer(frame, prepared, options), CANDIDATE_TIMEOUT_S
                    )
            except UnknownModel:  # released: the run is over
                return
            except Exception as exc:  # whatever the candidate does, the run counts it and goes on
                self._failed(exc, time.perf_counter() - started)
                return
            if self._head.on_event_loop:
                classes = self._head.agreement(answer, candidate, self._manifest)
            else:
                classes = await asyncio.to_thread(self._head.agreement, answer, candidate, self._manifest)
            with self._lock:
                agreed = self._tally.add(answer, candidate, classes, active_s, candidate_s)
                self._dirty = True
            self._metrics.compared(answer, candidate, classes, agreed)
            if not agreed and self.spec.keep_frames:
                await asyncio.to_thread(self._keep, frame, answer, candidate, classes)
        finally:
            self._in_flight -= 1

    async def _answer(self, frame: Frame, prepared: PreparedImage, options: PredictionOptions) -> tuple[Answer, float]:
        """The candidate's answer, and its time from the prepared image to it."""
        if prepared.spec != self._manifest.input:  # the active version takes another input
            prepared = await self.candidate.prepare(frame, lambda _: prepared.active)
        started = time.perf_counter()
        answer = await self.candidate.finish(prepared, options, observe=False, with_heatmap=False)
        return answer, time.perf_counter() - started

    def _failed(self, exc: BaseException, seconds: float) -> None:
        with self._lock:
            self._tally.failed += 1
            self._dirty = True
        self._metrics.frames("failed")
        if not self._failing:
            self._failing = True
            log.error(
                "shadow run %d: %s failed on a frame after %.3f s (further failures are counted, not logged): %r",
                self.run,
                self._manifest.ref,
                seconds,
                exc,
            )

    def _keep(self, frame: Frame, answer: Answer, candidate: Answer, classes: dict[str, ClassAgreement]) -> None:
        image, content_type = frame_bytes(frame)
        details = {
            "active": answer.model_dump(mode="json"),
            "candidate": candidate.model_dump(mode="json"),
            "classes": {name: agreement.__dict__ for name, agreement in classes.items()},
        }
        try:
            kept = self._frames.keep(
                model=self.model,
                source=SOURCE,
                run=self.run,
                limit=self.spec.keep_frames,
                image=image,
                content_type=content_type,
                details=details,
            )
        except Exception:
            log.exception("shadow run %d: could not keep a disagreeing frame", self.run)
            return
        if kept is not None:
            with self._lock:
                self._tally.kept += 1
                self._dirty = True


class _RunMetrics:
    def __init__(self, model: str, candidate: str) -> None:
        self._model, self._candidate = model, candidate

    def frames(self, result: str) -> None:
        inspection_metrics().shadow_frames.labels(self._model, self._candidate, result).inc()

    def compared(self, active: Answer, candidate: Answer, classes: dict[str, ClassAgreement], agreed: bool) -> None:
        metrics = inspection_metrics()
        self.frames("agreed" if agreed else "disagreed")
        metrics.shadow_decisions.labels(self._model, self._candidate, active.decision, candidate.decision).inc()
        for name, agreement in classes.items():
            for on, value in (("decision", agreement.decision), ("label", agreement.label)):
                metrics.shadow_class_agreement.labels(
                    self._model, self._candidate, name, on, "true" if value else "false"
                ).inc()
