"""`/v1/models/{model}/versions`: which version of a model is active, its history, and changing it.

An activation (or a rollback) loads and warms up the version in the worker that takes the request,
refusing it (422 `version_refused`) when it cannot go live, while the active version keeps serving;
only then is the change written, with who and why, as a new revision (409 when `expected_revision`
is stale). Every worker follows the database within a fraction of a second
(`service.lifecycle.watcher`), loading the version beside the one it serves and switching once it
is warm, so no request is refused or dropped for a swap; requests under way finish on the version
they started with. The answer waits, a few seconds at most, for every worker of this server to
have switched, and says when each did. Pinning stops a new export from going live by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import ErrorResponse
from service.api.thresholds import AuditedChange, admin_only
from service.config import Settings
from service.errors import InvalidParameters
from service.lifecycle.store import Activation
from service.lifecycle.watcher import server_identity
from service.model_store import version_numbers
from service.revisions import page_of
from service.served_models import ServedModels

# How long an activation's answer waits for every worker of this server to have switched.
SWITCH_WAIT_S = 5.0


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not valid JSON.",
        401: "Missing or wrong bearer token.",
        403: "Version changes are disabled: no token is configured.",
        404: "No such model.",
        409: "expected_revision is not the newest revision: another change came first. Nothing was changed.",
        422: "The version cannot go live (version_refused), or bad parameters.",
    }
    return {status: {"model": ErrorResponse, "description": text[status]} for status in statuses}


class ActivationView(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the store's Activation

    model: str = Field(examples=["weld-classifier"])
    revision: int = Field(description="Numbered from 1 per model; the highest is in force.", examples=[3])
    kind: str = Field(description="initial, activate, rollback, pin or unpin.", examples=["activate"])
    version: int = Field(description="The active version from this revision on.", examples=[2])
    pinned: bool = Field(description="A new version in the store does not go live by itself.")
    author: str = Field(examples=["a.lindqvist"])
    reason: str = Field(examples=["retrained on lots 2200-2290"])
    created_at: datetime
    replaces: int | None = Field(description="The revision before this one.", examples=[2])


class SwitchedView(ActivationView):
    workers_switched: dict[int, datetime] = Field(
        description="When each worker of this server (by process id) had switched to the version."
    )
    all_switched_at: datetime | None = Field(
        description=f"When the last worker of this server switched; null if not all had within {SWITCH_WAIT_S:g} s."
    )


class VersionsView(BaseModel):
    model: str
    active: int = Field(description="The version that answers requests naming none.", examples=[2])
    pinned: bool
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


def versions_router(settings: Settings, served_models: Callable[[], ServedModels]) -> APIRouter:
    router = APIRouter(prefix="/v1/models/{model}/versions", tags=["versions"])
    writer = admin_only(settings, "version changes")
    # Database and loading routes are plain functions: FastAPI runs them in its thread pool, off the
    # event loop that carries the predictions.

    @router.get("", response_model=VersionsView, responses=_errors(404), summary="Active, loaded and stored versions")
    def read(model: str) -> VersionsView:
        models = served_models()
        active = models.active_version(model)
        current = models.lifecycle.current(model, active)
        return VersionsView(
            model=model,
            active=active,
            pinned=current.pinned,
            revision=current.revision,
            loaded=models.versions(model),
            in_store=version_numbers(settings.model_store / model),
        )

    @router.get("/history", response_model=VersionHistory, responses=_errors(404), summary="Version history")
    def history(
        model: str,
        limit: int = Query(50, ge=1, le=500, description="Revisions per page."),
        before: int | None = Query(None, ge=1, le=2**63 - 1, description="Only revisions older than this one."),
    ) -> VersionHistory:
        models = served_models()
        models.lifecycle.current(model, models.active_version(model))
        page, next_before = page_of(models.lifecycle.history(model, limit=limit + 1, before=before), limit)
        return VersionHistory(
            model=model, revisions=[ActivationView.model_validate(r) for r in page], next_before=next_before
        )

    @router.post(
        "/activate",
        response_model=SwitchedView,
        responses=_errors(400, 401, 403, 404, 409, 422),
        dependencies=[Depends(writer)],
        summary="Make a version active, on every worker",
    )
    def activate(model: str, body: Activate) -> SwitchedView:
        models = served_models()
        models.get(model)  # 404 first
        version = _latest(settings, model) if body.version == "latest" else body.version
        models.load_version(model, version)
        change = models.lifecycle.activate(
            model, version, author=body.author, reason=body.reason, expected_revision=body.expected_revision
        )
        return _switched(settings, models, change)

    @router.post(
        "/rollback",
        response_model=SwitchedView,
        responses=_errors(400, 401, 403, 404, 409, 422),
        dependencies=[Depends(writer)],
        summary="Back to the version active before this one, on every worker",
    )
    def rollback(model: str, body: AuditedChange) -> SwitchedView:
        models = served_models()
        previous = models.lifecycle.previous_version(model, models.active_version(model))
        if previous is None:
            raise InvalidParameters(f"{model} has had no other active version to roll back to")
        models.load_version(model, previous)
        change = models.lifecycle.rollback(
            model, author=body.author, reason=body.reason, expected_revision=body.expected_revision
        )
        return _switched(settings, models, change)

    @router.post(
        "/pin",
        response_model=ActivationView,
        responses=_errors(400, 401, 403, 404, 409, 422),
        dependencies=[Depends(writer)],
        summary="Pin or unpin the active version",
    )
    def pin(model: str, body: Pin) -> ActivationView:
        models = served_models()
        models.lifecycle.current(model, models.active_version(model))
        change = models.lifecycle.pin(
            model, body.pinned, author=body.author, reason=body.reason, expected_revision=body.expected_revision
        )
        return ActivationView.model_validate(change)

    return router


def _latest(settings: Settings, model: str) -> int:
    numbers = version_numbers(settings.model_store / model)
    if not numbers:
        raise InvalidParameters(f"the model store holds no version of {model}")
    return numbers[-1]


def _switched(settings: Settings, models: ServedModels, change: Activation) -> SwitchedView:
    """`change`, once every worker of this server has switched to its version (or the wait is over). The
    model's thresholds carry over to that version, recorded as a thresholds revision."""
    server, worker = server_identity(), os.getpid()
    models.carry_thresholds(change)
    models.switch(change.model, change.version)
    models.lifecycle.report_switch(server, worker, change.model, change.version)
    deadline = time.monotonic() + SWITCH_WAIT_S
    while True:
        switched = models.lifecycle.switched(server, change.model, change.version, since=change.created_at)
        if len(switched) >= settings.workers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return SwitchedView(
        **ActivationView.model_validate(change).model_dump(),
        workers_switched=switched,
        all_switched_at=max(switched.values()) if len(switched) >= settings.workers else None,
    )
