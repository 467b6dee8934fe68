"""Response models of the HTTP API, for its OpenAPI page (`/v1/docs`).

A prediction's answer is typed by its task (`service.tasks`: `PredictionAnswer`); these are the others.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
