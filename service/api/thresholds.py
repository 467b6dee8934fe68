"""HTTP routes of the thresholds: read, change, history, rollback, and the sweep on labelled samples.

    GET  /v1/models/{model}/thresholds            the active revision
    PUT  /v1/models/{model}/thresholds            a new revision (bearer token)
    GET  /v1/models/{model}/thresholds/history    revisions, newest first
    POST /v1/models/{model}/thresholds/rollback   a new revision with an earlier one's values (bearer token)
    POST /v1/models/{model}/thresholds/sweep      precision/recall per class over a threshold grid

Writes carry the revision they are based on (`expected_revision`); a stale one answers 409
and changes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from service.api.body import read_body
from service.api.schemas import ErrorResponse
from service.config import Settings
from service.errors import (
    Forbidden,
    InspectionError,
    InvalidParameters,
    MalformedRequest,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from service.pipeline.decode import SUPPORTED_FORMATS, sniff_format
from service.revisions import page_of
from service.served_models import ServedModels
from service.tasks import Answer, head_for
from service.thresholds.report import SweepReport
from service.thresholds.rules import RevisionNumber, ThresholdValue, parse_class_values
from service.thresholds.runner import run_sweep, sweep_options
from service.thresholds.sample_sets import SampleSets
from service.thresholds.samples import LabelledImage, SampleFiles, SampleSetError, ZipFiles, read_samples
from service.thresholds.sweep import swept_samples

log = logging.getLogger(__name__)

ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/octet-stream"})
# Images of one sweep in flight at once: enough to fill the model's batches, few enough to leave room for the line.
SWEEP_CONCURRENCY = 4

_bearer = HTTPBearer(auto_error=False, description="The token in INSPECTION_ADMIN_TOKEN.")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not valid JSON; or the samples archive is not a valid sample set, or an image in it is "
        "not decodable.",
        401: "Missing or wrong bearer token.",
        403: "Threshold changes are disabled: no token is configured.",
        404: "No such model.",
        409: "expected_revision is not the active revision: another change came first. Nothing was changed.",
        413: "Archive over the size limit.",
        415: "The body is not a zip archive.",
        422: "Bad parameters: unknown class, value outside 0..1, malformed body.",
    }
    return {status: {"model": ErrorResponse, "description": text[status]} for status in statuses}


class ThresholdRevisionView(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the store's ThresholdRevision

    model: str = Field(examples=["weld-classifier"])
    revision: int = Field(description="Numbered from 1 per model; the highest is active.", examples=[3])
    kind: str = Field(
        description="initial (a manifest's defaults), update, rollback, or carried (the same values, carried over "
        "to the model version activated).",
        examples=["update"],
    )
    thresholds: dict[str, float] = Field(
        description="Score threshold per defect class: a class at or above its threshold rejects the part.",
        examples=[{"porosity": 0.5, "crack": 0.25, "undercut": 0.5}],
    )
    nms_iou: float | None = Field(description="Detectors: the NMS IoU. null for other tasks.", examples=[None])
    review_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="The review band's lower bound, for the classes that have one: at or above it and below the "
        "class's threshold, the class sends the part to review. Empty: accept or reject only.",
        examples=[{"crack": 0.12}],
    )
    model_version: int = Field(description="The model version served when this revision was written.", examples=[1])
    author: str = Field(examples=["j.moreau"])
    reason: str = Field(examples=["missed crack on line 3, lot 2291"])
    created_at: datetime
    replaces: int | None = Field(description="The revision that was active before this one.", examples=[2])
    restores: int | None = Field(
        description="Rollbacks: the revision whose values this one brings back.", examples=[None]
    )


class SampleSetView(BaseModel):
    name: str = Field(examples=["weld-cls-line2"])
    kind: str = Field(description="zip or folder.", examples=["zip"])
    size_bytes: int


class SampleSetList(BaseModel):
    folder: str = Field(description="Where they are kept: INSPECTION_SAMPLE_SETS_DIR.")
    sets: list[SampleSetView]


class ThresholdHistory(BaseModel):
    model: str = Field(examples=["weld-classifier"])
    revisions: list[ThresholdRevisionView] = Field(description="Newest first.")
    next_before: int | None = Field(
        description="Pass as `before` for the next, older page; null on the last page.", examples=[None]
    )


class AuditedChange(BaseModel):
    """What every change of state carries: who, why, and the revision it is based on."""

    model_config = ConfigDict(extra="forbid")

    author: str = Field(min_length=1, max_length=200, description="Who makes the change.", examples=["j.moreau"])
    reason: str = Field(
        min_length=1,
        max_length=2000,
        description="Why, for the audit trail.",
        examples=["missed crack on line 3, lot 2291"],
    )
    expected_revision: RevisionNumber = Field(
        description="The revision this change is based on (the one you read). 409 when it is no longer the active one.",
        examples=[2],
    )


class ThresholdChange(AuditedChange):
    thresholds: dict[str, ThresholdValue] = Field(
        default_factory=dict,
        description="New thresholds, 0 to 1, for some or all defect classes; the others keep their value.",
        examples=[{"crack": 0.25}],
    )
    nms_iou: ThresholdValue | None = Field(default=None, description="Detectors: a new NMS IoU.")
    review_thresholds: dict[str, ThresholdValue | None] = Field(
        default_factory=dict,
        description="New review thresholds, 0 to the class's threshold, for some classes (null: the class loses its "
        "band); the others keep theirs.",
        examples=[{"crack": 0.12}],
    )


class ThresholdRollback(AuditedChange):
    to_revision: RevisionNumber = Field(description="The earlier revision whose values come back.", examples=[1])


def admin_only(settings: Settings, what: str) -> Callable[..., None]:
    """A route dependency: the request carries the admin token (`INSPECTION_ADMIN_TOKEN`); `what` names
    the changes it guards in the refusals."""

    def writer(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
        if not expected:
            raise Forbidden(
                f"{what} are disabled on this server: set INSPECTION_ADMIN_TOKEN to a secret "
                "in the service's environment and restart it, then send `Authorization: Bearer <token>`"
            )
        if credentials is None:
            raise Unauthorized(f"{what} need `Authorization: Bearer <token>` (the INSPECTION_ADMIN_TOKEN)")
        if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise Unauthorized("wrong bearer token")

    return writer


def thresholds_router(
    settings: Settings, served_models: Callable[[], ServedModels], sample_sets: SampleSets
) -> APIRouter:
    router = APIRouter(prefix="/v1/models/{model}/thresholds", tags=["thresholds"])

    # Database routes are plain functions: FastAPI runs them in its thread pool, off the event loop
    # that carries the predictions.
    writer = admin_only(settings, "threshold changes")

    @router.get("", response_model=ThresholdRevisionView, responses=_errors(404), summary="Active thresholds")
    def read(model: str) -> ThresholdRevisionView:
        models = served_models()
        return ThresholdRevisionView.model_validate(models.thresholds.current(models.get(model).manifest))

    @router.put(
        "",
        response_model=ThresholdRevisionView,
        responses=_errors(400, 401, 403, 404, 409, 422),
        dependencies=[Depends(writer)],
        summary="Change thresholds (a new revision)",
    )
    def change(model: str, body: ThresholdChange) -> ThresholdRevisionView:
        models = served_models()
        revision = models.thresholds.update(
            models.get(model).manifest,
            thresholds=body.thresholds,
            nms_iou=body.nms_iou,
            author=body.author,
            reason=body.reason,
            expected_revision=body.expected_revision,
            review_thresholds=body.review_thresholds,
        )
        return ThresholdRevisionView.model_validate(revision)

    @router.get("/history", response_model=ThresholdHistory, responses=_errors(404), summary="Revisions, newest first")
    def history(
        model: str,
        limit: int = Query(50, ge=1, le=500, description="At most this many revisions."),
        before: int | None = Query(
            None, ge=1, le=2**63 - 1, description="Only revisions older than this one (the next page)."
        ),
    ) -> ThresholdHistory:
        models = served_models()
        name = models.get(model).manifest.name
        page, next_before = page_of(models.thresholds.history(name, limit=limit + 1, before=before), limit)
        return ThresholdHistory(
            model=name, revisions=[ThresholdRevisionView.model_validate(r) for r in page], next_before=next_before
        )

    @router.post(
        "/rollback",
        response_model=ThresholdRevisionView,
        responses=_errors(400, 401, 403, 404, 409, 422),
        dependencies=[Depends(writer)],
        summary="Bring back an earlier revision's values (a new revision)",
    )
    def rollback(model: str, body: ThresholdRollback) -> ThresholdRevisionView:
        models = served_models()
        revision = models.thresholds.rollback(
            models.get(model).manifest,
            to_revision=body.to_revision,
            author=body.author,
            reason=body.reason,
            expected_revision=body.expected_revision,
        )
        return ThresholdRevisionView.model_validate(revision)

    @router.post(
        "/sweep",
        response_model=SweepReport,
        responses=_errors(400, 404, 413, 415, 422),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        summary="Precision/recall per class over a threshold grid, on labelled samples (zip)",
    )
    async def sweep(
        model: str,
        request: Request,
        targets: str | None = Query(
            None, description="Target recall per class; the proposal meets it where it can.", examples=["crack:0.99"]
        ),
        step: float = Query(0.01, gt=0.0, le=0.5, description="Grid step between thresholds 0 and 1."),
        with_samples: bool = Query(
            False,
            alias="samples",
            description="Also list each image's labels and the model's answer (`samples`), as the QA console does.",
        ),
        max_miss_rate: str | None = Query(
            None,
            description="Review band: the share of a class's labelled defects that may escape (neither rejected nor "
            "reviewed), per class (`crack:0.01`) or one value for all.",
            examples=["crack:0.01"],
        ),
        max_review_rate: str | None = Query(
            None,
            description="Review band: the share of parts the line can staff to review, per class or one value for all.",
            examples=["0.05"],
        ),
        sample_set: str | None = Query(
            None,
            alias="set",
            description="A labelled sample set kept on the server (`GET /v1/sample-sets`) instead of a zip body.",
        ),
    ) -> SweepReport:
        models = served_models()
        # The active version, held from the start: a version unloaded meanwhile is released once the sweep is over.
        with models.held(model) as predictor:
            manifest = predictor.manifest
            # A target recall per class: `crack:0.99,porosity:0.9`.
            try:
                wanted = parse_class_values(targets, manifest.defect_classes, "targets") if targets else {}
                misses = (
                    parse_class_values(max_miss_rate, manifest.defect_classes, "max_miss_rate") if max_miss_rate else {}
                )
                reviews = (
                    parse_class_values(max_review_rate, manifest.defect_classes, "max_review_rate")
                    if max_review_rate
                    else {}
                )
            except ValueError as exc:
                raise InvalidParameters(str(exc)) from None
            if sample_set is not None:
                if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
                    raise InvalidParameters("name a sample set (set=) or send a zip body, not both")
                files: SampleFiles = await asyncio.to_thread(sample_sets.open, sample_set)
            else:
                media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if media_type not in ZIP_TYPES:
                    raise UnsupportedMediaType(
                        "send the samples as a zip archive with Content-Type application/zip, "
                        f"got {media_type or 'none'}"
                    )
                archive = await read_body(
                    request, settings.max_sweep_bytes, settings.body_timeout_s, "archive", "INSPECTION_MAX_SWEEP_BYTES"
                )
            try:
                if sample_set is None:
                    files = ZipFiles(archive, settings.max_sweep_bytes, settings.max_sweep_images * 2 + 1)
                samples = read_samples(files, manifest, head_for(manifest).read_labels)
            except SampleSetError as exc:
                raise MalformedRequest(f"samples: {exc}") from exc
            if len(samples) > settings.max_sweep_images:
                raise PayloadTooLarge(f"{len(samples)} images; a sweep takes at most {settings.max_sweep_images}")

            active = models.thresholds.active(manifest)
            options = predictor.options(sweep_options(manifest))

            async def predict(sample: LabelledImage) -> Answer:
                try:
                    return await predictor.predict(files.read(sample.name), options, lambda _: active)
                except InspectionError as exc:
                    raise type(exc)(f"{sample.name}: {exc.message}") from exc

            tally = await run_sweep(
                manifest,
                samples,
                predict,
                SWEEP_CONCURRENCY,
                lambda line: log.info("sweep of %s: %s", manifest.name, line),
            )
            try:
                report = tally.report(active.values, active.revision, active.nms_iou, wanted, step, misses, reviews)
            except ValueError as exc:
                raise InvalidParameters(str(exc)) from exc
            answered = report.to_report()
            if with_samples:
                answered.samples = swept_samples(tally)
            return answered

    return router


def sample_sets_of(settings: Settings) -> SampleSets:
    """The labelled sample sets kept on the server (`INSPECTION_SAMPLE_SETS_DIR`), within the sweep's limits."""
    return SampleSets(settings.sample_sets, settings.max_sweep_bytes, settings.max_sweep_images * 2 + 1)


def sample_sets_router(sample_sets: SampleSets) -> APIRouter:
    router = APIRouter(tags=["thresholds"])

    @router.get(
        "/v1/sample-sets",
        response_model=SampleSetList,
        summary="Labelled sample sets kept on the server",
    )
    def list_sample_sets() -> SampleSetList:
        return SampleSetList(
            folder=str(sample_sets.root),
            sets=[SampleSetView(name=s.name, kind=s.kind, size_bytes=s.size_bytes) for s in sample_sets.list()],
        )

    @router.get(
        "/v1/sample-sets/{name}/files/{file:path}",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}, "description": "The file."}, **_errors(404, 413)},
        summary="One file of a sample set kept on the server (the console shows its frames)",
    )
    def sample_set_file(name: str, file: str) -> Response:
        data = sample_sets.read(name, file)
        media = SUPPORTED_FORMATS.get(sniff_format(data) or "", "application/octet-stream")
        return Response(data, media_type=media)

    return router
