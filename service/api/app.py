"""The HTTP API (`/v1/...`), mounted into the BentoML service.

Routes only translate HTTP to calls on `ServedModels` and back; every client
mistake surfaces as an `InspectionError` and answers its own status with
`{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.body import IMAGE_FIELD
from service.api.contract import error_response
from service.api.limits import RequestLimits
from service.api.predictions import DirectRoute, PredictionEndpoint, prediction_model
from service.api.review import review_router
from service.api.schemas import ErrorResponse, ModelDescription, ModelList, ThresholdsView
from service.api.thresholds import sample_sets_of, sample_sets_router, thresholds_router
from service.api.v2.endpoints import V2Inference, infer_target
from service.api.v2.routes import v2_router
from service.api.versions import versions_router
from service.config import Settings
from service.console import PATH as CONSOLE_PATH
from service.console import ConsoleFiles, to_console
from service.errors import (
    DatabaseUnavailable,
    InspectionError,
    InvalidParameters,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    error_for_status,
)
from service.inference import LATENCY_BUDGET_HEADER, Inference
from service.pipeline.decode import SUPPORTED_FORMATS
from service.served_models import ServedModels
from service.tasks import HEADS, PredictionAnswer

log = logging.getLogger(__name__)

_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "The bytes are not a decodable image, or the multipart body is malformed.",
        408: "The body stopped arriving.",
        404: "No such model.",
        413: "Body or pixel count over the limit.",
        415: "Unsupported media type or image format.",
        431: "Request headers over the limit.",
        422: "Bad parameters.",
        503: "Overloaded: too many predictions in flight, or the expected latency is over the budget.",
        504: "No answer before the request timeout.",
    }.items()
}


def option_parameters() -> list[dict]:
    """Every task's prediction options (`service.tasks`) as OpenAPI parameters, from their models: those
    of one task only say so."""
    found: dict[str, dict] = {}
    for head in HEADS.values():
        properties = head.options.model_json_schema()["properties"]
        for name, field in head.options.model_fields.items():
            if name in found:
                continue
            schema = {key: value for key, value in properties[name].items() if key not in ("description", "title")}
            only = "" if all(name in h.options.model_fields for h in HEADS.values()) else f"{head.task.title()}: "
            found[name] = {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                "description": only + (field.description or ""),
            }
    return list(found.values())


_PREDICT_REQUEST = {
    "parameters": option_parameters()
    + [
        {
            "name": LATENCY_BUDGET_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "number", "minimum": 1, "maximum": 600000},
            "description": "This request's latency budget: 503 at once when its expected latency is over it "
            "(default INSPECTION_LATENCY_BUDGET_MS).",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in SUPPORTED_FORMATS.values()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}},
                    "required": [IMAGE_FIELD],
                }
            },
        },
    },
}


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def describe(models: ServedModels, name: str) -> ModelDescription:
    """A served model: its manifest, the provider and batch sizes it runs at, its active thresholds."""
    predictor = models.get(name)
    manifest = predictor.manifest
    active = models.thresholds.active(manifest)
    sizes = predictor.session.batch_sizes
    return ModelDescription(
        name=manifest.name,
        version=manifest.version,
        loaded_versions=models.versions(name),
        task=manifest.task.value,
        classes=manifest.classes,
        background_class=manifest.background_class,
        provider=predictor.provider,
        batch_sizes=list(sizes) if sizes else None,
        thresholds=ThresholdsView(
            revision=active.revision, values=active.values, nms_iou=active.nms_iou, review=active.review
        ),
        manifest=manifest.model_dump(mode="json"),
    )


def api_routes(routes: list) -> list[APIRoute]:
    """Every API route, those of included routers too (FastAPI keeps an included router as one entry)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found.extend(api_routes(route.original_router.routes))
    return found


