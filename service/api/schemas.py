"""Response models of the HTTP API, for its OpenAPI page (`/v1/docs`).

A prediction's answer is typed by its task (`service.tasks`: `PredictionAnswer`); these are the others.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from service.frames import KeptFrame


class FrameView(BaseModel):
    """A frame the service keeps (`service.frames`: a shadow run's, one rejected), without its image."""

    id: int
    created_at: datetime
    content_type: str
    size_bytes: int

    @classmethod
    def of(cls, frame: KeptFrame, **fields: Any) -> Self:
        """The view of `frame`, with the subclass's own `fields`."""
        return cls(
            id=frame.id,
            created_at=frame.created_at,
            content_type=frame.content_type,
            size_bytes=frame.size_bytes,
            **fields,
        )


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code.", examples=["undecodable_image"])
    message: str = Field(description="What was wrong, for a person.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ThresholdsView(BaseModel):
    revision: int
    values: dict[str, float]
    nms_iou: float | None
    review: dict[str, float] = Field(
        default_factory=dict, description="Review thresholds, for the classes with a band."
    )


class ModelDescription(BaseModel):
    name: str
    version: int = Field(description="The active version: the one that answers requests naming none.")
    loaded_versions: list[int] = Field(description="Every version loaded, the active one included.", examples=[[1, 2]])
    task: str
    classes: list[str]
    background_class: str | None
    provider: str = Field(description="The onnxruntime execution provider running the graph.")
    batch_sizes: list[int] | None = Field(
        description="The fixed batch sizes the graph runs at, each warmed up at start-up (batches are padded up "
        "to the next one); null: any batch size.",
        examples=[[1, 2, 4, 8]],
    )
    thresholds: ThresholdsView
    manifest: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelDescription]
