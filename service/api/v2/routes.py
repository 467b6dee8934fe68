"""The Open Inference Protocol's routes (`service.api.v2.endpoints` says what each answers).

In the service, `POST .../infer` reaches `V2Inference` through `DirectPredictions` (as `/v1`'s
predictions do); the route here declares it for the OpenAPI page and serves it in the in-process app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel

from service.api.v2.endpoints import (
    V2Inference,
    health,
    model_metadata,
    server_metadata,
    version_number,
)
from service.served_models import ServedModels
from service.tasks import TensorSpec

_INFER_ANSWER = {
    "description": "The outputs: JSON, or JSON then binary tensor data (`Inference-Header-Content-Length`).",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "An inference request: JSON, or JSON then binary tensor data "
        "(`Inference-Header-Content-Length` gives the JSON's length).",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class V2Error(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


def _errors(*statuses: int) -> dict:
    return {status: {"model": V2Error, "description": _ERROR_TEXT[status]} for status in statuses}


_ERROR_TEXT = {
    400: "A request the protocol cannot read, or every image of it undecodable.",
    404: "No such model, or not this version.",
    408: "The body stopped arriving.",
    413: "Body, elements or images over the limit.",
    415: "A compressed body or an unsupported image format.",
    422: "Bad parameters.",
    431: "Request headers over the limit.",
    503: "Not ready; or overloaded (with Retry-After).",
    504: "No answer before the request timeout.",
}


# Examples for the OpenAPI page and for schemathesis, which otherwise never names a served model.
Model = Annotated[str, Path(description="A served model's name.", examples=["weld-classifier"])]
Version = Annotated[str, Path(description="A version number.", examples=["1"])]


def v2_router(served_models: Callable[[], ServedModels], ready: Callable[[], bool], infer: V2Inference) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

    @router.get("", response_model=ServerMetadata, summary="Server metadata")
    def server() -> dict:
        return server_metadata()

    @router.get("/health/live", response_model=Live, summary="200 while the server runs")
    def live() -> Response:
        return health("live", True)

    @router.get("/health/ready", response_model=Ready, responses=_errors(503), summary="200 when every model is warm")
    def server_ready() -> Response:
        return health("ready", ready())

    @router.get("/models/{model}", response_model=ModelMetadata, responses=_errors(404), summary="Model metadata")
    def metadata(model: Model) -> dict:
        models = served_models()
        return model_metadata(models.get(model).manifest, models.versions(model))

    @router.get(
        "/models/{model}/versions/{version}",
        response_model=ModelMetadata,
        responses=_errors(404),
        summary="Model metadata of one version",
    )
    def version_metadata(model: Model, version: Version) -> dict:
        models = served_models()
        return model_metadata(models.get(model, version_number(model, version)).manifest, models.versions(model))

    @router.get("/models/{model}/ready", response_model=Ready, responses=_errors(404, 503), summary="Model ready")
    def model_ready(model: Model) -> Response:
        served_models().get(model)
        return health("ready", ready())

    @router.get(
        "/models/{model}/versions/{version}/ready",
        response_model=Ready,
        responses=_errors(404, 503),
        summary="Model version ready",
    )
    def version_ready(model: Model, version: Version) -> Response:
        served_models().get(model, version_number(model, version))
        return health("ready", ready())

    infer_errors = _errors(400, 404, 408, 413, 415, 422, 431, 503, 504)

    @router.post(
        "/models/{model}/infer",
        responses={200: _INFER_ANSWER, **infer_errors},
        summary="Inference",
        openapi_extra=_INFER_BODY,
    )
    async def model_infer(model: Model, request: Request) -> Response:
        return await infer(request, model, None)

    @router.post(
        "/models/{model}/versions/{version}/infer",
        responses={200: _INFER_ANSWER, **infer_errors},
        summary="Inference on one version",
        openapi_extra=_INFER_BODY,
    )
    async def version_infer(model: Model, version: Version, request: Request) -> Response:
        return await infer(request, model, version)

    return router
