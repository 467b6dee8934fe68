"""One served model's request path, top to bottom:

decode -> preprocess            (decode thread; a bad image fails here, alone; raw pixels skip the
                                 decode; then the active thresholds are read, a database call kept
                                 off the event loop)
-> batch -> infer               (MicroBatcher; one inference thread per model)
-> post-process                 (the task's head, with the request's thresholds: on the event loop
                                 for classification, tens of microseconds, less than a hand-off to a
                                 thread; in a decode thread for boxes and masks) -> the typed answer
-> heat map                     (only when the request asks, in a decode thread; `service.heatmaps`)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import UnknownModel
from service.heatmaps import (
    EvidenceGrid,
    Heatmap,
    HeatmapMethod,
    class_activation,
    occluded_copies,
    occlusion_fill,
    occlusion_grid,
    render,
    top_class,
)
from service.manifest import InputSpec, ModelManifest, OutputDecoder
from service.metrics import Stage, inspection_metrics
from service.model_store import ModelVersion
from service.pipeline.batching import BatchedResult, MicroBatcher
from service.pipeline.decode import Frame, decode_frame
from service.pipeline.geometry import Geometry
from service.pipeline.preprocess import decode_target, to_batch, to_model_input
from service.pipeline.runtime import InferenceSession
from service.tasks import Answer, PredictionOptions, head_for, parse_options
from service.thresholds.rules import ThresholdSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedImage:
    tensor: np.ndarray  # (C, H, W) uint8 at the geometry's input size (the model's, or less padded to a stride)
    spec: InputSpec  # the input it was prepared for
    geometry: Geometry
    active: ThresholdSet  # the thresholds revision in force when the image was read
    decode_s: float
    preprocess_s: float


# The active thresholds of a model: `ThresholdStore.active`, or a fixed set (a sweep).
ActiveThresholds = Callable[[ModelManifest], ThresholdSet]


class Predictor:
    def __init__(self, version: ModelVersion, session: InferenceSession, settings: Settings, pool: Executor) -> None:
        self.manifest: ModelManifest = version.manifest
        self._head = head_for(self.manifest)
        self._no_options = parse_options(self.manifest, {})
        self._activation_weights = _activation_weights(version)
        self._occlusion_fill = occlusion_fill(self.manifest.input)
        self.session = session
        # Requests using this version now; once it is retired (unloaded, or replaced as the active
        # version) the last of them releases its sessions.
        self._users = 0
        self._retired = False
        self._released = False
        self._use = threading.Lock()
        self._max_pixels = settings.max_pixels
        self._pool = pool
        self._batcher = MicroBatcher(
            self._infer,
            max_batch_size=settings.max_batch_size if self.manifest.input.dynamic_batch else 1,
            window_s=settings.batch_window_ms / 1000.0,
            max_batch_s=settings.max_batch_ms / 1000.0,
            name=self.manifest.name,
            on_batch=inspection_metrics().batch_size.labels(self.manifest.name).observe,
        )

    @property
    def provider(self) -> str:
        return self.session.provider

    def options(self, given: Mapping[str, Any], what: str = "parameters") -> PredictionOptions:
        """A request's options for this model, checked (422 naming the mistake)."""
        return parse_options(self.manifest, given, what) if given else self._no_options

    async def predict(self, frame: Frame, options: PredictionOptions, active: ActiveThresholds) -> Answer:
        return await self.finish(await self.prepare(frame, active), options)

    async def prepare(self, frame: Frame, active: ActiveThresholds) -> PreparedImage:
        """Decode and preprocess, in a decode thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, frame, active)

    async def finish(
        self, prepared: PreparedImage, options: PredictionOptions, observe: bool = True, with_heatmap: bool = True
    ) -> Answer:
        """Batch, infer and post-process a prepared image (one this version prepared, or another
        version of the same input); `observe`: into the request metrics, and `with_heatmap`: with the heat map
        the request asks for (a shadow run's candidate does neither)."""
        heatmap = options.heatmap_method if with_heatmap else None
        batched = await self._batcher.submit(prepared.tensor, extra=heatmap is HeatmapMethod.CAM)
        thresholds = options.thresholds_for(prepared.active)
        started = time.perf_counter()
        if self._head.on_event_loop:
            answer = self._postprocess(batched.outputs, prepared.geometry, options, thresholds)
        else:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._postprocess, batched.outputs, prepared.geometry, options, thresholds
            )
        postprocess_s = time.perf_counter() - started
        if heatmap is not None:
            answer.heatmap = await self._heatmap(heatmap, prepared, batched.outputs, answer, options, thresholds)
            if observe:
                inspection_metrics().stage_duration.labels(self.manifest.name, Stage.HEATMAP).observe(
                    time.perf_counter() - started - postprocess_s
                )
        if observe:
            self._observe(prepared, batched, postprocess_s, answer)
        return answer

    async def _heatmap(
        self,
        method: HeatmapMethod,
        prepared: PreparedImage,
        outputs: list[np.ndarray],
        answer: Answer,
        options: PredictionOptions,
        thresholds: ThresholdSet,
    ) -> Heatmap:
        """The heat map the request asked for (`service.heatmaps`), of the class it names or the defect
        class scored highest; occlusion runs its copies through the batcher, with everyone else's."""
        candidates = options.heatmap_candidates(self.manifest)
        loop = asyncio.get_running_loop()
        if method is HeatmapMethod.SCORES:
            return await loop.run_in_executor(self._pool, self._score_heatmap, outputs, prepared.geometry, candidates)
        scores = answer.scores  # a classifier's: cam and occlusion are theirs
        class_name = top_class(scores, candidates)
        if method is HeatmapMethod.CAM:
            return await loop.run_in_executor(self._pool, self._cam_heatmap, outputs, prepared.geometry, class_name)
        copies = occluded_copies(prepared.tensor, prepared.geometry, self._occlusion_fill)
        results = await asyncio.gather(*(self._batcher.submit(copy) for copy in copies))
        occluded = [
            self._postprocess(r.outputs, prepared.geometry, self._no_options, thresholds).scores[class_name]
            for r in results
        ]
        grid = occlusion_grid(scores[class_name], occluded)
        return await loop.run_in_executor(
            self._pool,
            lambda: render(
                grid,
                prepared.geometry,
                class_name=class_name,
                method=method,
                unit="drop in the class's probability with the patch covered",
                scale=1.0,
                runs=len(copies),
            ),
        )

    def _cam_heatmap(self, outputs: list[np.ndarray], geometry: Geometry, class_name: str) -> Heatmap:
        assert self._activation_weights is not None and self.manifest.activation_map is not None
        features = outputs[len(self.manifest.output.names)]
        values = class_activation(features, self._activation_weights, self.manifest.classes.index(class_name))
        return render(
            EvidenceGrid.over_input(values, geometry),
            geometry,
            class_name=class_name,
            method=HeatmapMethod.CAM,
            unit="class activation",
            scale=self.manifest.activation_map.scale,
        )

    def _score_heatmap(self, outputs: list[np.ndarray], geometry: Geometry, candidates: list[str]) -> Heatmap:
        class_name, values = self._head.score_map(outputs, self.manifest, geometry, candidates)
        return render(
            EvidenceGrid.over_input(values, geometry),
            geometry,
            class_name=class_name,
            method=HeatmapMethod.SCORES,
            unit=self._head.score_unit,
            scale=1.0,
        )

    def check_answers(self) -> None:
        """Answer a blank frame of the model's input size, at the manifest's thresholds: a graph whose
        outputs its manifest cannot read (a class missing under an output of unstated width, another
        layout) fails here, before it answers anything, not at its first frame."""
        spec = self.manifest.input
        defaults = ThresholdSet(revision=0, values=dict(self.manifest.thresholds), nms_iou=self.manifest.nms_iou)
        blank = np.full((spec.height, spec.width, spec.channels), 128, dtype=np.uint8)
        prepared = self._prepare(blank, lambda _: defaults)
        extra = self._activation_weights is not None
        (outputs,) = self._infer([prepared.tensor], extra)
        answer = self._postprocess(outputs, prepared.geometry, self._no_options, defaults)
        if extra:  # the features and the weights fit each other
            self._cam_heatmap(outputs, prepared.geometry, top_class(answer.scores, self.manifest.defect_classes))

    @contextmanager
    def held(self) -> Iterator[Predictor]:
        """Use this version for a request (or a sweep): it is not released while held."""
        if not self.hold():
            raise UnknownModel(f"version {self.manifest.version} of {self.manifest.name} was just unloaded")
        try:
            yield self
        finally:
            self.let_go()

    def hold(self) -> bool:
        """Take this version for a use, to be ended by `let_go`: False, and not taken, once it is released."""
        with self._use:
            if self._released:
                return False
            self._users += 1
            return True

    def let_go(self) -> None:
        """End a use taken by `hold`: the last use of a retired version releases it."""
        with self._use:
            self._users -= 1
            release = self._retired and self._users == 0 and not self._released
            self._released |= release
        if release:  # on the event loop, often: the release is off it
            threading.Thread(target=self._release, name=f"release-{self.manifest.ref}", daemon=True).start()

    def retire(self) -> None:
        """No new request gets this version any more: release its sessions now, or once the requests
        under way finish."""
        with self._use:
            self._retired = True
            release = self._users == 0 and not self._released
            self._released |= release
        if release:
            self._release()

    @property
    def released(self) -> bool:
        return self._released

    def close(self) -> None:
        self._batcher.close()

    def _release(self) -> None:
        self.close()
        self.session.release()
        log.info("released %s", self.manifest.ref)

    def _prepare(self, frame: Frame, active: ActiveThresholds) -> PreparedImage:
        spec = self.manifest.input
        started = time.perf_counter()
        decoded = decode_frame(
            frame, channels=spec.channels, target_size=decode_target(spec), max_pixels=self._max_pixels
        )
        decoded_at = time.perf_counter()
        tensor, geometry = to_model_input(decoded, spec)
        prepared_at = time.perf_counter()
        return PreparedImage(
            tensor, spec, geometry, active(self.manifest), decoded_at - started, prepared_at - decoded_at
        )

    def _infer(self, images: list[np.ndarray], extra: bool = False) -> list[list[np.ndarray]]:
        rows = self.session.batch_rows(len(images))
        outputs = self.session.run(to_batch(images, self.manifest.input, rows), len(images), extra)
        if self.manifest.output.decoder is OutputDecoder.BOXES_SCORES_LABELS:
            # One image per run, and outputs without a batch axis (torchvision detectors, NMS inside).
            return [outputs]
        # Every other graph's outputs lead with the batch axis, a fixed batch of 1 included.
        return [[output[i] for output in outputs] for i in range(len(images))]

    def _postprocess(
        self, outputs: list[np.ndarray], geometry: Geometry, options: PredictionOptions, thresholds: ThresholdSet
    ) -> Answer:
        return self._head.postprocess(outputs, geometry, self.manifest, thresholds, options)

    def _observe(self, prepared: PreparedImage, batched: BatchedResult, postprocess_s: float, answer: Answer) -> None:
        metrics = inspection_metrics()
        name = self.manifest.name
        for stage, seconds in (
            (Stage.DECODE, prepared.decode_s),
            (Stage.PREPROCESS, prepared.preprocess_s),
            (Stage.QUEUE_WAIT, batched.queue_wait_s),
            (Stage.INFERENCE, batched.inference_s),
            (Stage.POSTPROCESS, postprocess_s),
        ):
            metrics.stage_duration.labels(name, stage).observe(seconds)
        metrics.decisions.labels(name, answer.decision).inc()
        for defect in answer.defects:
            metrics.defects.labels(name, defect).inc()
        for in_band in answer.review or ():
            metrics.reviews.labels(name, in_band).inc()


def _activation_weights(version: ModelVersion) -> np.ndarray | None:
    """The class weights of a classifier's class activation maps ([C, K] float32), or None without them."""
    spec = version.manifest.activation_map
    if spec is None:
        return None
    path = version.path / spec.weights
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{version.manifest.ref}: cannot read the class activation weights {path}: {exc}") from exc
    classes = len(version.manifest.classes)
    if weights.ndim != 2 or weights.shape[0] != classes:
        raise ValueError(f"{path}: the weights must be [{classes}, K] (one row per class), not {list(weights.shape)}")
    return weights.astype(np.float32)
