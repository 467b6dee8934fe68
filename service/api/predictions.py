"""`POST /v1/models/{model}/predict`: the prediction endpoint, and the direct route to it.

`PredictionEndpoint` is the whole of a prediction's HTTP side: admission, the query's options, the
body, the predictor, the answer, the metrics, every error in the contract. FastAPI declares the route
(the OpenAPI page, and the in-process app), but in the service requests reach the endpoint through
`DirectPredictions`, an ASGI middleware in front of BentoML's router: a prediction is the one
request a camera line sends thousands of times a second, and BentoML's context and router, the
mount, FastAPI's error layers and its route matching cost it about a tenth of a millisecond of
CPU each time for nothing it needs. Everything else goes the long way round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.admission import Admission
from service.api.body import read_image_bytes
from service.api.contract import error_response
from service.api.limits import RequestLimits
from service.api.query import parse_options
from service.config import Settings
from service.errors import InspectionError, InvalidParameters, TimedOut
from service.metrics import UNKNOWN_MODEL, inspection_metrics
from service.served_models import ServedModels

log = logging.getLogger(__name__)

LATENCY_BUDGET_HEADER = "X-Latency-Budget-Ms"


class PredictionEndpoint:
    def __init__(self, settings: Settings, served_models: Callable[[], ServedModels]) -> None:
        self._settings = settings
        self._served_models = served_models
        self.admission = Admission(settings.max_concurrency, settings.latency_budget_ms / 1000.0)

    async def __call__(self, request: Request, model: str) -> Response:
        """The answer to one prediction request, an error answer included; timed and counted by model."""
        started = time.perf_counter()
        models = self._served_models()
        label = model if model in models else UNKNOWN_MODEL
        try:
            response: Response = JSONResponse(await self._predict(request, models, model, started))
        except InspectionError as exc:
            _count(label, exc, started)
            return error_response(exc)
        except asyncio.CancelledError:  # at the request's deadline: `RequestLimits` answers 504
            _count(label, TimedOut(""), started)
            raise
        except Exception:
            log.exception("prediction failed for model %s", label)
            error = InspectionError("the prediction failed on the server; see its log")
            _count(label, error, started)
            return error_response(error)
        inspection_metrics().request_duration.labels(label, "200").observe(time.perf_counter() - started)
        return response

    async def _predict(self, request: Request, models: ServedModels, model: str, arrived: float) -> dict:
        settings = self._settings
        predictor = models.get(model)
        options = parse_options(predictor.manifest, request.query_params)
        # Admitted from the headers: a request that cannot be answered in time is refused before its
        # upload, and an upload in progress is not yet work for the model.
        async with self.admission.place(model, latency_budget_s(request), arrived) as place:
            data = await read_image_bytes(
                request, settings.max_body_bytes, settings.body_timeout_s, place.body_part_arrived
            )
            place.start_work()
            return await predictor.predict(data, options, models.thresholds.active)


def _count(label: str, error: InspectionError, started: float) -> None:
    metrics = inspection_metrics()
    metrics.errors.labels(label, error.code).inc()
    metrics.request_duration.labels(label, str(error.status)).observe(time.perf_counter() - started)


def latency_budget_s(request: Request) -> float | None:
    """The request's own latency budget (`X-Latency-Budget-Ms`), in seconds; None when it gives none."""
    given = request.headers.get(LATENCY_BUDGET_HEADER)
    if given is None:
        return None
    try:
        milliseconds = float(given)
    except ValueError:
        milliseconds = float("nan")
    if not 1.0 <= milliseconds <= 600_000.0:  # also refuses nan and inf
        raise InvalidParameters(f"{LATENCY_BUDGET_HEADER} must be a number of milliseconds from 1 to 600000")
    return milliseconds / 1000.0


class DirectPredictions:
    """ASGI middleware: `POST /v1/models/{model}/predict` straight to `endpoint`, within the same request
    limits as every other route; anything else on to `app`."""

    def __init__(self, app: ASGIApp, endpoint: PredictionEndpoint, settings: Settings) -> None:
        self.app = app
        self._endpoint = endpoint
        self._limited = RequestLimits(
            self._predict, max_header_bytes=settings.max_header_bytes, request_timeout_s=settings.request_timeout_s
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and prediction_model(scope["path"]) is not None:
            await self._limited(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = prediction_model(scope["path"])
        assert model is not None  # matched in __call__
        response = await self._endpoint(Request(scope, receive), model)
        await response(scope, receive, send)


_PREFIX, _SUFFIX = "/v1/models/", "/predict"


def prediction_model(path: str) -> str | None:
    """The model named by a prediction path, as the route `/v1/models/{model}/predict` reads it; None
    for any other path (an empty name, or one with a `/`, is no prediction path)."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    model = path[len(_PREFIX) : -len(_SUFFIX)]
    return model if model and "/" not in model else None