def create_app(
    settings: Settings, served_models: Callable[[], ServedModels], ready: Callable[[], bool] = lambda: True
) -> FastAPI:
    """The API; `served_models` returns this worker's loaded models once the service has started, `ready`
    whether the server is ready (every worker's models loaded and warm)."""
    app = FastAPI(
        title="Weld inspection",
        description="Defect classification, detection and segmentation of weld images, with per-class thresholds.",
        version="1",
        docs_url="/v1/docs",
        openapi_url="/v1/openapi.json",
        redoc_url=None,
    )

    app.add_middleware(
        RequestLimits, max_header_bytes=settings.max_header_bytes, request_timeout_s=settings.request_timeout_s
    )

    @app.exception_handler(InspectionError)
    async def _inspection_error(request: Request, exc: InspectionError) -> JSONResponse:
        return error_response(exc, path=request.url.path)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: the database is unreachable: %s", request.method, request.url.path, exc)
        error = DatabaseUnavailable(
            "the database of thresholds and model versions cannot be reached; predictions go on with the "
            "state last read; retry shortly"
        )
        return error_response(error, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(error_for_status(exc.status_code, str(exc.detail)), exc.headers, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        unparseable = any(e["type"] == "json_invalid" for e in exc.errors())
        error = (
            MalformedRequest(f"the body is not valid JSON: {details}") if unparseable else InvalidParameters(details)
        )
        return error_response(error, path=request.url.path)

    # These read the active thresholds from the database: plain functions, so that FastAPI runs them
    # in its thread pool, off the event loop that carries the predictions (as the thresholds routes).
    @app.get("/v1/models", response_model=ModelList, summary="Served models")
    def list_models() -> ModelList:
        models = served_models()
        return ModelList(models=[describe(models, name) for name in models.names()])

    @app.get("/v1/models/{model}", response_model=ModelDescription, responses={404: _ERRORS[404]})
    def describe_model(model: str) -> ModelDescription:
        return describe(served_models(), model)

    inference = Inference(settings, served_models)
    predictions = PredictionEndpoint(settings, inference)
    v2_infer = V2Inference(settings, inference, served_models)
    app.state.inference = inference
    # In the service, predictions of both protocols reach their endpoints through `DirectPredictions`
    # (service.api.predictions); the routes declare them, and serve them in the in-process app.
    app.state.direct_routes = [
        DirectRoute(prediction_model, lambda request, model: predictions(request, model)),
        DirectRoute(infer_target, lambda request, target: v2_infer(request, *target)),
    ]

    @app.post(
        "/v1/models/{model}/predict",
        response_model=PredictionAnswer,
        responses=_ERRORS,
        openapi_extra=_PREDICT_REQUEST,
        summary="Inspect one image",
    )
    async def predict(model: str, request: Request) -> Response:
        # The query is read and checked by the core (`service.tasks.parse_options`), not declared here:
        # FastAPI's validation of five declared parameters took ~13% of the event loop's time per prediction.
        return await predictions(request, model)

    sample_sets = sample_sets_of(settings)
    app.include_router(thresholds_router(settings, served_models, sample_sets))
    app.include_router(sample_sets_router(sample_sets))
    app.include_router(versions_router(settings, served_models))
    app.include_router(review_router(settings, served_models))
    app.include_router(v2_router(served_models, ready, v2_infer))
    # The QA console (`service.console`): static pages over the routes above.
    app.add_api_route(CONSOLE_PATH, to_console, methods=["GET"], include_in_schema=False)
    app.mount(CONSOLE_PATH, ConsoleFiles(), name="console")

    # Last, so that every route above comes first. A path under /v1/ or /v2/ that no route takes
    # would otherwise fall through to BentoML's own router, which answers a plain-text 404.
    @app.api_route("/v1/{path:path}", methods=_ALL_METHODS, include_in_schema=False)
    @app.api_route("/v2/{path:path}", methods=_ALL_METHODS, include_in_schema=False)
    async def no_route(request: Request) -> JSONResponse:
        scope = request.scope
        allowed = sorted(
            {method for r in api_routes(app.routes) if r.matches(scope)[0] is Match.PARTIAL for method in r.methods}
        )
        if allowed:
            error = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)}"
            )
            return error_response(error, {"Allow": ", ".join(allowed)}, request.url.path)
        raise NotFound(f"no route for {request.method} {request.url.path}; see /v1/docs")

    return app
