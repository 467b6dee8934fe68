"""`POST /v1/models/{model}/predict`: `/v1`'s adapter onto the prediction core, and the direct route to
the prediction endpoints of both protocols.

`PredictionEndpoint` is `/v1`'s wire form of a prediction: its query is the options, its body the one
frame (raw or multipart), its answer the typed answer's JSON, its errors `{"error": {"code",
"message"}}`. Everything else (admission, the predictor, the metrics) is the core's
(`service.inference`). FastAPI declares the route (the OpenAPI page, and the in-process app), but in
the service requests reach the endpoints through `DirectPredictions`, an ASGI middleware in front of
BentoML's router: a prediction is the one request a camera line sends thousands of times a second,
and BentoML's context and router, the mount, FastAPI's error layers and its route matching cost it
about a tenth of a millisecond of CPU each time for nothing it needs. Everything else goes the long
way round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.body import read_image_bytes
from service.api.contract import error_response
from service.api.limits import RequestLimits
from service.config import Settings
from service.errors import InspectionError
from service.inference import LATENCY_BUDGET_HEADER, Inference, PredictionCall, Received
from service.tasks import Answer


class PredictionEndpoint:
    def __init__(self, settings: Settings, inference: Inference) -> None:
        self._settings = settings
        self._inference = inference

    async def __call__(self, request: Request, model: str) -> Response:
        """The answer to one prediction request, an error answer included."""
        settings = self._settings

        async def read_frame(arrived: Callable[[], object]) -> Received:
            return Received(
                [await read_image_bytes(request, settings.max_body_bytes, settings.body_timeout_s, arrived)]
            )

        try:
            call = PredictionCall(
                model=model,
                version=None,
                options=request.query_params,
                read_body=read_frame,
                budget_ms=request.headers.get(LATENCY_BUDGET_HEADER),
                arrived_at=time.perf_counter(),
                protocol="v1",
                options_source="query parameters",
            )
            (answer,) = await self._inference.predict(call)
        except InspectionError as exc:
            return error_response(exc)
        assert isinstance(answer, Answer)  # one frame: its failure is the request's
        return answer_response(answer)


def answer_response(answer: Answer) -> Response:
    """`/v1`'s answer: the typed answer's JSON dump, written as compactly as Starlette's JSONResponse."""
    body = json.dumps(answer.model_dump(mode="json"), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body.encode(), media_type="application/json")


@dataclass(frozen=True)
class DirectRoute:
    """A prediction route taken straight to its endpoint: `match` reads a path (None: not this route),
    `endpoint` answers the request with what it read."""

    match: Callable[[str], Any]
    endpoint: Callable[[Request, Any], Awaitable[Response]]


class DirectPredictions:
    """ASGI middleware: `POST` to a path one of `routes` matches straight to its endpoint, within the
    same request limits as every other route; anything else on to `app`."""

    def __init__(self, app: ASGIApp, routes: list[DirectRoute], settings: Settings) -> None:
        self.app = app
        self._routes = routes
        self._limited = RequestLimits(
            self._predict, max_header_bytes=settings.max_header_bytes, request_timeout_s=settings.request_timeout_s
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self._route(scope["path"]) is not None:
            await self._limited(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _route(self, path: str) -> tuple[DirectRoute, Any] | None:
        for route in self._routes:
            matched = route.match(path)
            if matched is not None:
                return route, matched
        return None

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._route(scope["path"])
        assert found is not None  # matched in __call__
        route, matched = found
        response = await route.endpoint(Request(scope, receive), matched)
        await response(scope, receive, send)


_PREFIX, _SUFFIX = "/v1/models/", "/predict"


def prediction_model(path: str) -> str | None:
    """The model named by a prediction path, as the route `/v1/models/{model}/predict` reads it; None
    for any other path (an empty name, or one with a `/`, is no prediction path)."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    model = path[len(_PREFIX) : -len(_SUFFIX)]
    return model if model and "/" not in model else None
