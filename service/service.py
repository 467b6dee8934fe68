"""The BentoML service: `bentoml serve service.service:InspectionService`.

Each worker process loads every configured model once (ServedModels) and serves
the HTTP API in `http_api`. BentoML supplies /livez, /readyz, /metrics, the
request timeout and the worker processes.
"""

from __future__ import annotations

import gc
import logging
import os

import bentoml

from .config import get_settings
from .http_api import create_app
from .served_models import ServedModels

settings = get_settings()
# BentoML opens an OpenTelemetry span per request even though, unless tracing is configured, it
# samples none of them; and its request timeout keeps each request's context, span included,
# alive for the whole timeout. Off unless asked for: set OTEL_SDK_DISABLED=false with tracing.
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
tracing_off = os.environ["OTEL_SDK_DISABLED"].strip().lower() == "true"
# BentoML's log handlers print INFO, but loggers it did not set up stay at WARNING:
# without this, which provider each model runs on and sweep progress would not show.
logging.getLogger("service").setLevel(logging.INFO)
# Configuration mistakes (missing GPU, empty or broken model store) stop `bentoml serve`
# here, with their message, instead of leaving a server whose workers cannot start.
ServedModels.preflight(settings)


def _served_models() -> ServedModels:
    return bentoml.get_current_service().models


@bentoml.service(
    name="weld-inspection",
    workers=settings.workers,
    # Admission control is the API's own (503 with a JSON error); BentoML only enforces the timeout.
    traffic={"timeout": settings.request_timeout_s},
    logging={"access": {"enabled": settings.access_log}},
    # With tracing off, BentoML's tracing middleware still builds each request's span attributes:
    # excluding every URL makes it pass requests straight through.
    **({"tracing": {"excluded_urls": ".*"}} if tracing_off else {}),
)
@bentoml.asgi_app(create_app(settings, _served_models), path="/")
class InspectionService:
    def __init__(self) -> None:
        self.models = ServedModels.load(settings)
        if settings.freeze_startup_heap:
            # What start-up loaded (libraries, app, sessions) lives as long as the worker. Frozen, it is
            # skipped by Python's full collections, which otherwise stall the whole worker 50-150 ms.
            gc.freeze()

    def __is_ready__(self) -> bool:
        return bool(self.models.names())

    @bentoml.on_shutdown
    def close(self) -> None:
        self.models.close()
