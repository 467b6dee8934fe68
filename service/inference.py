"""The core of a prediction, one call per request whatever the protocol that carried it.

`Inference.predict` takes the model (and version), the request's options as given, a way to read its
body (its frames, and its options when they come in it), and its latency budget, and does everything
a prediction is: admission (the concurrency limit and the latency budget, decided before the body is
read; `service.api.admission`), the options checked against the model's task, each frame through its
model's predictor (and to the model's shadow run, `service.lifecycle.shadow`, once answered), the
metrics, and every failure as an `InspectionError`. It answers typed answers;
a protocol's adapter (`/v1` in `service.api.predictions`, the Open Inference Protocol in
`service.api.v2`) only translates its wire form to this call and the answers back.

Several frames in one request are predicted together, and each may fail alone: the answers hold
an `InspectionError` in place of that frame's answer. When every frame fails, the request fails
with the first frame's error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.api.admission import Admission
from service.config import Settings
from service.errors import InspectionError, InvalidParameters, TimedOut
from service.lifecycle.shadow import ShadowRun
from service.metrics import UNKNOWN_MODEL, inspection_metrics
from service.pipeline.decode import Frame
from service.pipeline.predictor import ActiveThresholds, Predictor
from service.served_models import ServedModels
from service.tasks import Answer, PredictionOptions

log = logging.getLogger(__name__)

# The HTTP header that carries a request's latency budget, in milliseconds, in every protocol.
LATENCY_BUDGET_HEADER = "X-Latency-Budget-Ms"


@dataclass(frozen=True)
class Received:
    """What a request's body carried: its frames, and its options when the body carries them."""

    frames: list[Frame]
    options: Mapping[str, Any] | None = None


# Reads a request's body; calls its argument as each part of it arrives (admission counts an upload
# as coming work only while its bytes keep arriving).
BodyReader = Callable[[Callable[[], object]], Awaitable[Received]]


@dataclass(frozen=True)
class PredictionCall:
    model: str
    version: int | None  # None: whichever version is served
    # As the client gave them, checked here against the model's task, before admission; None when
    # they come in the body (`Received.options`), checked once it is read.
    options: Mapping[str, Any] | None
    read_body: BodyReader
    budget_ms: str | None  # the request's latency budget in milliseconds, as sent; None: the configured one
    arrived_at: float  # time.perf_counter() when the request arrived
    protocol: str  # "v1", "v2": a label of the request metrics
    options_source: str = "parameters"  # what the options are called in an error ("query parameters")


class Inference:
    def __init__(self, settings: Settings, served_models: Callable[[], ServedModels]) -> None:
        self._served_models = served_models
        self.admission = Admission(settings.max_concurrency, settings.latency_budget_ms / 1000.0)

    async def predict(self, call: PredictionCall) -> list[Answer | InspectionError]:
        """One answer per frame, in order; timed and counted by model, status and protocol."""
        models = self._served_models()
        label = call.model if call.model in models else UNKNOWN_MODEL
        try:
            answers = await self._predict(models, call)
        except InspectionError as exc:
            _count(label, call.protocol, exc, call.arrived_at)
            raise
        except asyncio.CancelledError:  # at the request's deadline: the adapter's limits answer 504
            _count(label, call.protocol, TimedOut(""), call.arrived_at)
            raise
        except Exception as exc:
            error = _internal(label, exc)
            _count(label, call.protocol, error, call.arrived_at)
            raise error from exc
        metrics = inspection_metrics()
        failures = [answer for answer in answers if isinstance(answer, InspectionError)]
        for failure in failures:
            metrics.errors.labels(label, failure.code).inc()
        # Every frame failed: so does the request, with the first one's error.
        status = str(failures[0].status) if len(failures) == len(answers) else "200"
        metrics.request_duration.labels(label, status, call.protocol).observe(time.perf_counter() - call.arrived_at)
        if status != "200":
            raise failures[0]
        return answers

    def refused(self, model: str, protocol: str, error: InspectionError, arrived_at: float) -> None:
        """Counts a request its protocol refused before it could make a call (a malformed header), as
        the calls' failures are counted."""
        _count(model if model in self._served_models() else UNKNOWN_MODEL, protocol, error, arrived_at)

    async def _predict(self, models: ServedModels, call: PredictionCall) -> list[Answer | InspectionError]:
        budget_s = latency_budget_s(call.budget_ms)
        # Held until answered: a version retired meanwhile (a swap, an unload) is released after.
        with models.held(call.model, call.version) as predictor:
            # The version that answers requests naming none has a shadow run: it gets the frames too.
            shadow = models.shadow(call.model) if call.version is None else None
            options = None if call.options is None else predictor.options(call.options, call.options_source)
            active = models.thresholds.active
            # Admitted from the headers: a request that cannot be answered in time is refused before its
            # upload, and an upload in progress is not yet work for the model.
            async with self.admission.place(call.model, budget_s, call.arrived_at) as place:
                received = await call.read_body(place.body_part_arrived)
                frames = received.frames
                if options is None:
                    options = predictor.options(received.options or {}, call.options_source)
                place.start_work()
                if shadow is None:
                    answers = [predictor.predict(frame, options, active) for frame in frames]
                else:
                    answers = [self._shadowed(predictor, shadow, frame, options, active) for frame in frames]
                if len(answers) == 1:
                    results = [await answers[0]]
                else:
                    results = await asyncio.gather(*answers, return_exceptions=True)
        if models.rejected is not None:
            for frame, result in zip(frames, results, strict=True):
                if isinstance(result, Answer) and result.decision == "reject":
                    models.rejected.offer(call.model, frame, result)
        return [
            result if isinstance(result, Answer | InspectionError) else _internal(call.model, result)
            for result in results
        ]

    async def _shadowed(
        self,
        predictor: Predictor,
        shadow: ShadowRun,
        frame: Frame,
        options: PredictionOptions,
        active: ActiveThresholds,
    ) -> Answer:
        """The active version's answer to a frame, then the frame offered to the model's shadow run."""
        prepared = await predictor.prepare(frame, active)
        started = time.perf_counter()
        answer = await predictor.finish(prepared, options)
        busy = self.admission.busy(predictor.manifest.name)
        shadow.offer(frame, prepared, options, answer, time.perf_counter() - started, busy)
        return answer


def latency_budget_s(given: str | None) -> float | None:
    """A request's own latency budget in seconds, from its milliseconds as sent; None when it gives none."""
    if given is None:
        return None
    try:
        milliseconds = float(given)
    except ValueError:
        milliseconds = float("nan")
    if not 1.0 <= milliseconds <= 600_000.0:  # also refuses nan and inf
        raise InvalidParameters(f"{LATENCY_BUDGET_HEADER} must be a number of milliseconds from 1 to 600000")
    return milliseconds / 1000.0


def _internal(label: str, exc: BaseException) -> InspectionError:
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    log.error("prediction failed for model %s", label, exc_info=exc)
    return InspectionError("the prediction failed on the server; see its log")


def _count(label: str, protocol: str, error: InspectionError, arrived_at: float) -> None:
    metrics = inspection_metrics()
    metrics.errors.labels(label, error.code).inc()
    metrics.request_duration.labels(label, str(error.status), protocol).observe(time.perf_counter() - arrived_at)
