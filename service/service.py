"""The BentoML service: `bentoml serve service.service:InspectionService`.

Each worker process loads every configured model once (ServedModels) and serves
the HTTP API in `http_api`. BentoML supplies /livez, /readyz, /metrics, the
concurrency limit that answers 503 when overloaded, and the worker processes.
"""

from __future__ import annotations

import bentoml

from .config import get_settings
from .http_api import create_app
from .served_models import ServedModels

settings = get_settings()


def _served_models() -> ServedModels:
    return bentoml.get_current_service().models


@bentoml.service(
    name="weld-inspection",
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_s, "max_concurrency": settings.max_concurrency},
)
@bentoml.asgi_app(create_app(settings, _served_models), path="/")
class InspectionService:
    def __init__(self) -> None:
        self.models = ServedModels.load(settings)

    def __is_ready__(self) -> bool:
        return bool(self.models.names())

    @bentoml.on_shutdown
    def close(self) -> None:
        self.models.close()
