"""HTTP routes of the live frames kept for review: those a model rejected, with their answers, when
`INSPECTION_KEEP_REJECTED_FRAMES` asks for them (`service.frames.RejectedFrames`); the QA console lists
them beside the sample set's wrong answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from service.api.schemas import ErrorResponse, FrameView
from service.config import Settings
from service.errors import NotFound
from service.frames import REJECTED
from service.served_models import ServedModels


class RejectedFrameView(FrameView):
    answer: dict[str, Any] = Field(description="The answer the frame got, as the camera got it.")


class RejectedFrames(BaseModel):
    keeping: int = Field(description="How many each model keeps (INSPECTION_KEEP_REJECTED_FRAMES); 0: none.")
    frames: list[RejectedFrameView] = Field(description="Newest first; the image at `/review/frames/{id}`.")


def review_router(settings: Settings, served_models: Callable[[], ServedModels]) -> APIRouter:
    router = APIRouter(tags=["review"])
    prefix = "/v1/models/{model}/review/frames"
    not_found = {404: {"model": ErrorResponse, "description": "No such model or frame."}}

    @router.get(prefix, response_model=RejectedFrames, responses=not_found, summary="Live frames kept for review")
    def frames(model: str, limit: int = Query(100, ge=1, le=1000)) -> RejectedFrames:
        models = served_models()
        models.active_version(model)  # 404 for a model never served
        kept = models.frames.list(model, REJECTED, 0, limit=limit, newest_first=True)
        return RejectedFrames(
            keeping=settings.keep_rejected_frames,
            frames=[RejectedFrameView.of(f, answer=f.details["answer"]) for f in kept],
        )

    @router.get(
        prefix + "/{frame_id}",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}, "description": "The frame as it was sent."}, **not_found},
        summary="A frame kept for review: its image",
    )
    def frame(model: str, frame_id: int = Path(ge=1, le=2**63 - 1)) -> Response:
        found = served_models().frames.image(model, REJECTED, frame_id)
        if found is None:
            raise NotFound(f"{model} has no frame {frame_id} kept for review")
        image, content_type = found
        return Response(image, media_type=content_type)

    return router
