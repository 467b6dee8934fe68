"""The model lifecycle over HTTP: `/v1/models/{model}/versions` (which version is active, its history,
activate, roll back, pin, load and unload a version), `/v1/models/{model}/load` and `/unload` (the whole
model), `/v1/models/{model}/shadow` (shadow runs, their report and kept frames) and `/v1/repository`
(what the model store holds and what is served, by version and state).

A change that brings a version in (an activation, a rollback, a load, a shadow run) loads and warms it
up in the worker that takes the request first, refusing it (422 `version_refused`) when it cannot go
live, while the active version keeps serving; only then is the change written, with who and why, as
a new revision (409 when `expected_revision` is stale). Every worker follows the database within a
fraction of a second (`service.lifecycle.watcher`), loading versions beside the ones it serves and
switching once they are warm, so no request is refused or dropped for a swap; requests under way
finish on the version they started with, and a version no longer wanted is released after its last
request. The answer waits, a few seconds at most, for every worker of this server to have followed,
and says when each did. Pinning stops a new export from going live by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import ErrorResponse, FrameView
from service.api.thresholds import AuditedChange, admin_only
from service.config import Settings
from service.errors import InspectionError, InvalidParameters, NotFound
from service.lifecycle.shadow import SOURCE as SHADOW
from service.lifecycle.shadow import Tally, quantile_ms
from service.lifecycle.store import MAX_KEPT_FRAMES, Activation, ActivationKind, Shadow
from service.lifecycle.watcher import server_identity
from service.model_store import model_names, version_numbers
from service.revisions import page_of
from service.served_models import ServedModels

# How long an activation's answer waits for every worker of this server to have switched.
SWITCH_WAIT_S = 5.0


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not valid JSON.",
        401: "Missing or wrong bearer token.",
        403: "Version changes are disabled: no token is configured.",
        404: "No such model, version or frame.",
        409: "expected_revision is not the newest revision: another change came first. Nothing was changed.",
        422: "The version cannot go live (version_refused), or bad parameters.",
    }
    return {status: {"model": ErrorResponse, "description": text[status]} for status in statuses}


class ShadowView(BaseModel):
    version: int = Field(description="The candidate version.", examples=[3])
    share: float = Field(description="The share of the active version's frames it answers too.", examples=[0.25])
    keep_frames: int = Field(description="Disagreeing frames kept for review, at most.", examples=[50])


class ActivationView(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the store's Activation

    model: str = Field(examples=["weld-classifier"])
    revision: int = Field(description="Numbered from 1 per model; the highest is in force.", examples=[3])
    kind: str = Field(
        description="initial, activate, rollback, pin, unpin, load, unload, shadow or unshadow.", examples=["activate"]
    )
    version: int = Field(description="The active version from this revision on.", examples=[2])
    served: bool = Field(description="false: the model is unloaded, and answers 404.")
    loaded: list[int] = Field(description="Versions loaded beside the active one.", examples=[[1]])
    shadow: ShadowView | None = Field(description="The shadow run in force, if any.")
    pinned: bool = Field(description="A new version in the store does not go live by itself.")
    author: str = Field(examples=["a.lindqvist"])
    reason: str = Field(examples=["retrained on lots 2200-2290"])
    created_at: datetime
    replaces: int | None = Field(description="The revision before this one.", examples=[2])


class SwitchedView(ActivationView):
    workers_switched: dict[int, datetime] = Field(
        description="When each worker of this server (by process id) had followed the change."
    )
    all_switched_at: datetime | None = Field(
        description=f"When the last worker of this server followed; null if not all had within {SWITCH_WAIT_S:g} s."
    )


class VersionsView(BaseModel):
    model: str
    active: int = Field(description="The version that answers requests naming none.", examples=[2])
    served: bool = Field(description="false: the model is unloaded.")
    pinned: bool
    shadow: ShadowView | None
    revision: int = Field(description="The newest revision of the model's versions.")
    loaded: list[int] = Field(description="The versions this worker has loaded.", examples=[[1, 2]])
    in_store: list[int] = Field(description="The versions the model store holds.", examples=[[1, 2, 3]])


class VersionHistory(BaseModel):
    model: str
    revisions: list[ActivationView] = Field(description="Newest first.")
    next_before: int | None = Field(description="Pass as `before` for the next, older page; null on the last page.")


class Activate(AuditedChange):
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | Literal["latest"] = Field(
        description="The version to make active, or `latest`: the newest in the store.", examples=[2]
    )


class Pin(AuditedChange):
    pinned: bool = Field(description="true: a new version in the store does not go live by itself.")


class StartShadow(AuditedChange):
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | Literal["latest"] = Field(
        description="The candidate version, or `latest`: the newest in the store.", examples=[3]
    )
    share: float = Field(
        default=1.0, gt=0.0, le=1.0, description="The share of the active version's frames it answers too."
    )
    keep_frames: int = Field(
        default=0,
        ge=0,
        le=MAX_KEPT_FRAMES,
        description="Keep up to this many disagreeing frames (the image and both answers) for review. "
        "These are production images: 0, the default, keeps none.",
    )


class VersionState(BaseModel):
    version: int
    state: Literal["active", "loaded", "shadow", "available"] = Field(
        description="active: answers requests naming none; loaded: answers requests naming it; shadow: the shadow "
        "run's candidate; available: in the store, not loaded."
    )


class RepositoryModel(BaseModel):
    model: str
    state: Literal["loaded", "unloaded"] = Field(description="unloaded: predictions answer 404.")
    revision: int = Field(description="The newest lifecycle revision (`expected_revision` for a change).")
    versions: list[VersionState] = Field(description="Every version in the store, in order.")


class Repository(BaseModel):
    models: list[RepositoryModel]


class IndexRequest(BaseModel):
    ready: bool = Field(default=False, description="Only the versions ready for inference.")


class IndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class ClassAgreementView(BaseModel):
    decision: float | None = Field(description="Share of frames agreeing on this class's decision.", examples=[0.99])
    label: float | None = Field(
        description="Share of frames agreeing on the class itself: the same label (classification), boxes matched "
        "one to one at IoU >= 0.5 (detection), masks at IoU >= 0.5 (segmentation), or both without it.",
        examples=[0.97],
    )
    mean_iou: float | None = Field(description="Mean IoU of the class's matched boxes or masks; null where none.")


class LatencyView(BaseModel):
    mean_ms: float | None
    p50_ms: float | None = Field(description="Upper bound of the latency bucket holding the median.")
    p99_ms: float | None = Field(description="Upper bound of the latency bucket holding the 99th percentile.")


class ShadowReport(BaseModel):
    model: str
    run: int = Field(description="The revision that started the run.")
    running: bool = Field(description="false: the run has ended; its counts are final.")
    candidate: int = Field(description="The candidate version.")
    active: int = Field(description="The version active when the run started.")
    share: float
    started_at: datetime
    started_by: str
    compared: int = Field(description="Frames both versions answered.")
    shed: int = Field(description="Frames the run would have taken, not taken under load.")
    failed: int = Field(description="Frames the candidate failed on (or took over 10 s).")
    agreement: float | None = Field(
        description="Share of compared frames agreeing on every class's decision and label.", examples=[0.98]
    )
    decision_agreement: float | None = Field(description="Share of compared frames with the same decision.")
    confusion: dict[str, dict[str, int]] = Field(
        description="Frames by the active version's decision, then the candidate's.",
        examples=[{"accept": {"accept": 950, "reject": 12}, "reject": {"accept": 3, "reject": 35}}],
    )
    classes: dict[str, ClassAgreementView]
    latency: dict[str, LatencyView] = Field(
        description="active and candidate: from the decoded image to the answer (batch, model run, post-processing)."
    )
    latency_difference_ms: float | None = Field(description="Candidate's mean latency minus the active version's.")
    kept_frames: int = Field(description="Disagreeing frames kept for review.")
    as_of: datetime | None = Field(description="When the oldest of the workers' counts added up here was saved.")


class KeptFrameView(FrameView):
    run: int
    active: dict[str, Any] = Field(description="The active version's answer.")
    candidate: dict[str, Any] = Field(description="The candidate's answer.")
    classes: dict[str, dict[str, Any]] = Field(description="Per class: decision, label, iou (as in the report).")


class KeptFrames(BaseModel):
    frames: list[KeptFrameView] = Field(description="Oldest first; the image at `/shadow/frames/{id}`.")
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="A version number.")]
Run = Annotated[
    int | None, Query(ge=1, le=2**31 - 1, description="An earlier shadow run: the revision that started it.")
]


def versions_router(settings: Settings, served_models: Callable[[], ServedModels]) -> APIRouter:
    router = APIRouter(tags=["versions"])
    writer = admin_only(settings, "version changes")
    prefix = "/v1/models/{model}"
    # Database and loading routes are plain functions: FastAPI runs them in its thread pool, off the
    # event loop that carries the predictions.

    @router.get(
        prefix + "/versions",
        response_model=VersionsView,
        responses=_errors(404),
        summary="Active, loaded and stored versions",
    )
    def read(model: str) -> VersionsView:
        models = served_models()
        current = _state(settings, models, model)  # a model only in the store too
        return VersionsView(
            model=model,
            active=current.version,
            served=current.served,
            pinned=current.pinned,
            shadow=_shadow_view(current.shadow),
            revision=current.revision,
            loaded=models.versions(model) if model in models else [],
            in_store=version_numbers(settings.model_store / model),
        )

    @router.get(
        prefix + "/versions/history", response_model=VersionHistory, responses=_errors(404), summary="Version history"
    )
    def history(
        model: str,
        limit: int = Query(50, ge=1, le=500, description="Revisions per page."),
        before: int | None = Query(None, ge=1, le=2**63 - 1, description="Only revisions older than this one."),
    ) -> VersionHistory:
        models = served_models()
        models.state(model)
        page, next_before = page_of(models.lifecycle.history(model, limit=limit + 1, before=before), limit)
        return VersionHistory(model=model, revisions=[_view(r) for r in page], next_before=next_before)

    def change_route(path: str, summary: str, response_model: type[BaseModel] = SwitchedView) -> Callable:
        return router.post(
            prefix + path,
            response_model=response_model,
            responses=_errors(400, 401, 403, 404, 409, 422),
            dependencies=[Depends(writer)],
            summary=summary,
        )

    @change_route("/versions/activate", "Make a version active, on every worker")
    def activate(model: str, body: Activate) -> SwitchedView:
        models = served_models()
        models.get(model)  # 404 first
        version = _latest(settings, model) if body.version == "latest" else body.version
        return _load_then(
            settings, models, model, version, lambda: models.lifecycle.activate(model, version, **_audit(body))
        )

    @change_route("/versions/rollback", "Back to the version active before this one, on every worker")
    def rollback(model: str, body: AuditedChange) -> SwitchedView:
        models = served_models()
        previous = models.lifecycle.previous_version(model, models.state(model).version)
        if previous is None:
            raise InvalidParameters(f"{model} has had no other active version to roll back to")
        return _load_then(settings, models, model, previous, lambda: models.lifecycle.rollback(model, **_audit(body)))

    @change_route("/versions/pin", "Pin or unpin the active version", ActivationView)
    def pin(model: str, body: Pin) -> ActivationView:
        models = served_models()
        models.state(model)
        return _view(models.lifecycle.pin(model, body.pinned, **_audit(body)))

    @change_route("/versions/{version}/load", "Load a version beside the active one, on every worker")
    def load_version(model: str, version: Version, body: AuditedChange) -> SwitchedView:
        models = served_models()
        models.get(model)  # 404 first, also while unloaded
        return _load_then(
            settings, models, model, version, lambda: models.lifecycle.load(model, version, **_audit(body))
        )

    @change_route("/versions/{version}/unload", "Unload a version loaded beside the active one, on every worker")
    def unload_version(model: str, version: Version, body: AuditedChange) -> SwitchedView:
        models = served_models()
        models.active_version(model)  # 404 first
        return _followed(settings, models, models.lifecycle.unload(model, version, **_audit(body)))

    @change_route("/load", "Load a model (at its active version), on every worker")
    def load_model(model: str, body: AuditedChange) -> SwitchedView:
        models = served_models()
        current = _state(settings, models, model)
        return _load_then(
            settings, models, model, current.version, lambda: models.lifecycle.load(model, None, **_audit(body))
        )

    @change_route("/unload", "Unload every version of a model, on every worker")
    def unload_model(model: str, body: AuditedChange) -> SwitchedView:
        models = served_models()
        models.active_version(model)  # 404 first
        return _followed(settings, models, models.lifecycle.unload(model, None, **_audit(body)))

    @change_route("/shadow", "Start a shadow run of a candidate version, on every worker")
    def start_shadow(model: str, body: StartShadow) -> SwitchedView:
        models = served_models()
        models.get(model)  # 404 first
        version = _latest(settings, model) if body.version == "latest" else body.version
        spec = Shadow(version, body.share, body.keep_frames)
        return _load_then(
            settings, models, model, version, lambda: models.lifecycle.start_shadow(model, spec, **_audit(body))
        )

    @change_route("/shadow/stop", "End the shadow run, on every worker")
    def stop_shadow(model: str, body: AuditedChange) -> SwitchedView:
        models = served_models()
        models.active_version(model)  # 404 first
        return _followed(settings, models, models.lifecycle.stop_shadow(model, **_audit(body)))

    @router.get(
        prefix + "/shadow",
        response_model=ShadowReport,
        responses=_errors(404),
        summary="The shadow run's agreement report",
    )
    def shadow_report(
        model: str,
        run: Run = None,
    ) -> ShadowReport:
        models = served_models()
        models.active_version(model)  # 404 first
        return _report(models, model, run)

    @router.get(
        prefix + "/shadow/frames",
        response_model=KeptFrames,
        responses=_errors(404),
        summary="Disagreeing frames a shadow run kept",
    )
    def shadow_frames(
        model: str,
        run: Run = None,
        limit: int = Query(50, ge=1, le=500),
        after: int = Query(0, ge=0, le=2**63 - 1, description="Only frames with a higher id."),
    ) -> KeptFrames:
        models = served_models()
        models.active_version(model)
        started = _run(models, model, run)
        found = models.frames.list(model, SHADOW, started.revision, limit=limit + 1, after=after)
        page = found[:limit]
        return KeptFrames(
            frames=[KeptFrameView.of(f, run=f.run, **f.details) for f in page],
            next_after=page[-1].id if len(found) > limit else None,
        )

    @router.get(
        prefix + "/shadow/frames/{frame_id}",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}, "description": "The frame as it was sent."}, **_errors(404)},
        summary="A kept frame's image",
    )
    def shadow_frame(model: str, frame_id: int = Path(ge=1, le=2**63 - 1)) -> Response:
        found = served_models().frames.image(model, SHADOW, frame_id)
        if found is None:
            raise NotFound(f"{model} has no kept frame {frame_id}")
        image, content_type = found
        return Response(image, media_type=content_type)

    @router.get(
        "/v1/repository",
        response_model=Repository,
        tags=["versions"],
        summary="Every model in the store: served or not, and each version's state",
    )
    def repository() -> Repository:
        return Repository(models=repository_index(settings, served_models()))

    @router.post(
        "/v2/repository/index",
        response_model=list[IndexEntry],
        responses={400: {"description": "The body is not valid JSON."}},
        tags=["Open Inference Protocol v2"],
        summary="Model repository index (Triton's repository extension)",
    )
    def repository_v2(body: IndexRequest | None = None) -> list[IndexEntry]:
        entries = [
            IndexEntry(
                name=entry.model,
                version=str(version.version),
                state="UNAVAILABLE" if version.state == "available" else "READY",
                reason="" if version.state != "available" else f"not loaded (model {entry.state})",
            )
            for entry in repository_index(settings, served_models())
            for version in entry.versions
        ]
        return [e for e in entries if e.state == "READY"] if body is not None and body.ready else entries

    return router


def repository_index(settings: Settings, models: ServedModels) -> list[RepositoryModel]:
    """What the model store holds and what is served, by model and version, as the database says."""
    found = []
    for name in sorted({*model_names(settings.model_store), *models.known()}):
        state = _state(settings, models, name)
        served = state.served
        versions = []
        for version in version_numbers(settings.model_store / name):
            if served and version == state.version:
                kind = "active"
            elif served and state.shadow is not None and version == state.shadow.version:
                kind = "shadow"
            elif served and version in state.loaded:
                kind = "loaded"
            else:
                kind = "available"
            versions.append(VersionState(version=version, state=kind))
        found.append(
            RepositoryModel(
                model=name,
                state="loaded" if served else "unloaded",
                revision=state.revision,
                versions=versions,
            )
        )
    return found


def _state(settings: Settings, models: ServedModels, model: str) -> Activation:
    """The model's lifecycle revision in force; a model only in the model store gets revision 1 on first
    use, unloaded, at its newest version."""
    if model in models:
        return models.state(model)
    numbers = version_numbers(settings.model_store / model)
    if not numbers:
        raise NotFound(f"no model named {model!r} is served or in the model store")
    return models.lifecycle.current(model, numbers[-1], served=False)


def _audit(body: AuditedChange) -> dict[str, Any]:
    return {"author": body.author, "reason": body.reason, "expected_revision": body.expected_revision}


def _shadow_view(shadow: Shadow | None) -> ShadowView | None:
    return (
        None
        if shadow is None
        else ShadowView(version=shadow.version, share=shadow.share, keep_frames=shadow.keep_frames)
    )


def _view(change: Activation) -> ActivationView:
    return ActivationView(
        model=change.model,
        revision=change.revision,
        kind=change.kind.value,
        version=change.version,
        served=change.served,
        loaded=list(change.loaded),
        shadow=_shadow_view(change.shadow),
        pinned=change.pinned,
        author=change.author,
        reason=change.reason,
        created_at=change.created_at,
        replaces=change.replaces,
    )


def _latest(settings: Settings, model: str) -> int:
    numbers = version_numbers(settings.model_store / model)
    if not numbers:
        raise InvalidParameters(f"the model store holds no version of {model}")
    return numbers[-1]


def _run(models: ServedModels, model: str, run: int | None) -> Activation:
    started = models.lifecycle.shadow_run(model, run)
    if started is None:
        raise NotFound(
            f"{model} has no shadow run"
            + ("" if run is None else f" started by revision {run}")
            + "; start one with POST /v1/models/{model}/shadow".replace("{model}", model)
        )
    return started


def _report(models: ServedModels, model: str, run: int | None) -> ShadowReport:
    started = _run(models, model, run)
    assert started.shadow is not None
    here = models.shadow(model)
    if here is not None and here.run == started.revision:
        here.flush(server_identity(), os.getpid())
    tally, as_of = Tally(), None
    for text, saved_at in models.lifecycle.tallies(model, started.revision):
        tally.merge(Tally.from_json(text))
        as_of = saved_at if as_of is None else min(as_of, saved_at)
    running = models.lifecycle.shadow_run(model) == started
    compared = tally.compared

    def share(count: int, of: int) -> float | None:
        return None if of == 0 else count / of

    same_decision = sum(row.get(active, 0) for active, row in tally.confusion.items())
    latency = {
        side: LatencyView(
            mean_ms=share(total, compared),  # type: ignore[arg-type]
            p50_ms=quantile_ms(buckets, 0.5),
            p99_ms=quantile_ms(buckets, 0.99),
        )
        for side, buckets, total in (
            ("active", tally.active_ms, tally.active_ms_sum),
            ("candidate", tally.candidate_ms, tally.candidate_ms_sum),
        )
    }
    return ShadowReport(
        model=model,
        run=started.revision,
        running=running,
        candidate=started.shadow.version,
        active=started.version,
        share=started.shadow.share,
        started_at=started.created_at,
        started_by=started.author,
        compared=compared,
        shed=tally.shed,
        failed=tally.failed,
        agreement=share(tally.agreed, compared),
        decision_agreement=share(same_decision, compared),
        confusion=tally.confusion,
        classes={
            name: ClassAgreementView(
                decision=share(counts.decision_agreed, compared),
                label=share(counts.label_agreed, compared),
                mean_iou=None if counts.iou_count == 0 else counts.iou_sum / counts.iou_count,
            )
            for name, counts in tally.classes.items()
        },
        latency=latency,
        latency_difference_ms=None if compared == 0 else (tally.candidate_ms_sum - tally.active_ms_sum) / compared,
        kept_frames=models.frames.count(model, SHADOW, started.revision),
        as_of=as_of,
    )


def _load_then(
    settings: Settings, models: ServedModels, model: str, version: int, write: Callable[[], Activation]
) -> SwitchedView:
    """`version` loaded and warmed up in this worker (refused, 422, when it cannot go live), then the
    change `write` makes, followed by every worker. When the change is refused (409, 422), this
    worker goes back to what the newest revision wants: the version loaded for it is released."""
    models.load_version(model, version)
    try:
        change = write()
    except InspectionError:
        newest = models.lifecycle.newest(model)
        if newest is not None:
            models.follow(newest, models.lifecycle.run_in_force(newest))
        raise
    return _followed(settings, models, change)


def _followed(settings: Settings, models: ServedModels, change: Activation) -> SwitchedView:
    """`change`, once every worker of this server has followed it (or the wait is over). An activation
    or a rollback carries the model's thresholds over to its version, recorded as a thresholds revision."""
    server, worker = server_identity(), os.getpid()
    if change.kind in (ActivationKind.ACTIVATE, ActivationKind.ROLLBACK):
        models.carry_thresholds(change)
    models.follow(change, models.lifecycle.run_in_force(change))
    models.lifecycle.report_switch(server, worker, change.model, change.version)
    deadline = time.monotonic() + SWITCH_WAIT_S
    while True:
        switched = models.lifecycle.switched(server, change.model, change.version, since=change.created_at)
        if len(switched) >= settings.workers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return SwitchedView(
        **_view(change).model_dump(),
        workers_switched=switched,
        all_switched_at=max(switched.values()) if len(switched) >= settings.workers else None,
    )
